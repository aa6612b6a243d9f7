"""Compression results: the object ``compress`` returns, and its run folder (safetensors + JSON, no pickle).

A run folder holds ``model.safetensors`` (the exported network), ``posterior.safetensors`` (the exported
network's posterior: means, rho, prior and masks inside kept units; Bayesian methods only),
``architecture.json`` (how to rebuild the exported network, and the original), ``masks.safetensors``,
``probe.safetensors`` (a few inputs and the exported network's outputs on them), ``metrics.json``,
``history.json`` (one record per training epoch), ``report.md``, ``trained.safetensors`` (the trained network
as the pruning found it, for :mod:`bayescompress.operating_points`), ``scores.safetensors`` (each weight's
score then), ``plots/`` (figures) and, for Turbo-VBI
runs, ``inclusion.safetensors``.

Rebuild rule. A sequential export is described layer by layer and rebuilt from that description alone. Any
other export is rebuilt from the *original* architecture: ``architecture.json`` says how to build it (a
reference model record, a ``package.module:factory``, or, for runs saved from Python, a model the caller passes
to :func:`load`), which BatchNorms were folded and which channels the graph surgery removed; :func:`load`
builds it, replays the same deterministic surgery, loads the weights (naming the first tensor that does not
fit) and checks the outputs on the stored probe inputs.

A folder is written into a temporary sibling and renamed into place, so a crash never leaves a half-written
run. Saving refuses a non-empty folder that is not a run folder, and replaces a run folder only when asked to.
"""

from __future__ import annotations

import copy
import ctypes
import glob
import hashlib
import importlib
import importlib.util
import json
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from bayescompress._validation import check_module
from bayescompress.io import (
    FORMAT_VERSION,
    check_writable,
    load_weights_,
    mode_for,
    read_json_record,
    read_safetensors,
    save_weights,
    write_json,
)
from bayescompress.folders import CHECKPOINT_DIR, IN_PROGRESS_FILES, is_figure_name, is_interrupted_run, is_run_folder
from bayescompress.inference.checkpoint import OWNER_FILE, check_unclaimed, claim
from bayescompress.priors.gaussian import GaussianPrior
from bayescompress.pruning import Masks, Structure
from bayescompress.pruning.batchnorm import fold_batchnorm_
from bayescompress.pruning.graph_export import (
    GraphSurgery,
    convert_export_,
    cpu_outputs,
    replay_surgery_,
    to_plain_network,
)
from bayescompress.pruning.masks import prunable_layers
from bayescompress.pruning.structure import SelectInputs

# Largest |output difference| (relative to the outputs' scale) a rebuilt network may show on the probe inputs.
_PROBE_RTOL = 1e-4
# What save writes (and `bayescompress plot` adds); overwrite refuses a run folder holding anything else.
RUN_FILES = frozenset({"model.safetensors", "posterior.safetensors", "architecture.json", "masks.safetensors",
                       "probe.safetensors", "metrics.json", "report.md", "inclusion.safetensors", "trained.safetensors",
                       "shuffling.safetensors", "history.json", "scores.safetensors", "plots", "masks.png",
                       "masks-inclusion.png"})

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
    "SelectInputs": ("dim", "features"),
}
# Modules that are not torch.nn's; the index of SelectInputs is part of the saved weights.
_OWN_MODULES = {"SelectInputs": lambda dim, features: SelectInputs(torch.zeros(features, dtype=torch.long), dim)}


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
        modules.append(_OWN_MODULES[kind](**kwargs) if kind in _OWN_MODULES else getattr(nn, kind)(**kwargs))
    return nn.Sequential(*modules)


def units_per_layer(model: nn.Module) -> list[int]:
    """Output units (neurons, filters) of each Linear/Conv2d layer, in order."""
    return [m.weight.shape[0] for _, m in _linear_and_conv(model)]


def layer_names(model: nn.Module) -> list[str]:
    """The names of the layers :func:`units_per_layer` counts, in its order."""
    return [name for name, _ in _linear_and_conv(model)]


def _linear_and_conv(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@dataclass
class ExportRecord:
    """How ``compress`` turned the original network into the exported one, for a run folder to replay."""

    batchnorm_folded: list[tuple[str, str]]
    surgery: GraphSurgery | None  # None: a sequential export, described layer by layer instead
    probe: Tensor  # a few validation inputs


@dataclass
class CompressionResult:
    """What :func:`bayescompress.compress` returns.

    Attributes: ``method``, ``config`` (dict), ``metrics`` (nested dict, see docs/metrics-json.md),
    ``masks`` (final :class:`Masks`), ``original`` (the dense input network), ``compressed`` (the trained,
    masked network), ``exported`` (the smaller deterministic network), ``structure`` (sequential exports),
    ``history``, ``inclusion`` (per layer, the posterior inclusion probabilities the pruning thresholded:
    Turbo-VBI's pi~ per weight; empty for methods without them), ``posterior`` (the smaller Bayesian network,
    None for magnitude pruning), ``export_record`` (how the export was made), ``source`` (how to rebuild the
    original architecture: set by the command line; None for a model passed from Python) and ``before_pruning``
    (the trained network's state as the pruning found it: :mod:`bayescompress.operating_points` re-prunes it),
    ``scores`` (per layer, the score each weight had then: ``pruning.importance.sweep_scores``) and ``shuffling``
    (the training loader's shuffling-generator states then, so a run from this posterior sees the same batches).
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
    posterior: nn.Module | None = None
    folder: Path | None = None  # the folder it was read from: operating points re-read its other files
    export_record: ExportRecord | None = None
    source: dict | None = None
    before_pruning: dict[str, torch.Tensor] = field(default_factory=dict)
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    shuffling: list[torch.Tensor] = field(default_factory=list)

    def export(self, bayesian: bool = False) -> nn.Module:
        """The smaller network: plain layers at the posterior mean, or (``bayesian=True``) Bayesian layers
        that keep sigma for MC prediction (``bayescompress.predict(net, x, samples=K)``)."""
        if not bayesian:
            return self.exported
        if self.posterior is None:
            raise ValueError(f"the {self.method} run has no posterior (it is not Bayesian); use bayesian=False")
        return self.posterior

    def report(self) -> str:
        """A short markdown report of the run."""
        return render_report(self.method, self.metrics)

    def save(self, directory: str | os.PathLike, overwrite: bool = False, plots: bool = True,
             resume: bool = False) -> Path:
        """Write the run folder atomically (see the module docstring) and return its path; with ``plots``, its
        figures too, in ``plots/`` (:func:`bayescompress.plot.draw_run`).

        A non-empty folder that is not a run folder is refused; an existing run folder is replaced only with
        ``overwrite=True``; the checkpoint an interrupted run left there (``resume=True``: this run's) goes
        with the rename that puts the finished run in its place.
        """
        directory = check_run_destination(directory, overwrite, resume)
        if self.export_record is None:
            raise ValueError("this result has no export record (it was not made by bayescompress.compress)")
        record = self.export_record
        # float32 on the CPU, as load checks it: a CUDA run's TF32 convolutions would differ by ~1e-3
        probe_input = record.probe.cpu()
        probe_output = cpu_outputs(self.exported, probe_input)
        # how to rebuild the original (a graph export replays its surgery on it; operating points re-prune it)
        architecture: dict = {"format_version": FORMAT_VERSION, "source": self.source or _caller_source(self.original),
                              "batchnorm_folded": [list(pair) for pair in record.batchnorm_folded]}
        if record.surgery is None:
            architecture.update(export="sequential", layers=describe_sequential(self.exported))
        else:
            architecture.update(export="graph", surgery=record.surgery.to_json())
        directory.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_staging(directory)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            claim(staging)  # so a later save knows it from a folder another process still writes
            os.chmod(staging, mode_for(directory, directory=True))  # it takes the folder's place
            save_weights(self.exported.state_dict(), staging / "model.safetensors")
            if self.posterior is not None:
                save_weights(self.posterior.state_dict(), staging / "posterior.safetensors")
            self.masks.save(staging / "masks.safetensors")
            save_weights({"input": probe_input, "output": probe_output}, staging / "probe.safetensors")
            if self.inclusion:
                save_weights(self.inclusion, staging / "inclusion.safetensors")
            if self.before_pruning:
                save_weights(self.before_pruning, staging / "trained.safetensors")
            if self.scores:
                save_weights(self.scores, staging / "scores.safetensors")
            if self.shuffling:
                save_weights({f"generator.{i}": state for i, state in enumerate(self.shuffling)},
                             staging / "shuffling.safetensors")
            write_json(staging / "history.json", {"format_version": FORMAT_VERSION, "history": self.history})
            write_json(staging / "architecture.json", architecture)
            write_json(staging / "metrics.json", {"format_version": FORMAT_VERSION, "method": self.method,
                                                   "config": self.config, **self.metrics})
            (staging / "report.md").write_text(self.report())
            if plots:
                from bayescompress.plot import draw_run  # here: matplotlib only when figures are wanted

                draw_run(staging)
            (staging / OWNER_FILE).unlink()
            _replace_directory(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return directory


def _remove_abandoned_staging(directory: Path) -> None:
    """Remove the staging folders of ``directory`` (``.<name>.<random>`` beside it) that a save killed mid-write
    left: each holds the claim of the process that wrote it, and only those whose process is gone are removed
    (a dot-folder of the user's has no claim and stays)."""
    for staging in directory.parent.glob(f".{glob.escape(directory.name)}.*"):
        if staging.is_dir() and (staging / OWNER_FILE).is_file():
            try:
                check_unclaimed(staging)
            except ValueError:  # another live process writes it
                continue
            shutil.rmtree(staging, ignore_errors=True)


def _caller_source(original: nn.Module) -> dict:
    return {"kind": "caller", "class": f"{type(original).__module__}.{type(original).__qualname__}"}


def discard_unstarted_checkpoint(directory: str | os.PathLike) -> bool:
    """Remove ``directory``'s checkpoint folder when it holds only the run's settings (no training phase was
    saved: the run failed before its first checkpoint), so the same command later starts afresh instead of being
    taken for an interrupted run; returns whether nothing of a checkpoint is left."""
    checkpoint = Path(directory) / CHECKPOINT_DIR
    if not checkpoint.exists():
        return True
    if not checkpoint.is_dir() or any(entry.name != "run.json" and not entry.name.startswith(".")
                                      for entry in checkpoint.iterdir()):
        return False  # progress was saved: the run can be resumed
    shutil.rmtree(checkpoint)
    return True


def files_not_of_a_run(directory: Path) -> list[str]:
    """The names in ``directory``, and in its ``plots/`` (``plots/<name>``), that neither a run, its training nor
    its figures wrote (dot-files aside: atomic writes and claims), which replacing or finishing the run there must
    not take with it."""
    names = [p.name for p in directory.iterdir()
             if p.name not in RUN_FILES | IN_PROGRESS_FILES and not p.name.startswith(".")]
    plots = directory / "plots"
    if plots.is_dir():  # the run's own figures sit there beside whatever the user put there
        names += [f"plots/{p.name}" for p in plots.iterdir()
                  if not (p.is_file() and is_figure_name(p.name)) and not p.name.startswith(".")]
    elif plots.exists():
        names.append("plots")
    return sorted(names)


# what every finished run folder holds (save writes each of them)
ESSENTIAL_RUN_FILES = ("metrics.json", "architecture.json", "history.json", "model.safetensors", "masks.safetensors")


def damaged_run_files(directory: str | os.PathLike) -> list[str]:
    """What is wrong with a finished run folder's files, one entry per file: the essential ones missing, and any
    JSON or safetensors file that does not parse (a safetensors file by its header, which also tells a truncated
    one; no tensor is read). Empty for an intact run."""
    directory = Path(directory)
    found = [f"{name} missing" for name in ESSENTIAL_RUN_FILES if not (directory / name).is_file()]
    for path in sorted(directory.glob("*.json")) + sorted(directory.glob("*.safetensors")):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            else:
                with safe_open(str(path), framework="pt"):
                    pass
        except (OSError, ValueError, SafetensorError) as error:
            found.append(f"{path.name} unreadable ({str(error).splitlines()[0][:80]})")
    return found


def check_run_destination(directory: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> Path:
    """``directory`` as a Path if a run folder may be written there, else a ``ValueError`` that says why.

    Call it before the work that produces the run, so a bad ``--out`` costs nothing. A folder an interrupted
    run left (:func:`is_interrupted_run`) is written by that run resuming (``resume``) or replaced with
    ``overwrite``.
    """
    directory = Path(directory).expanduser()
    if directory.is_symlink():  # the run goes where the link points; the link stays
        directory = directory.resolve()
    check_writable(directory)
    if (directory / CHECKPOINT_DIR).is_dir():  # a run another process trains there: named, whatever it has written
        check_unclaimed(directory / CHECKPOINT_DIR)
    if is_interrupted_run(directory):
        if others := files_not_of_a_run(directory):
            raise ValueError(f"{directory} holds an interrupted run and files it did not write ({', '.join(others)}); "
                             "move them out first (nothing was touched)")
        if not (resume or overwrite):
            raise ValueError(f"{directory} holds an interrupted run; continue it with `bayescompress compress "
                             f"--resume {shlex.quote(str(directory))}` (compress(..., "
                             f"checkpoint={str(directory / CHECKPOINT_DIR)!r}) from Python), or pass overwrite=True "
                             "(--overwrite) to start again")
        return directory
    if resume and not directory.exists():
        raise ValueError(f"{directory} does not exist; give the run folder of the interrupted run")
    if resume:
        raise ValueError(f"{directory} holds no interrupted run (no {CHECKPOINT_DIR}/run.json)"
                         + ("; the run there has finished" if is_run_folder(directory) else "")
                         + "; resume only a run folder whose run was stopped before it finished")
    if directory.is_dir() and any(directory.iterdir()):
        if not is_run_folder(directory):
            raise ValueError(f"{directory} is not empty and is not a bayescompress run folder; choose a new or "
                             "empty folder (nothing there is replaced)")
        if not overwrite:
            raise ValueError(f"{directory} already holds a bayescompress run; pass overwrite=True (--overwrite on "
                             "the command line) to replace it, or choose another folder")
        if others := files_not_of_a_run(directory):
            raise ValueError(f"{directory} holds a bayescompress run and files it did not write "
                             f"({', '.join(others)}); move them out before replacing the run (nothing was touched)")
    return directory


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where that is unavailable."""
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if rename is None:
        return False
    at_cwd, exchange = -100, 2
    return rename(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), exchange) == 0


def _replace_directory(staging: Path, directory: Path) -> None:
    """Put ``staging`` where ``directory`` is. A previous run is swapped out in one atomic step where the system
    allows it, so no moment exists at which ``directory`` holds neither run."""
    if not directory.exists() or not any(directory.iterdir()):
        os.replace(staging, directory)  # a rename onto an empty folder replaces it
        return
    if _exchange(staging, directory):
        shutil.rmtree(staging, ignore_errors=True)  # now the previous run
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
    os.replace(directory, backup / directory.name)
    try:
        os.replace(staging, directory)
    except BaseException:
        os.replace(backup / directory.name, directory)  # put the previous run back
        shutil.rmtree(backup, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)


@dataclass
class SavedRun:
    """A run folder read back: the exported network, its posterior (Bayesian runs; for MC prediction), the
    metrics, the masks, the architecture record and (Turbo-VBI runs) the inclusion probabilities."""

    model: nn.Module
    metrics: dict
    masks: Masks
    architecture: dict
    inclusion: dict[str, torch.Tensor] = field(default_factory=dict)
    posterior: nn.Module | None = None
    folder: Path | None = None  # the folder it was read from: operating points re-read its other files


def factory_file(spec: str) -> Path | None:
    """The Python file a model factory spec names before its colon (``path/to/nets.py:build``: it ends in
    ``.py`` or holds a path separator), or None when it names a module (``package.module:build``)."""
    source = spec.rpartition(":")[0]  # rpartition: a Windows drive letter's colon stays in the path
    separators = {"/", os.sep, os.altsep} - {None}
    if source.endswith(".py") or any(separator in source for separator in separators):
        return Path(source)
    return None


def _import_file(path: Path):
    """The module the Python file ``path`` holds, executed once per absolute path (later calls reuse it, as
    imports do)."""
    path = path.resolve()
    # a name of its own per path: the file's stem could shadow a module of the same name (torch.py, models.py)
    name = f"_bayescompress_factory_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # while it runs too: dataclasses and typing look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _not_found_hint(missing: str | None, module_name: str | None, factory_name: str) -> str:
    """What to do when the module ``missing`` is not found while loading a factory from ``module_name`` (None
    for a file): make the factory's own module importable, or the module it imports."""
    if missing and module_name is not None and (module_name == missing or module_name.startswith(missing + ".")):
        return (f"; to make {missing} importable, run from the folder that holds it, add that folder to "
                f"PYTHONPATH, or give the file instead: path/to/{module_name.split('.')[-1]}.py:{factory_name}")
    return f"; the factory's module imports {missing}: install it, or add the folder that holds it to PYTHONPATH"


def call_factory(spec: str) -> nn.Module:
    """The network a model factory builds (called with no arguments), with clear errors. ``spec`` is
    ``package.module:factory`` (imported from ``sys.path``) or ``path/to/file.py:factory`` (that file, loaded
    as a module; a relative path is relative to the working directory)."""
    source, _, factory_name = spec.rpartition(":")
    if not source or not factory_name:
        raise ValueError(f"a model factory is written package.module:factory or path/to/file.py:factory; "
                         f"got {spec!r}")
    path = factory_file(spec)
    if path is not None and (not path.is_file() or path.suffix != ".py"):
        what = ("is not a .py file" if path.is_file() or path.is_dir() else
                "does not exist" + ("" if path.suffix == ".py" else
                                    " (a file is written path/to/file.py:factory, a module package.module:factory)"))
        raise ValueError(f"cannot load the model factory {spec!r}: {path.absolute()} {what}")
    try:
        module = importlib.import_module(source) if path is None else _import_file(path)
    except ModuleNotFoundError as error:
        hint = _not_found_hint(error.name, None if path is not None else source, factory_name)
        raise ValueError(f"cannot load the model factory {spec!r}: {error}{hint}") from error
    except Exception as error:  # whatever the module's own code raises while it is imported
        reason = error if isinstance(error, ImportError) else f"{type(error).__name__}: {error}"
        raise ValueError(f"cannot load the model factory {spec!r}: {reason}") from error
    if not hasattr(module, factory_name):
        raise ValueError(f"cannot load the model factory {spec!r}: {path or source} defines no {factory_name!r}")
    try:
        model = getattr(module, factory_name)()
    except Exception as error:
        raise ValueError(f"the model factory {spec!r} raised {type(error).__name__}: {error}") from error
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build_original(source: dict, model: nn.Module | None = None) -> nn.Module:
    """The original architecture a graph run folder was saved from (fresh weights): ``model`` when given,
    else what ``source`` says."""
    if model is not None:
        check_module("model", model, "the architecture")
        return copy.deepcopy(model)
    kind = source.get("kind")
    if kind == "reference":
        from bayescompress.models import model_from_architecture  # here: models is only needed for this kind

        return model_from_architecture(source["architecture"])
    if kind == "factory":
        return call_factory(source["spec"])
    if kind == "caller":
        raise ValueError(f"this run was saved from Python for a {source.get('class', 'user')} network: pass the "
                         "original architecture as model=, e.g. bayescompress.load(folder, model=MyNet())")
    raise ValueError(f"architecture.json has an unknown source {source!r}")


def load(directory: str | os.PathLike, model: nn.Module | None = None) -> SavedRun:
    """Rebuild a saved run from safetensors and JSON only (nothing is unpickled); see the module docstring.

    ``model`` is the original architecture (its weights do not matter), needed for a non-sequential run saved
    from Python; otherwise the folder says how to build it.

    Example
    -------
    >>> run = load("runs/demo")                   # doctest: +SKIP
    >>> run.model(x)                              # doctest: +SKIP
    >>> bayescompress.predict(run.posterior, x, samples=20)   # doctest: +SKIP
    """
    directory = Path(directory)
    what = "not a complete bayescompress run folder"
    architecture = read_json_record(directory / "architecture.json", what)
    metrics = read_json_record(directory / "metrics.json", what)
    sequential = architecture.get("export", "sequential") == "sequential"
    probe_path = directory / "probe.safetensors"
    # run folders of format 1 (sequential exports only) had no probe; every graph run has one
    probe = read_safetensors(probe_path, what) if probe_path.is_file() or not sequential else None
    if sequential:
        exported = build_sequential(architecture["layers"])
    else:
        try:
            source, folded, surgery = (architecture[k] for k in ("source", "batchnorm_folded", "surgery"))
        except KeyError as error:
            raise ValueError(f"{directory / 'architecture.json'} lacks {error}: not a complete run folder") from error
        original = build_original(source, model).cpu().eval()
        try:
            fold_batchnorm_(original, [tuple(pair) for pair in folded])
            exported = replay_surgery_(to_plain_network(original), GraphSurgery.from_json(surgery), probe["input"])
        except (AttributeError, RuntimeError, IndexError) as error:
            raise ValueError(f"the architecture does not match the run saved in {directory} ({error}); build the "
                             "network the run was compressed from") from error
    load_weights_(exported, read_safetensors(directory / "model.safetensors", what),
                  source=f"the weights in {directory / 'model.safetensors'}")
    exported.eval()
    if probe is not None:
        _check_probe(exported, probe, directory)
    posterior = None
    if (directory / "posterior.safetensors").is_file():
        state = read_safetensors(directory / "posterior.safetensors", what)
        posterior = load_weights_(bayesian_like(exported, state), state,
                                  source=f"the posterior in {directory / 'posterior.safetensors'}").eval()
    masks, inclusion = read_masks(directory)
    return SavedRun(exported, metrics, masks, architecture, inclusion, posterior, directory)


def read_masks(directory: str | os.PathLike) -> tuple[Masks, dict[str, Tensor]]:
    """A run folder's masks and (Turbo-VBI runs, else empty) inclusion probabilities, without rebuilding any
    network: all that the figures need, whatever the architecture."""
    directory = Path(directory)
    what = "not a complete bayescompress run folder"
    masks = Masks.read(directory / "masks.safetensors", what)
    inclusion_path = directory / "inclusion.safetensors"
    return masks, read_safetensors(inclusion_path, what) if inclusion_path.exists() else {}


@torch.no_grad()
def _check_probe(exported: nn.Module, probe: dict[str, Tensor], directory: Path) -> None:
    output = exported(probe["input"])
    expected = probe["output"]
    if output.shape != expected.shape:
        raise ValueError(f"the network rebuilt from {directory} gives outputs of shape {tuple(output.shape)} on the "
                         f"stored probe inputs, the run saved {tuple(expected.shape)}: the architecture's code has "
                         "changed since the run was saved")
    difference = float((output - expected).abs().max())
    if difference > _PROBE_RTOL * max(1.0, float(expected.abs().max())):
        raise ValueError(f"the network rebuilt from {directory} does not reproduce the saved outputs on the stored "
                         f"probe inputs (max |difference| {difference:.3g}): the architecture's code has changed "
                         "since the run was saved")


def bayesian_like(exported: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """A Bayesian copy of ``exported`` shaped to receive the posterior ``state``: every Linear/Conv2d converted
    (Gaussian prior, whose scale the state carries: every method fine-tunes and exports under one), with a prune
    mask where the state holds one."""
    shapes = {name: layer.weight.shape for name, layer in prunable_layers(exported)}

    def mask_of(name: str) -> Tensor | None:  # a placeholder the state's weight_mask then overwrites
        return torch.ones(shapes[name]) if (f"{name}.weight_mask" if name else "weight_mask") in state else None

    return convert_export_(copy.deepcopy(exported), lambda _name: GaussianPrior(), mask_of)


def render_report(method: str, metrics: dict) -> str:
    """Markdown summary: accuracy and calibration before/after, sizes, MACs, latency."""
    rows = ["| network | accuracy | NLL | ECE | Brier |", "|---|---|---|---|---|"]
    for key in ("original", "compressed", "exported"):
        m = metrics[key]
        rows.append(f"| {key} | {m['accuracy']:.4f} | {m['nll']:.4f} | {m['ece']:.4f} | {m['brier']:.4f} |")
    p, macs = metrics["params"], metrics["macs"]
    loss = metrics.get("accuracy_loss")  # format-1 runs have none
    warning = []
    if loss and loss["exceeded"]:
        worst = max(("compressed", "exported"), key=lambda key: loss[key])
        warning = [f"**WARNING: the {worst} network lost {100 * loss[worst]:.2f} points of accuracy against the "
                   f"original, more than the {100 * loss['limit']:g} allowed (max_accuracy_loss).**", ""]
    return "\n".join([
        f"# bayescompress run: {method}",
        "",
        *warning,
        *rows,
        "",
        f"- parameters: {p['total']:,} total, {p['nonzero']:,} non-zero, {p['exported']:,} exported",
        f"- compression rate |W|/|W!=0|: {metrics['compression_rate']:.1f}x",
        f"- MACs per input: {macs['dense']:,} dense, {macs['sparse']:,} sparse, {macs['exported']:,} exported "
        f"({macs['dense'] / max(macs['exported'], 1):.1f}x fewer)",
        f"- latency exported / original (batch {metrics['latency']['batch_size']}): {metrics['latency_ratio']:.3f}",
        f"- architecture: {metrics['architecture']['original']} -> {metrics['architecture']['exported']} units",
        f"- max |logit difference| exported vs masked posterior mean: {metrics['export_max_abs_diff']:.2e}",
        *([f"- started from the trained posterior of {metrics['trained_from']} (its training not repeated)"]
          if metrics.get("trained_from") else []),
        "",
    ])
