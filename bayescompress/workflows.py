"""End-to-end jobs behind the command line, usable from Python too: pretraining, compression from files,
and the demo."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bayescompress import distributed
from bayescompress.compare import DEFAULT_METHODS, Comparison, compare, compare_destination
from bayescompress.compress import PipelineConfig, compress
from bayescompress.data import DatasetSplits, load_dataset, make_loaders
from bayescompress.inference import TrainConfig, fit
from bayescompress.methods import GaussianSNR, GaussianSNRConfig, Method, MethodConfig
from bayescompress.io import (
    FORMAT_VERSION,
    check_writable,
    load_state_dict_file,
    load_weights_,
    read_json_record,
    save_weights,
    write_json,
)
from bayescompress.metrics import evaluate
from bayescompress.models import REQUIRED_IMAGE_SIZE, build_model, model_from_architecture
from bayescompress.runs import CompressionResult, call_factory, factory_file

def load_user_model(spec: str, weights: str | os.PathLike, input_shape, num_classes: int) -> tuple[nn.Module, dict]:
    """The network to compress: a reference model name or ``package.module:factory``, with its weights, and
    the record of how to rebuild its architecture (kept in run folders).

    A reference name whose weights have a ``.json`` record beside them (written by ``pretrain``) is rebuilt
    from that record, which must name the same model; otherwise it is built for ``input_shape`` and
    ``num_classes``. A factory is called with no arguments. Weights come from a safetensors file or a
    ``torch.save``d state_dict (read without pickle).
    """
    weights = Path(weights)
    if spec in REQUIRED_IMAGE_SIZE:
        record_path = weights.with_suffix(".json")
        if record_path.is_file():
            model, record = load_pretrained(weights)
            _check_recorded_model(spec, weights, record)
            return model, {"kind": "reference", "architecture": record["architecture"]}
        model, architecture = build_model(spec, input_shape, num_classes)
        source = {"kind": "reference", "architecture": architecture}
    elif ":" in spec:
        file = factory_file(spec)
        if file is not None:  # recorded absolute, so the run folder rebuilds it from any working directory
            spec = f"{file.resolve()}:{spec.rpartition(':')[2]}"
        model, source = call_factory(spec), {"kind": "factory", "spec": spec}
    else:
        raise ValueError(
            f"--model must be one of {', '.join(REQUIRED_IMAGE_SIZE)} or package.module:factory; got {spec!r}"
        )
    return load_weights_(model, load_state_dict_file(weights), source=f"weights in {weights.name}"), source


def _check_recorded_model(spec: str, weights: Path, record: dict) -> None:
    """Refuse weights whose pretrain record names another reference model than ``spec``."""
    recorded = record.get("architecture", {}).get("model")
    if recorded != spec:
        record_name = weights.with_suffix(".json").name
        raise ValueError(f"{weights.name} was pretrained as {recorded!r} (its record {record_name} says so), not "
                         f"{spec!r}: pass --model {recorded}, or weights of a {spec}")


def dataset_for(model_spec: str, weights: str | os.PathLike, dataset: str | None) -> str:
    """The data set to compress on: ``dataset``, or, where it is None, the one a reference network's weights were
    pretrained on (their ``pretrain`` record beside them), else digits. A data set given that differs from the
    record's is warned about: the run measures the network on data it was not trained for."""
    record_path = Path(weights).with_suffix(".json")
    recorded = None
    if model_spec in REQUIRED_IMAGE_SIZE and record_path.is_file():
        record = read_json_record(record_path, f"the pretrain record of {Path(weights).name}")
        _check_recorded_model(model_spec, Path(weights), record)  # the record is of these weights: said first
        recorded = record.get("dataset")
    if dataset is None:
        return recorded or "digits"
    if recorded is not None and recorded != dataset:
        warnings.warn(f"{Path(weights).name} was pretrained on {recorded} (its record {record_path.name} says so) "
                      f"and is compressed on {dataset}: its accuracy there is what the run measures against; leave "
                      f"out --dataset to use {recorded}", stacklevel=2)
    return dataset


SPLIT_SEED = 0
"""The seed of the train / validation / test split of ``pretrain``, ``compress`` and ``compare`` on the command
line: one split for every run, so a run with another seed never validates or tests on images its pretrained
network trained on."""


def load_data_for(
    model_name: str, dataset: str, data_dir: str | os.PathLike | None = None, seed: int = 0
) -> DatasetSplits:
    """Load ``dataset`` at the image size ``model_name`` needs (8x8 digits are upsampled for the LeNets)."""
    if model_name not in REQUIRED_IMAGE_SIZE:
        raise ValueError(f"model must be one of {', '.join(REQUIRED_IMAGE_SIZE)}; got {model_name!r}")
    return load_dataset(dataset, data_dir, image_size=REQUIRED_IMAGE_SIZE[model_name], seed=seed)


@dataclass
class PretrainResult:
    """A trained reference network, the record to rebuild it, and its test metrics."""

    model: nn.Module
    architecture: dict
    metrics: dict[str, float]
    dataset: str
    history: list[dict[str, float]] = field(default_factory=list)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the weights to ``path`` (safetensors) and ``path`` with suffix ``.json`` beside it; existing
        files there are replaced only with ``overwrite``."""
        path = check_weights_destination(path, overwrite)
        save_weights(self.model.state_dict(), path)
        record = {
            "format_version": FORMAT_VERSION,
            "architecture": self.architecture,
            "dataset": self.dataset,
            **{f"test_{k}": v for k, v in self.metrics.items()},
        }
        write_json(path.with_suffix(".json"), record)
        return path


def check_weights_destination(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``path`` as a place :meth:`PretrainResult.save` can write, checked before any training: a .safetensors
    name whose folders are folders (or do not exist yet), and no existing file there unless ``overwrite``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"the weights file must end in .safetensors; got {path.name}")
    check_writable(path.parent)
    targets = (path, path.with_suffix(".json"))
    for target in targets:
        if target.is_dir():
            raise ValueError(f"cannot write {target}: it is a folder; choose another path")
    if not overwrite and (existing := [target.name for target in targets if target.exists()]):
        raise ValueError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''} in "
                         f"{path.parent}; choose another path or pass overwrite=True (--overwrite) to replace "
                         f"{'it' if len(existing) == 1 else 'them'} (nothing was touched)")
    return path


def pretrain(
    model_name: str,
    dataset: str = "digits",
    data_dir: str | os.PathLike | None = None,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 128,
    hidden: Sequence[int] = (100,),
    seed: int = 0,
    device: str = "cpu",
    quiet: bool = False,
) -> PretrainResult:
    """Train a reference network deterministically (Adam, cosine learning rate) and measure it on the test set.
    The data split is :data:`SPLIT_SEED`'s, the one ``compress`` uses; ``seed`` sets the initial weights and the
    batch order.

    Example
    -------
    >>> result = pretrain("mlp", "digits", epochs=2, hidden=(16,), quiet=True)
    >>> 0.0 <= result.metrics["accuracy"] <= 1.0
    True
    """
    config = TrainConfig(epochs=epochs, lr=lr, lr_schedule="cosine", seed=seed, device=device, quiet=quiet)
    splits = load_data_for(model_name, dataset, data_dir, seed=SPLIT_SEED)
    if not splits.train.tensors[0].is_floating_point():
        raise ValueError(f"the reference networks take floats, but the inputs of {data_dir} are integers; store x "
                         "as float32 (integer arrays are kept as integers, for networks that start with an "
                         "nn.Embedding)")
    labels = torch.unique(torch.cat([part.tensors[1] for part in (splits.train, splits.val, splits.test)]))
    if 2 * len(labels) < splits.num_classes:  # ids, not class indices: the network gets one output per id
        raise ValueError(f"the labels of {data_dir or dataset} are {len(labels)} distinct values up to "
                         f"{splits.num_classes - 1}: the network would get {splits.num_classes:,} outputs; labels "
                         "must be class indices 0 to K-1 (map ids with np.unique(y, return_inverse=True))")
    train_loader, val_loader, test_loader = make_loaders(splits, batch_size=batch_size, seed=seed)
    torch.manual_seed(seed)  # the initial weights, too, follow the seed
    model, architecture = build_model(model_name, splits.input_shape, splits.num_classes, hidden=hidden)
    history = fit(model, train_loader, val_loader if len(splits.val) else None, config)
    metrics = evaluate(model, test_loader, samples=0, device=device)
    return PretrainResult(model, architecture, metrics, dataset, history)


def load_pretrained(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild a network written by :meth:`PretrainResult.save` from its weights and ``.json`` record."""
    path = Path(path)
    record = read_json_record(path.with_suffix(".json"), f"the architecture record written beside {path.name}")
    model = model_from_architecture(record["architecture"])
    load_weights_(model, load_state_dict_file(path), source=f"weights in {path.name}")
    return model, record


def compress_files(
    model_spec: str,
    weights: str | os.PathLike,
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    method: str | Method = "gaussian-snr",
    config: MethodConfig | None = None,
    pipeline: PipelineConfig | None = None,
    batch_size: int = 128,
    checkpoint: str | os.PathLike | None = None,
    posterior: str | os.PathLike | None = None,
) -> CompressionResult:
    """``bayescompress compress``: load a network and its weights, then :func:`~bayescompress.compress` it
    (under torchrun, each rank on its share of every batch of ``batch_size``; from the trained state of the run
    folder ``posterior`` when given), on ``dataset`` (none: :func:`dataset_for`). The data are split as
    ``pretrain`` splits them whatever the seed (:data:`SPLIT_SEED`), so the validation and test images are ones
    the pretrained network never trained on; the seed varies the training."""
    pipeline = pipeline or PipelineConfig()
    image_size = REQUIRED_IMAGE_SIZE.get(model_spec)
    splits = load_dataset(dataset_for(model_spec, weights, dataset), data_dir, image_size=image_size,
                          seed=SPLIT_SEED)
    model, source = load_user_model(model_spec, weights, splits.input_shape, splits.num_classes)
    train_loader, val_loader, test_loader = make_loaders(splits, batch_size=batch_size, seed=pipeline.seed,
                                                         rank=distributed.rank(), world_size=distributed.world_size())
    result = compress(model, train_loader, val_loader, method, config=config, test_loader=test_loader,
                      pipeline=pipeline, checkpoint=checkpoint, posterior=posterior)
    result.source = source
    return result


def compare_files(
    model_spec: str,
    weights: str | os.PathLike,
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    methods: Sequence[str | Method] = DEFAULT_METHODS,
    seeds: Sequence[int] = (0,),
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    pipeline: PipelineConfig | None = None,
    batch_size: int = 128,
    anchors: Sequence[dict] | None = None,
) -> Comparison:
    """``bayescompress compare``: load a network and its weights, then :func:`~bayescompress.compare` methods on
    it. The data split and order are those of seed 0 for every run; the seeds vary the training. ``anchors``
    default to the published results of a reference network on MNIST (``bayescompress.plot.PUBLISHED``)."""
    dataset = dataset_for(model_spec, weights, dataset)
    if anchors is None:
        from bayescompress.plot import PUBLISHED

        anchors = PUBLISHED.get(model_spec, []) if dataset == "mnist" else []
    splits = load_dataset(dataset, data_dir, image_size=REQUIRED_IMAGE_SIZE.get(model_spec), seed=SPLIT_SEED)
    model, source = load_user_model(model_spec, weights, splits.input_shape, splits.num_classes)
    train_loader, val_loader, test_loader = make_loaders(splits, batch_size=batch_size, rank=distributed.rank(),
                                                         world_size=distributed.world_size())
    return compare(model, train_loader, val_loader, methods, seeds, test_loader=test_loader, out=out,
                   resume=resume, overwrite=overwrite, pipeline=pipeline, source=source, anchors=anchors)


def demo(
    out: str | os.PathLike | None = None, *, seed: int = 0, quiet: bool = False, overwrite: bool = False,
    device: str = "cpu",
) -> Comparison:
    r"""What bayescompress is for, on scikit-learn's digits in well under a minute on a CPU.

    Pretrains a 64-100-10 MLP, then :func:`~bayescompress.compare`\ s two compressions of it: the baseline,
    SNR pruning of single weights (``gaussian-snr``), and its structured form, which keeps whole neurons
    (``gaussian-snr-units``: smaller dense layers, fewer MACs). Each is converted to a Bayesian network under a
    N(0, 1) prior, trained by VI, pruned, fine-tuned by masked VI and exported; the comparison reports accuracy,
    calibration, compression, units kept and MACs against the original, and re-prunes each posterior at other
    budgets for the Pareto figure. With ``out``, the runs (with their figures in ``<run>/plots``), the tables
    and pareto.png are written there (existing demo runs only with ``overwrite``).
    """
    splits = load_data_for("mlp", "digits", seed=seed)
    train_loader, val_loader, test_loader = make_loaders(splits, batch_size=64, seed=seed)
    if out is not None:  # before any work
        folder = Path(out).expanduser()
        if not overwrite and folder.is_dir() and any(folder.iterdir()):  # the demo has no --resume to offer
            with warnings.catch_warnings():  # refused either way: files of the user's are named first
                warnings.simplefilter("ignore")
                compare_destination(out, DEMO_METHODS, [seed], overwrite=True)
            raise ValueError(f"{folder} holds a comparison's runs; pass overwrite=True (--overwrite) to run the "
                             "demo there (the demo's runs and tables are replaced, nothing else), or choose another "
                             "folder")
        compare_destination(out, DEMO_METHODS, [seed], overwrite=overwrite)
    pretrained = pretrain("mlp", "digits", epochs=30, lr=3e-3, batch_size=64, seed=seed, quiet=quiet,
                          device=device)
    return compare(pretrained.model, train_loader, val_loader, DEMO_METHODS, [seed], test_loader=test_loader,
                   out=out, overwrite=overwrite, source={"kind": "reference", "architecture": pretrained.architecture},
                   keep_fractions=DEMO_KEEP_FRACTIONS,
                   pipeline=PipelineConfig(mc_samples=20, quiet=quiet, device=device))


# the demo's recipes: on 1,257 digits a N(0, 1) prior and longer training than the MNIST recipes
DEMO_RECIPE = GaussianSNRConfig(epochs=30, prior_scale=1.0, keep_fraction=0.25, finetune_epochs=30, finetune_lr=1e-3)
DEMO_METHODS = {
    "gaussian-snr": GaussianSNR(config=DEMO_RECIPE),
    "gaussian-snr-units": GaussianSNR(config=GaussianSNRConfig(epochs=40, prior_scale=1.0, keep_fraction=0.3,
                                                               level="unit", finetune_epochs=20, finetune_lr=1e-3)),
}
DEMO_KEEP_FRACTIONS = (0.5, 0.3, 0.2, 0.14, 0.1, 0.07, 0.05, 0.035, 0.025)
