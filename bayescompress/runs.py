"""Compression results: the object ``compress`` returns, and its run folder (safetensors + JSON, no pickle).

A run folder holds ``model.safetensors`` (the exported network), ``architecture.json`` (how to rebuild it),
``masks.safetensors``, ``metrics.json``, ``report.md`` and, for Turbo-VBI runs, ``inclusion.safetensors``. It is
written into a temporary sibling folder and renamed into place, so a crash never leaves a half-written run where a
complete one was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from bayescompress.io import FORMAT_VERSION, read_json_record, save_weights, write_json
from bayescompress.pruning import Masks, Structure, export_sequential

# Constructor arguments of every module the exported sequential network can contain.
_MODULE_ARGS: dict[str, tuple[str, ...]] = {
    "Linear": ("in_features", "out_features"),
    "Conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "padding_mode"),
    "ReLU": (), "ReLU6": (), "SiLU": (), "Tanh": (), "Sigmoid": (), "Identity": (),
    "LeakyReLU": ("negative_slope",), "ELU": ("alpha",), "GELU": ("approximate",),
    "MaxPool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    "AvgPool2d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    "Flatten": ("start_dim", "end_dim"),
    "Dropout": ("p",),
}


def describe_sequential(model: nn.Sequential) -> list[dict]:
    """JSON-able description of a sequential network, enough to rebuild it with :func:`build_sequential`."""
    layers = []
    for module in model:
        kind = type(module).__name__
        if kind not in _MODULE_ARGS:
            raise ValueError(f"cannot describe module {kind} in a run folder; supported: {', '.join(_MODULE_ARGS)}")
        spec = {"type": kind, **{arg: getattr(module, arg) for arg in _MODULE_ARGS[kind]}}
        if kind in ("Linear", "Conv2d"):
            spec["bias"] = module.bias is not None
        layers.append(spec)
    return layers


def build_sequential(layers: list[dict]) -> nn.Sequential:
    """Inverse of :func:`describe_sequential` (fresh, untrained weights)."""
    modules = []
    for spec in layers:
        spec = dict(spec)
        kind = spec.pop("type", None)
        if kind not in _MODULE_ARGS:
            raise ValueError(f"architecture.json names an unknown module type {kind!r}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
        modules.append(getattr(nn, kind)(**kwargs))
    return nn.Sequential(*modules)


def units_per_layer(model: nn.Module) -> list[int]:
    """Output units (neurons, filters) of each Linear/Conv2d layer, in order."""
    return [m.weight.shape[0] for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@dataclass
class CompressionResult:
    """What :func:`bayescompress.compress` returns.

    Attributes: ``method``, ``config`` (dict), ``metrics`` (nested dict, see docs/metrics-json.md),
    ``masks`` (final :class:`Masks`), ``original`` (the dense input network), ``compressed`` (the trained,
    masked network), ``exported`` (the smaller deterministic network), ``structure``, ``history``, and
    ``inclusion`` (per layer, the posterior inclusion probabilities the pruning thresholded: Turbo-VBI's pi~
    per weight; empty for methods without them).
    """

    method: str
    config: dict
    metrics: dict
    masks: Masks
    original: nn.Module
    compressed: nn.Module
    exported: nn.Module
    structure: Structure | None  # None when Torch-Pruning exported a general graph
    history: list[dict] = field(default_factory=list)
    inclusion: dict[str, torch.Tensor] = field(default_factory=dict)

    def export(self, bayesian: bool = False) -> nn.Module:
        """The smaller network: plain layers at the posterior mean, or (``bayesian=True``) Bayesian layers
        that keep sigma for MC prediction."""
        if not bayesian:
            return self.exported
        if self.structure is None:
            raise ValueError("a Bayesian export is available for sequential networks only; use bayesian=False")
        return export_sequential(self.compressed, self.structure, bayesian=True)

    def report(self) -> str:
        """A short markdown report of the run."""
        return render_report(self.method, self.metrics)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the run folder atomically (see the module docstring) and return its path."""
        directory = Path(directory)
        if not isinstance(self.exported, nn.Sequential):
            raise ValueError(
                f"run folders describe sequential exports only; this export is a {type(self.exported).__name__}. "
                "Save its state_dict with bayescompress.io.save_weights and the masks with Masks.to_tensors"
            )
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            save_weights(self.exported.state_dict(), staging / "model.safetensors")
            save_weights(self.masks.to_tensors(), staging / "masks.safetensors")
            if self.inclusion:
                save_weights(self.inclusion, staging / "inclusion.safetensors")
            write_json(staging / "architecture.json", {
                "format_version": FORMAT_VERSION,
                "layers": describe_sequential(self.exported),
            })
            write_json(staging / "metrics.json", {"format_version": FORMAT_VERSION, "method": self.method,
                                                   "config": self.config, **self.metrics})
            (staging / "report.md").write_text(self.report())
            _replace_directory(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return directory


def _replace_directory(staging: Path, directory: Path) -> None:
    if not directory.exists():
        os.replace(staging, directory)
        return
    backup = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(backup, ignore_errors=True)
    os.replace(directory, backup)
    os.replace(staging, directory)
    shutil.rmtree(backup, ignore_errors=True)


@dataclass
class SavedRun:
    """A run folder read back: the exported network, its metrics, the masks and (Turbo-VBI runs) the
    inclusion probabilities."""

    model: nn.Sequential
    metrics: dict
    masks: Masks
    architecture: list[dict]
    inclusion: dict[str, torch.Tensor] = field(default_factory=dict)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a complete bayescompress run folder")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(
            f"{path} is not a valid safetensors file ({error}); run folders never contain pickles and none is loaded"
        ) from error


def load(directory: str | os.PathLike) -> SavedRun:
    """Rebuild a saved run's exported network from safetensors and JSON only (nothing is unpickled).

    Example
    -------
    >>> run = load("runs/demo")  # doctest: +SKIP
    >>> run.model(x)             # doctest: +SKIP
    """
    directory = Path(directory)
    architecture = read_json_record(directory / "architecture.json", "not a complete bayescompress run folder")
    metrics = read_json_record(directory / "metrics.json", "not a complete bayescompress run folder")
    model = build_sequential(architecture["layers"])
    model.load_state_dict(_read_safetensors(directory / "model.safetensors"))
    masks = Masks.from_tensors(_read_safetensors(directory / "masks.safetensors"))
    inclusion_path = directory / "inclusion.safetensors"
    inclusion = _read_safetensors(inclusion_path) if inclusion_path.exists() else {}
    return SavedRun(model.eval(), metrics, masks, architecture["layers"], inclusion)


def render_report(method: str, metrics: dict) -> str:
    """Markdown summary: accuracy and calibration before/after, sizes, MACs, latency."""
    rows = ["| network | accuracy | NLL | ECE | Brier |", "|---|---|---|---|---|"]
    for key in ("original", "compressed", "exported"):
        m = metrics[key]
        rows.append(f"| {key} | {m['accuracy']:.4f} | {m['nll']:.4f} | {m['ece']:.4f} | {m['brier']:.4f} |")
    p, macs = metrics["params"], metrics["macs"]
    return "\n".join([
        f"# bayescompress run: {method}",
        "",
        *rows,
        "",
        f"- parameters: {p['total']:,} total, {p['nonzero']:,} non-zero, {p['exported']:,} exported",
        f"- compression rate |W|/|W!=0|: {metrics['compression_rate']:.1f}x",
        f"- MACs per input: {macs['dense']:,} dense, {macs['sparse']:,} sparse, {macs['exported']:,} exported "
        f"({macs['dense'] / max(macs['exported'], 1):.1f}x fewer)",
        f"- latency exported / original (batch {metrics['latency']['batch_size']}): {metrics['latency_ratio']:.3f}",
        f"- architecture: {metrics['architecture']['original']} -> {metrics['architecture']['exported']} units",
        f"- max |logit difference| exported vs masked posterior mean: {metrics['export_max_abs_diff']:.2e}",
        "",
    ])
