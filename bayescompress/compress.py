"""``compress``: a pretrained network in, a trained, pruned and physically smaller network out.

The shared pipeline (SPEC sections 1, 5 and 6): fold BatchNorms, hand the network to the method (which trains,
prunes and fine-tunes it; :mod:`bayescompress.methods`), propagate the structure, export the smaller network
(plain and, for Bayesian methods, Bayesian), and measure original, compressed and exported networks. The
methods are plug-ins found by name (``bayescompress.methods.names()``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm
from torch.utils.data import (
    IterableDataset,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
    default_collate,
    default_convert,
)

from bayescompress import distributed, methods
from bayescompress._validation import check_device, check_module
from bayescompress.data import as_batch, batches_per_epoch, index_sampler
from bayescompress.inference.checkpoint import Checkpoint
from bayescompress.inference.cost import TrainingCost
from bayescompress.inference.train import CheckpointMismatchError
from bayescompress.io import (
    FORMAT_VERSION,
    read_json_record,
    read_safetensors,
    tensors_fingerprint,
    weights_fingerprint,
    write_json,
)
from bayescompress.inference.kept import KeptFraction
from bayescompress.methods.base import (
    Method,
    MethodConfig,
    TrainingContext,
    effective_settings,
    setting_differences,
    unknown_setting_message,
)
from bayescompress.metrics import dense_macs, evaluate, latency_seconds, size_counts, sparse_macs, weight_uses
from bayescompress.nn import bayesian_layers, output_layers
from bayescompress.nn.model import uncalled_layers
from bayescompress.pruning import UnsupportedGraphError, export_sequential, export_with_torch_pruning, prunable_layers
from bayescompress.pruning.export import (
    EXPORT_TOLERANCE,
    checked_sequential_export,
    largest_difference,
    output_difference,
)
from bayescompress.pruning.batchnorm import fold_batchnorm_, foldable_pairs
from bayescompress.pruning.graph_export import GraphSurgery, bayesian_export, to_plain_network
from bayescompress.pruning.masks import Masks, copy_network
from bayescompress.folders import is_interrupted_run
from bayescompress.runs import CompressionResult, ExportRecord, layer_names, units_per_layer
from bayescompress.settings import Flag, Integer, Real, Settings, setting

# The method of a compress call that names none (and starts from no run's posterior).
DEFAULT_METHOD = "gaussian-snr"
# Validation inputs kept with a run: the graph export's constant test and a saved run's output check use them.
PROBE_SIZE = 8
# the largest seed torch's generators take (a signed 64-bit integer)
MAX_SEED = 2**63 - 1


class AccuracyLossWarning(UserWarning):
    """The compressed network lost more accuracy against the original than ``max_accuracy_loss`` allows."""


@dataclass(frozen=True, kw_only=True)
class PipelineConfig(Settings):
    """Settings of the pipeline around every method, validated on construction.

    Example
    -------
    >>> PipelineConfig(seed=1, quiet=True).max_accuracy_loss
    0.01
    """

    mc_samples: int = setting(10, "posterior samples for the compressed network's metrics", Integer(0))
    max_accuracy_loss: float = setting(
        0.01, "warn (AccuracyLossWarning, and in the report) when the compressed or exported network's test "
        "accuracy is more than this below the original's", Real(0.0, 1.0))
    latency_batch: int = setting(256, "batch size of the latency measurement (halved until a pass fits the "
                                 "budget)", Integer(1, high=65536))
    latency_budget: float = setting(1.0, "about how many seconds the latency measurement may take per network",
                                    Real(0.0, low_open=True))
    fold_batchnorm: bool = setting(True, "fold every BatchNorm that directly follows a Linear/Conv2d into it "
                                   "first, so the channels a prior switches off can be removed", Flag())
    seed: int = setting(0, "random seed", Integer(0, high=MAX_SEED))
    device: str = "cpu"
    quiet: bool = setting(False, "no progress bars", Flag())

    def __post_init__(self) -> None:
        super().__post_init__()
        check_device("device", self.device)


def resolve_method(method: str | Method, config: MethodConfig | None = None) -> Method:
    """A :class:`~bayescompress.methods.Method` from a registered name (with an optional config of its own) or
    an instance (then without a config)."""
    if isinstance(method, Method):
        if config is not None:
            raise ValueError(f"method is already configured ({method!r}); pass config only with a method name")
        return method
    if not isinstance(method, str):
        raise ValueError(f"method must be a registered name or a Method; got {type(method).__name__}")
    return methods.get(method)(config=config)


def compress(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    method: str | Method | None = None,
    *,
    config: MethodConfig | None = None,
    test_loader: Iterable | None = None,
    epochs: int | None = None,
    pipeline: PipelineConfig | None = None,
    checkpoint: str | os.PathLike | None = None,
    posterior: CompressionResult | str | os.PathLike | None = None,
) -> CompressionResult:
    """Train, prune and export ``model`` (left untouched; the work happens on a copy).

    ``method`` is a registered name (``bayescompress.methods.names()``) or a configured method such as
    ``TurboVBI(pi0=0.005)`` (default ``"gaussian-snr"``, or the method of the ``posterior`` run); ``config``
    is that method's config (e.g. ``TurboVBIConfig``). Without either, the method runs its benchmarked recipe,
    the CNN preset when ``model`` has a Conv2d. ``epochs`` overrides
    the method's training epochs before pruning; ``pipeline`` holds the settings around the method (seed,
    device, MC samples, the accuracy-loss warning).

    With ``checkpoint`` (a folder), the whole training state is kept there at every epoch end (and on
    SIGINT/SIGTERM, after the current batch); a folder that already holds a checkpoint of this run continues
    from it, and the result is the one the uninterrupted run gives (docs/reliability.md). Under torchrun every
    rank trains on its shard of each batch and ends with the same masks and posterior (docs/distributed.md).

    ``model`` is any network whose compute layers are ``nn.Linear`` / ``nn.Conv2d`` (docs/own-models.md):
    BatchNorms right after such a layer are folded into it first, modules that cannot be converted are named in
    a warning and left deterministic, and the output layers (kept whole) are those whose outputs the forward pass
    returns (:func:`~bayescompress.nn.output_layers`).
    Metrics are measured on ``test_loader`` when given, else on ``val_loader``; ``val_loader`` also provides
    the per-epoch validation metrics, early stopping's checks and the probe inputs (shapes, the graph export's
    checks, the run folder's output check).

    With ``posterior`` (a finished run folder, or a result) the training before pruning is skipped: the
    network starts from that run's trained state and only the pruning, the budgets and the fine-tuning run,
    with that run's settings except the ones ``method`` was given, and its seed unless ``pipeline`` is given
    (only ``after_training`` settings of the method's config may differ; ``model`` must hold the weights the run
    started from). One long VI run then gives several operating points (docs/pruning.md).

    Example
    -------
    >>> result = compress(pretrained, train, val, method="turbo-vbi")                 # doctest: +SKIP
    >>> result = compress(pretrained, train, val, TurboVBI(pi0=0.005, epochs=4))      # doctest: +SKIP
    >>> result.metrics["compression_rate"], result.exported                           # doctest: +SKIP
    >>> cut = compress(pretrained, train, val, SparseVD(target_compression=100), posterior="runs/svd")  # doctest: +SKIP
    """
    _check_network(model)
    if pipeline is not None and not isinstance(pipeline, PipelineConfig):
        raise ValueError(f"pipeline must be a PipelineConfig; got {type(pipeline).__name__} (e.g. "
                         "pipeline=PipelineConfig(quiet=True))")
    start = TrainedRun.read(posterior) if posterior is not None else None
    method = resolve_method(method or (start.method if start is not None else DEFAULT_METHOD), config)
    pipeline = pipeline or PipelineConfig(seed=0 if start is None else start.seed)
    method_config = method.configure(model) if start is None else start.config_for(method)
    if epochs is not None:
        if "epochs" not in type(method_config).names():
            raise ValueError(unknown_setting_message("epochs", method.name, type(method_config)))
        method_config = dataclasses.replace(method_config, epochs=epochs)
    _check_trainable(model)
    original_weights = weights_fingerprint(model)
    eval_loader = test_loader if test_loader is not None else val_loader
    if batches_per_epoch(train_loader) == 0:
        raise ValueError("train_loader yields no batch (a drop_last loader over fewer examples than one batch?); "
                         "compress needs training data: give more examples or a smaller batch size")
    for name, loader in (("val_loader", val_loader), ("test_loader", test_loader)):
        # a generator, or an iterable that hands out one iterator: one pass uses it up (probed only without a
        # length, so a DataLoader's workers are not started twice)
        if loader is not None and not hasattr(loader, "__len__") and (
                isinstance(loader, Iterator) or iter(loader) is iter(loader)):
            raise ValueError(f"{name} is a {type(loader).__name__}, used up after one pass; compress reads it at "
                             "every validation check and to measure the result: give a DataLoader or a list of "
                             "(x, y) batches")
    if (checkpoint is not None or start is not None) and _shuffles(val_loader):
        raise ValueError("val_loader shuffles (its sampler draws at random): a checkpointed run, or one started from "
                         "a run's posterior, knows its data by the first validation inputs, which then differ on every "
                         "pass; give an unshuffled validation loader (shuffle=False; for a split by indices, a "
                         "torch.utils.data.Subset instead of a SubsetRandomSampler)")
    if checkpoint is not None and (why := _unrestorable_order(train_loader)):
        warnings.warn(f"train_loader {why}, which a checkpoint cannot put back: a run resumed from it may see other "
                      "batches than an uninterrupted one (it still finishes, but not with the same numbers)",
                      stacklevel=2)
    first = next(iter(val_loader), None)
    if first is None:
        raise ValueError("val_loader yields no batch; compress needs validation data (with load_dataset, a "
                         "val_fraction > 0; with a drop_last loader, at least one full batch)")
    first = as_batch(first, "val_loader")
    first_test = None
    if test_loader is not None:  # read only after the training: its first batch checked now, as the validation's
        first_test = next(iter(test_loader), None)
        if first_test is None:
            raise ValueError("test_loader yields no batch; give test data, or none (the validation data is then used)")
        first_test = as_batch(first_test, "test_loader")
    if start is not None:  # before any work
        start.check(method_config, original_weights, first[0][:PROBE_SIZE])
    # a few inputs: the graph export recognises constant channels by their being equal on all of them
    probe = first[0][:PROBE_SIZE].to(pipeline.device)
    example = probe[:1]
    record = {"method": dataclasses.asdict(method_config), "pipeline": dataclasses.asdict(pipeline)}
    if start is not None:
        record["posterior"] = start.label
    original = copy_network(model).to(pipeline.device).eval()
    # named as data, not as arguments: the command line's user has loaders of neither name
    labels = {"validation": first[1], **_labels_in_memory(training=train_loader, validation=val_loader,
                                                          test=test_loader)}
    _check_model_fits_data(original, probe, labels)
    if first_test is not None:  # after the validation data's own check: a fault of theirs is named as theirs
        _check_same_format(first_test, first)
    if idle := uncalled_layers(original, example):
        them = "it" if len(idle) == 1 else "them"
        warnings.warn(f"the eval-mode forward pass never calls {', '.join(idle)}: the data never reach {them}, so "
                      f"training cannot inform how {them} {'is' if len(idle) == 1 else 'are'} pruned, and the "
                      f"exported network still carries what is left of {them}; remove unused layers from the model "
                      "before compress", stacklevel=2)
    network = copy_network(model).to(pipeline.device).eval()
    folded = _fold_batchnorm(network, probe) if pipeline.fold_batchnorm else []
    outputs = tuple(output_layers(network, example))
    trains = start is None  # from a run's posterior nothing is trained
    method.check(network, method_config, example, batches_per_epoch(train_loader) if trains else None)
    store = (open_checkpoint(checkpoint, record, type(method_config), original_weights,
                             tensors_fingerprint({"probe": probe}))
             if checkpoint is not None else None)
    torch.manual_seed(pipeline.seed)
    cost = TrainingCost(example)
    context = TrainingContext(train_loader, val_loader, example, outputs, seed=pipeline.seed, device=pipeline.device,
                              quiet=pipeline.quiet or not distributed.is_main(), observers=[cost, KeptFraction()],
                              checkpoint=store, original=original)
    started = time.perf_counter()
    trained = method.train_and_prune(network, method_config, context,
                                     trained=None if start is None else start.state,
                                     shuffling=() if start is None else start.shuffling)
    training_seconds = time.perf_counter() - started
    masks, history, inclusion = trained.masks, trained.history, trained.inclusion
    # every rank must end with the same state; a difference would be a bug, never a rounding
    rank_difference = distributed.max_rank_difference({**masks.to_tensors(), **trained.network.state_dict()})
    if rank_difference:
        raise RuntimeError(f"the ranks of this distributed run ended with different networks (largest difference "
                           f"{rank_difference:.3g}); please report it with the command that ran")
    network = trained.network
    samples = pipeline.mc_samples if method.bayesian else 0
    network.eval()  # what follows runs the deployed network: Dropout off, BatchNorm on its running statistics
    surgery = None
    try:
        # drops the weights of units nothing reads too: the function is unchanged
        network, exported, structure = checked_sequential_export(network, masks, example,
                                                                 _inputs(val_loader, pipeline.device))
        final_masks = structure.masks
        posterior = export_sequential(network, structure, bayesian=True).eval() if samples else None
    except UnsupportedGraphError:  # not a plain chain: Torch-Pruning's dependency graph does the surgery
        structure, final_masks = None, masks
        exported, surgery = _export_graph(network, masks, probe, outputs, val_loader, pipeline.device)
        posterior = bayesian_export(network, exported, surgery, probe).eval() if samples else None
    uses = weight_uses(network, prunable_layers(network), example)
    metrics = _measure(original, network, exported, posterior, final_masks, uses, eval_loader, example, samples,
                       pipeline)
    metrics["training"] = {"macs": cost.macs, "dense_vi_macs": cost.dense_vi_macs, "steps": cost.steps,
                           "wall_s": training_seconds}
    metrics["training_macs_ratio"] = cost.ratio
    metrics["pruning"] = trained.pruning
    metrics["distributed"] = {"world_size": distributed.world_size(), "max_rank_difference": rank_difference}
    metrics["resumed_from"] = store.resumed_from() if store is not None else None
    metrics["original_weights"] = original_weights
    metrics["trained_from"] = None if start is None else start.label
    _check_accuracy_loss(metrics, pipeline.max_accuracy_loss, dataclasses.asdict(method_config))
    export = ExportRecord(folded, surgery, probe.detach().cpu())
    return CompressionResult(method.name, record, metrics, final_masks, original, network, exported, structure,
                             history, inclusion, posterior=posterior, export_record=export,
                             before_pruning=trained.before_pruning, scores=trained.scores,
                             shuffling=trained.shuffling)


def _check_network(model: object) -> None:
    """Refuse what is not a pretrained deterministic network: a class instead of an instance, and a network
    already converted (its priors would silently replace the method's)."""
    check_module("model", model, "a network")
    converted = [name or "<root>" for name, _ in bayesian_layers(model)]
    if converted:
        shown = ", ".join(converted[:3]) + (", ..." if len(converted) > 3 else "")
        raise ValueError(f"the model is already Bayesian ({shown}); compress takes the pretrained deterministic "
                         "network and converts it under the method's own prior: give the network before bayesianize_")


def _check_trainable(model: nn.Module) -> None:
    """Refuse, before any work, a network compress would only fail on after training: parameters that are not
    float32 (the exports build float32 layers), the old hook-based weight or spectral norm, and frozen
    Linear/Conv2d parameters (every such layer is trained and pruned; a frozen mean would be half a posterior)."""
    other_dtypes = {str(p.dtype) for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32}
    if other_dtypes:
        raise ValueError(f"the model has {', '.join(sorted(other_dtypes))} parameters; compress trains and exports "
                         "float32 networks: convert it with model.float() (and the data with it)")
    for name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, (WeightNorm, SpectralNorm)):  # they recompute weight from weight_orig every call
                old = "weight_norm" if isinstance(hook, WeightNorm) else "spectral_norm"
                raise ValueError(
                    f"layer {name or '<root>'} uses torch.nn.utils.{old}, whose hook recomputes the weight on every "
                    f"call and clashes with the masks: bake it in with torch.nn.utils.remove_{old}(layer) (the "
                    f"function is unchanged), or use torch.nn.utils.parametrizations.{old}, whose layers compress "
                    "keeps whole")
    frozen = [name or "<root>" for name, layer in prunable_layers(model)
              if any(not p.requires_grad for p in layer.parameters(recurse=False))]
    if frozen:
        which = f"layer {frozen[0]} has" if len(frozen) == 1 else f"layers {', '.join(frozen)} have"
        raise ValueError(f"{which} frozen parameters (requires_grad=False); compress trains and prunes every "
                         "Linear/Conv2d: unfreeze them (model.requires_grad_(True))")


def _labels_in_memory(**loaders) -> dict[str, Tensor]:
    """The whole label tensor (per name given) of each loader over an in-memory ``(inputs, labels)``
    ``TensorDataset`` that it yields as stored (no pass over the data; a collate_fn of one's own may change the
    labels, so it is skipped)."""
    return {name: dataset.tensors[1] for name, loader in loaders.items()
            if isinstance(dataset := getattr(loader, "dataset", None), TensorDataset) and len(dataset.tensors) == 2
            and getattr(loader, "collate_fn", None) in (default_collate, default_convert)
            and dataset.tensors[1].numel() and not dataset.tensors[1].is_floating_point()}


@torch.no_grad()
def _check_model_fits_data(model: nn.Module, inputs: Tensor, labels: dict[str, Tensor]) -> None:
    """Run a few validation inputs through the (eval-mode) network, twice, before any work, so a network that
    does not fit the data, or whose forward is random, fails here with a message saying so, not with a traceback
    from inside training (and before a checkpoint exists). ``labels`` (per source: the first validation batch's,
    and every label of the loaders held in memory) are checked against the outputs per input."""
    try:
        logits = model(inputs)
    except Exception as error:  # the user's forward: whatever it raises, the data do not fit it
        integers = ("; the inputs are integers, which only an nn.Embedding takes: store other inputs as floats "
                    "(with --dataset npz, x as float32)" if not inputs.is_floating_point() else
                    "; the network is float32: convert the inputs (x.float())" if inputs.dtype != torch.float32 else "")
        dtype = str(inputs.dtype).removeprefix("torch.")
        raise ValueError(f"the model cannot run on the data: a validation batch of {dtype} inputs of shape "
                         f"{tuple(inputs.shape)} "
                         f"(one input: {tuple(inputs.shape[1:])}) raised {type(error).__name__}: {error}; give a "
                         "network whose input matches the data's" + integers) from error
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        kind = type(logits).__name__
        what = (f"outputs of shape {tuple(logits.shape)}" if isinstance(logits, Tensor) else
                f"a namedtuple {kind}" if isinstance(logits, tuple) and hasattr(logits, "_fields") else f"a {kind}")
        raise ValueError(f"the model returns {what}; compress needs a classifier whose forward returns one (N, "
                         "classes) tensor of logits: wrap it in a module whose forward returns that tensor")
    # the same inputs again: the exports and metrics assume one function
    if (spread := output_difference(logits, model(inputs))) > EXPORT_TOLERANCE * max(1.0, float(logits.abs().max())):
        raise ValueError(f"the model's outputs for the same inputs differ by {spread:.3g} between two eval-mode "
                         "passes: its forward is random in eval mode (a dropout called with training=True, added "
                         "noise); compress measures and exports one function, and its posterior carries the "
                         "uncertainty: make the eval-mode forward deterministic (F.dropout(x, p, self.training))")
    varies = logits.shape[-1] > 1 and bool((logits != logits[:1]).any())  # a constant network proves nothing
    if varies and logits.min() >= 0 and (logits.sum(-1) - 1).abs().max() < 1e-4:
        raise ValueError("the model returns probabilities (its outputs are non-negative and sum to 1): compress "
                         "needs logits (the training's cross-entropy and the MC average apply the softmax); remove "
                         "the final softmax")
    for source, values in labels.items():
        if values.numel() and (largest := int(values.max())) >= logits.shape[-1]:
            raise ValueError(f"the {source} data has label {largest} but the model gives {logits.shape[-1]} outputs "
                             f"per input; a classifier needs one output per class (at least {largest + 1} here)")


def _shuffles(loader: object) -> bool:
    """Whether ``loader`` is a DataLoader whose (batch) sampler draws its indices at random."""
    return isinstance(index_sampler(loader), (RandomSampler, SubsetRandomSampler, WeightedRandomSampler))


def _unrestorable_order(loader: object) -> str | None:
    """Why ``loader``'s order or augmentation is not in what a checkpoint restores (torch's and the loader's
    generators), or None: persistent workers keep their own random state, an IterableDataset its own order."""
    if getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0) > 0:
        return "keeps persistent workers, whose random state (augmentation) lives in the worker processes"
    if isinstance(getattr(loader, "dataset", None), IterableDataset):
        return "reads an IterableDataset, whose order, and any random state of its own other than torch's, is its own"
    return None


def _check_same_format(batch: tuple[Tensor, Tensor], validation: tuple[Tensor, Tensor]) -> None:
    """Refuse test batches whose inputs or labels differ in kind from the validation batches' (other dtype or
    per-example shape), before the training: the test data are read only once it is done."""
    for part, ours, theirs in (("inputs", batch[0], validation[0]), ("labels", batch[1], validation[1])):
        if ours.dtype != theirs.dtype or ours.shape[1:] != theirs.shape[1:]:
            raise ValueError(
                f"test_loader gives {str(ours.dtype).removeprefix('torch.')} {part} of shape {tuple(ours.shape[1:])} "
                f"per example where val_loader gives {str(theirs.dtype).removeprefix('torch.')} of shape "
                f"{tuple(theirs.shape[1:])}: give test data in the validation data's format")


def recorded_seed(metrics: dict) -> int:
    """The pipeline seed a run folder's ``metrics.json`` records (0 for runs written before it was kept)."""
    return int(metrics.get("config", {}).get("pipeline", {}).get("seed", 0))


@dataclass
class TrainedRun:
    """A finished run's trained state (as its pruning found it), the settings it ran with and the fingerprint
    of the weights it started from: where ``compress(posterior=...)`` starts."""

    method: str
    settings: dict
    state: dict[str, Tensor]
    original_weights: str | None  # None for runs written before fingerprints were kept
    label: str
    shuffling: list[Tensor]  # the loader's order after the training; empty for runs written before it was kept
    probe: Tensor | None  # the run's first validation inputs; None for runs written before they were kept
    seed: int  # the run's pipeline seed: a run from its posterior continues with it unless told otherwise

    @classmethod
    def read(cls, source: CompressionResult | str | os.PathLike) -> TrainedRun:
        if isinstance(source, CompressionResult):
            probe = None if source.export_record is None else source.export_record.probe
            run = cls(source.method, source.config["method"], source.before_pruning,
                      source.metrics.get("original_weights"), "the given result", source.shuffling, probe,
                      source.config["pipeline"]["seed"])
        else:
            directory = Path(source)
            if is_interrupted_run(directory):
                raise ValueError(f"{directory} holds a run that has not finished; finish it first (`bayescompress "
                                 f"compress --resume {shlex.quote(str(directory))}`), then start from it")
            what = "a finished run folder, whose trained.safetensors holds the state its pruning started from"
            metrics = read_json_record(directory / "metrics.json", what)
            state = read_safetensors(directory / "trained.safetensors", what)
            shuffling_file = directory / "shuffling.safetensors"
            shuffling = read_safetensors(shuffling_file, what) if shuffling_file.is_file() else {}
            probe_file = directory / "probe.safetensors"
            probe = read_safetensors(probe_file, what)["input"] if probe_file.is_file() else None
            run = cls(metrics["method"], metrics["config"]["method"], state, metrics.get("original_weights"),
                      str(directory), [shuffling[f"generator.{i}"] for i in range(len(shuffling))], probe,
                      recorded_seed(metrics))
        if not run.state:
            raise ValueError(f"{run.label} keeps no trained state (it was not made by bayescompress.compress)")
        return run

    def config_for(self, method: Method) -> MethodConfig:
        """``method``'s config for a run from this state: the run's settings, with those ``method`` was given
        (a configured method's whole config, when it has one)."""
        if method.name != self.method:
            raise ValueError(f"{self.label} is a {self.method} run; its posterior is pruned by {self.method}, not "
                             f"{method.name}: leave out the method (--method), or start from a {method.name} run")
        if method.config is not None:
            return method.config
        return dataclasses.replace(self.saved_config(), **method.settings)

    def saved_config(self) -> MethodConfig:
        """The config the run ran with (a setting removed from the method since is dropped, one added since
        takes its default)."""
        config_class = methods.get(self.method).config_class
        names = config_class.names()
        return config_class(**{key: tuple(value) if isinstance(value, list) else value  # JSON keeps tuples as lists
                               for key, value in self.settings.items() if key in names})

    def check(self, config: MethodConfig, original_weights: str, probe: Tensor) -> None:
        """Refuse a config whose training settings differ from the run's, weights other than the run's, and data
        other than the run's: ``probe``, the first inputs of the validation data given now, must be the run's."""
        own = json.loads(json.dumps(dataclasses.asdict(config)))  # as the run's record holds them
        changed = sorted(key for key, value in own.items()
                         if key not in config.after_training and key in self.settings and self.settings[key] != value)
        if changed:
            raise ValueError(
                f"{self.label} was trained with " + ", ".join(f"{key}={self.settings[key]!r}" for key in changed)
                + " and this run asks for " + ", ".join(f"{key}={own[key]!r}" for key in changed)
                + ": starting from a run's posterior changes only what follows its training ("
                + ", ".join(sorted(config.after_training)) + "); leave the others at the run's values")
        if self.original_weights is not None and self.original_weights != original_weights:
            raise ValueError(f"{self.label} started from other weights than the given model's (fingerprint "
                             f"{self.original_weights[:12]}... against {original_weights[:12]}...); "
                             "give the pretrained network that run compressed")
        if self.probe is not None and not (self.probe.shape == probe.shape and torch.equal(self.probe, probe.cpu())):
            raise ValueError(f"{self.label} was trained on other data: its first validation inputs (of shape "
                             f"{tuple(self.probe.shape[1:])}) differ from those of the data given now (shape "
                             f"{tuple(probe.shape[1:])}); give the data set and validation split that run used, "
                             "in an unshuffled validation loader")


def open_checkpoint(folder: str | os.PathLike, record: dict, method_settings: type[MethodConfig],
                    original: str | None = None, data: str | None = None) -> Checkpoint:
    """The run's checkpoint folder, after checking that a checkpoint already there is of this run: the same
    method settings (of class ``method_settings``) and pipeline, progress bars aside, a setting added since the
    checkpoint was written matching at its default; the same pretrained network (``original`` is its
    :func:`~bayescompress.io.weights_fingerprint`); and the same data (``data`` is the fingerprint of the first
    validation inputs; a checkpoint written before fingerprints were kept has none)."""
    folder = Path(folder)
    if not distributed.is_main():  # rank 0 checks and writes it; the others only read the phases' checkpoints
        return Checkpoint(folder, writer=False)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"checkpoint {folder} is a file; give a folder (new, or one an interrupted run left)")
    settings = folder / "run.json"
    # as JSON gives it back (tuples as lists), so a saved setting compares equal to the same one now
    wanted = json.loads(json.dumps({"method": record["method"],
                                    "pipeline": {k: v for k, v in record["pipeline"].items() if k != "quiet"}}))
    if settings.is_file():
        there = read_json_record(settings, "the settings of the checkpointed run")
        saved_original = there.get("original")
        saved = {"method": effective_settings(there["method"]), "pipeline": there["pipeline"]}
        wanted = {**wanted, "method": effective_settings(wanted["method"])}
        differ = [f"{part}.{difference}"
                  for part, settings in (("method", method_settings), ("pipeline", PipelineConfig))
                  for difference in setting_differences(wanted[part], saved[part], settings, ignore=("quiet",))]
        if differ:
            raise CheckpointMismatchError(f"the checkpoint in {folder} is of a run with other settings ("
                                          + "; ".join(differ) + "); resume with the same ones, or give another folder")
        if original is not None and saved_original not in (None, original):
            raise CheckpointMismatchError(f"the checkpoint in {folder} was trained from other pretrained weights "
                                          f"(fingerprint {saved_original[:12]} there, {original[:12]} now); resume "
                                          "with the weights the run started from, or give another folder")
        if data is not None and there.get("data") not in (None, data):
            raise CheckpointMismatchError(f"the checkpoint in {folder} was trained on other data (its first "
                                          "validation inputs differ from those given now); resume with the data set, "
                                          "folder and validation split the run started with, or give another folder")
    elif folder.is_dir() and any(p for p in folder.iterdir() if not p.name.startswith(".")):
        raise ValueError(f"{folder} is not empty and holds no bayescompress checkpoint (no run.json); give a new "
                         "or empty folder (nothing there is replaced)")
    store = Checkpoint(folder)
    if not settings.is_file():
        write_json(settings, {"format_version": FORMAT_VERSION, **wanted, "original": original, "data": data})
    return store


def _export_graph(network, masks, probe, outputs, val_loader, device) -> tuple[nn.Module, GraphSurgery]:
    """The Torch-Pruning export, checked on the whole validation set: a channel that was constant on the probe
    inputs only (fed by an input-dependent term that is not a layer) would show there, and then only unread
    channels are removed. An untraceable graph keeps every channel. Either fallback warns."""
    for constants in (True, False):
        try:
            exported, surgery = export_with_torch_pruning(network, masks, probe, output_layer=outputs,
                                                          constants=constants)
        except Exception as error:  # noqa: BLE001 - an untraceable graph, or a failed check: keep the work
            warnings.warn(f"the exported network keeps every channel (the masks still hold): {error}", stacklevel=3)
            break
        difference, failure = _max_abs_diff(exported, network, val_loader, device), ""
        try:  # one input alone too: a branch on the batch size takes a path the traced batch did not
            difference = max(difference, largest_difference(exported, network, [probe[:1]]))
        except RuntimeError as error:
            difference, failure = math.inf, f" (it fails on one input alone: {error})"
        if difference <= EXPORT_TOLERANCE:
            _warn_units_left(exported, masks)
            return exported.eval(), surgery
        warnings.warn(f"the graph export differs from the masked network by {difference:.3g} on the validation "
                      "data" + failure + ("; exporting again with unread channels removed only" if constants else
                                          "; keeping every channel"), stacklevel=3)
    whole = to_plain_network(network).eval()
    if (difference := _max_abs_diff(whole, network, val_loader, device)) > EXPORT_TOLERANCE:
        warnings.warn(f"even the export that keeps every channel differs from the masked network by "
                      f"{difference:.3g} on the validation data: its forward pass depends on something a copy of "
                      "its layers does not carry; the metrics of the exported network are not the masked one's "
                      "(export_max_abs_diff)", stacklevel=3)
    return whole, GraphSurgery()


def _warn_units_left(exported: nn.Module, masks: Masks) -> None:
    """Name the layers whose exported width exceeds the units their masks keep: channels tied to kept ones stay."""
    left = [f"{name} ({extra} of {len(units)})" for name, units in masks.units.items()
            if (extra := exported.get_submodule(name).weight.shape[0] - max(int(units.sum()), 1)) > 0]
    if left:
        warnings.warn(f"the export keeps units the masks switch off, in {', '.join(left)}: their channels are tied to "
                      "kept ones (a residual sum, a grouped convolution, a normalisation over the features such as "
                      "LayerNorm, a layer called more than once, a layer left unconverted that reads them, a layer "
                      "the forward pass never calls, or a constant channel that padding makes vary at the border), "
                      "so they compute what the masks say but still cost MACs (architecture.exported)", stacklevel=4)


def _fold_batchnorm(network: nn.Module, probe: Tensor) -> list[tuple[str, str]]:
    """Fold every BatchNorm that directly follows a Linear/Conv2d into it (see
    :mod:`bayescompress.pruning.batchnorm`); a graph Torch-Pruning cannot trace keeps its BatchNorms."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules()):
        return []
    try:
        pairs = foldable_pairs(network, probe)
    except Exception as error:  # noqa: BLE001 - tracing arbitrary user code can fail; folding only improves
        warnings.warn(f"BatchNorm is not folded: Torch-Pruning could not trace the network ({error}); channels "
                      "behind a BatchNorm then cannot be removed", stacklevel=3)
        return []
    fold_batchnorm_(network, pairs)
    return pairs


# settings that keep more of the network (the budgets only where the run set one), then the one that stops
# training before the network degrades, then the fine-tuning's length: what the accuracy-loss advice names
_KEEP_MORE = ("keep_fraction", "density", "prior_inclusion", "pi0", "log_alpha_threshold", "within_unit_drop",
              "target_compression", "target_macs")
_ONLY_WHEN_SET = {"within_unit_drop", "target_compression", "target_macs"}


def accuracy_loss_advice(settings: Mapping[str, object], flags: bool = False) -> str:
    """What to change after a run lost too much accuracy, naming only settings of the run's method (``settings``:
    name -> value, as its config records them), as command-line flags with ``flags``."""
    have = {s for s, value in settings.items() if s not in _ONLY_WHEN_SET or value is not None}
    name = (lambda s: "--" + s.replace("_", "-")) if flags else (lambda s: s)
    keep = [name(s) for s in _KEEP_MORE if s in have]
    parts = [f"keep more ({', '.join(keep)})"] if keep else []
    if "max_val_drop" in have:
        parts.append(f"stop the training before the network degrades ({name('max_val_drop')})")
    if "finetune_epochs" in have:
        parts.append(f"fine-tune longer ({name('finetune_epochs')})")
    return ", or ".join(parts) if parts else "choose another method or settings"


def _check_accuracy_loss(metrics: dict, limit: float, settings: Mapping[str, object]) -> None:
    """Record the accuracy the compressed and exported networks lost against the original, and warn loudly when
    either lost more than ``limit``: a recipe that wrecks a network must not pass for a success. ``settings``: the
    run's method settings, for the advice."""
    original = metrics["original"]["accuracy"]
    losses = {key: original - metrics[key]["accuracy"] for key in ("compressed", "exported")}
    worst = max(losses, key=losses.get)
    exceeded = losses[worst] > limit
    metrics["accuracy_loss"] = {**losses, "limit": limit, "exceeded": exceeded}
    if exceeded:
        warnings.warn(
            f"the {worst} network lost {100 * losses[worst]:.2f} points of accuracy against the original "
            f"({100 * original:.2f} % -> {100 * metrics[worst]['accuracy']:.2f} %), more than max_accuracy_loss "
            f"= {100 * limit:g} points allows: {accuracy_loss_advice(settings)}", AccuracyLossWarning, stacklevel=3)


def _max_abs_diff(a: nn.Module, b: nn.Module, loader: Iterable, device) -> float:
    return largest_difference(a.eval(), b.eval(), _inputs(loader, device))


def _inputs(loader: Iterable, device) -> Iterator[Tensor]:
    """The input batches of ``loader`` on ``device``."""
    return (as_batch(item, "a loader")[0].to(device) for item in loader)


def _latency_batch(loader: Iterable, size: int) -> Tensor:
    x = next(iter(loader))[0]
    repeats = -(-size // x.shape[0])
    return x.repeat(repeats, *([1] * (x.dim() - 1)))[:size]


def _measure(original, network, exported, posterior, masks, uses, loader, example, samples, pipeline) -> dict:
    sizes_original, sizes_masked = size_counts(original), size_counts(network)
    batch = _latency_batch(loader, pipeline.latency_batch).to(pipeline.device)
    latency, batch_size = latency_seconds({"original": original, "exported": exported}, batch,
                                          budget_seconds=pipeline.latency_budget)
    dense = dense_macs(original, example)
    # the whole network's: the dense count less the pruned weights' uses, so layers left dense (not converted,
    # e.g. attention's in_proj) count in full
    pruned = sparse_macs({name: ~mask.bool() for name, mask in masks.weight.items()}, uses)
    macs = {"dense": dense, "sparse": dense - pruned, "exported": dense_macs(exported, example)}
    # the MC metrics are those of the posterior the run keeps (the Bayesian export), with a fixed seed, so a
    # saved run reproduces them exactly
    compressed = posterior if posterior is not None else network
    measured = {
        "original": evaluate(original, loader, samples=0, device=pipeline.device, with_reliability=True),
        "compressed": evaluate(compressed, loader, samples=samples, device=pipeline.device, seed=pipeline.seed,
                               with_reliability=True),
    }
    return {
        **{key: {k: v for k, v in m.items() if k != "reliability"} for key, m in measured.items()},
        "reliability": {key: m["reliability"] for key, m in measured.items()},
        "exported": evaluate(exported, loader, samples=0, device=pipeline.device),
        "mc_samples": samples,
        "params": {"total": sizes_original["params_total"], "nonzero": sizes_masked["params_nonzero"],
                   "exported": size_counts(exported)["params_total"]},
        "weights": {"total": sizes_original["weights_total"], "nonzero": sizes_masked["weights_nonzero"]},
        "compression_rate": sizes_original["weights_total"] / max(sizes_masked["weights_nonzero"], 1),
        "macs": macs,
        "macs_ratio": macs["exported"] / macs["dense"],
        "latency": {"batch_size": batch_size, "original_s": latency["original"],
                    "exported_s": latency["exported"]},
        "latency_ratio": latency["exported"] / latency["original"],
        "architecture": {"layers": layer_names(original), "original": units_per_layer(original),
                         "exported": units_per_layer(exported)},
        "export_max_abs_diff": _max_abs_diff(exported, network, loader, pipeline.device),
    }
