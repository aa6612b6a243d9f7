"""End-to-end jobs behind the command line, usable from Python too: pretraining and the demo."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bayescompress.data import DatasetSplits, load_dataset, make_loaders
from bayescompress.inference import TrainConfig, fit
from bayescompress.io import load_state_dict_file, load_weights_, save_weights, write_json
from bayescompress.metrics import evaluate
from bayescompress.models import REQUIRED_IMAGE_SIZE, build_model, model_from_architecture
from bayescompress.nn import bayesianize_
from bayescompress.priors import GaussianPrior

FORMAT_VERSION = 1


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

    def save(self, path: str | os.PathLike) -> Path:
        """Write the weights to ``path`` (safetensors) and ``path`` with suffix ``.json`` beside it."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"the weights file must end in .safetensors; got {path.name}")
        save_weights(self.model.state_dict(), path)
        record = {
            "format_version": FORMAT_VERSION,
            "architecture": self.architecture,
            "dataset": self.dataset,
            **{f"test_{k}": v for k, v in self.metrics.items()},
        }
        write_json(path.with_suffix(".json"), record)
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

    Example
    -------
    >>> result = pretrain("mlp", "digits", epochs=2, hidden=(16,), quiet=True)
    >>> 0.0 <= result.metrics["accuracy"] <= 1.0
    True
    """
    config = TrainConfig(epochs=epochs, lr=lr, lr_schedule="cosine", seed=seed, device=device, quiet=quiet)
    splits = load_data_for(model_name, dataset, data_dir, seed=seed)
    train_loader, val_loader, test_loader = make_loaders(splits, batch_size=batch_size, seed=seed)
    torch.manual_seed(seed)  # the initial weights, too, follow the seed
    model, architecture = build_model(model_name, splits.input_shape, splits.num_classes, hidden=hidden)
    history = fit(model, train_loader, val_loader if len(splits.val) else None, config)
    metrics = evaluate(model, test_loader, samples=0, device=device)
    return PretrainResult(model, architecture, metrics, dataset, history)


def load_pretrained(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild a network written by :meth:`PretrainResult.save` from its weights and ``.json`` record."""
    path = Path(path)
    record_path = path.with_suffix(".json")
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} (the architecture record written beside {path.name}) is missing")
    record = json.loads(record_path.read_text())
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{record_path} has format version {version!r}; this bayescompress reads up to {FORMAT_VERSION}: "
            "upgrade bayescompress"
        )
    model = model_from_architecture(record["architecture"])
    load_weights_(model, load_state_dict_file(path), source=f"weights in {path.name}")
    return model, record


def demo(
    out: str | os.PathLike | None = None,
    *,
    pretrain_epochs: int = 30,
    vi_epochs: int = 40,
    mc_samples: int = 20,
    seed: int = 0,
    quiet: bool = False,
) -> dict:
    """On scikit-learn's digits: pretrain a 64-100-10 MLP, convert it to a Bayesian network, train it by VI.

    Returns test metrics of both networks (``pretrained``, ``bayesian``) and the wall time. With ``out``,
    writes ``pretrained.safetensors``/``.json``, ``bayesian.safetensors`` and ``metrics.json`` there.
    """
    start = time.perf_counter()
    result = pretrain("mlp", "digits", epochs=pretrain_epochs, lr=3e-3, batch_size=64, seed=seed, quiet=quiet)
    splits = load_data_for("mlp", "digits", seed=seed)
    train_loader, val_loader, test_loader = make_loaders(splits, batch_size=64, seed=seed)

    bayesian = bayesianize_(copy.deepcopy(result.model), GaussianPrior(scale=1.0))
    fit(bayesian, train_loader, val_loader, TrainConfig(epochs=vi_epochs, lr=1e-3, seed=seed, quiet=quiet))
    summary = {
        "dataset": "digits",
        "architecture": result.architecture,
        "pretrained": result.metrics,
        "bayesian": evaluate(bayesian, test_loader, samples=mc_samples),
        "mc_samples": mc_samples,
        "seconds": time.perf_counter() - start,
    }
    if out is not None:
        out = Path(out)
        result.save(out / "pretrained.safetensors")
        save_weights(bayesian.state_dict(), out / "bayesian.safetensors")
        write_json(out / "metrics.json", summary)
    return summary
