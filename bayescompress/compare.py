"""Prior families side by side: one network, one data set, every method at its recipe, the same seeds.

:func:`compare` runs :func:`~bayescompress.compress` once per method and seed, each from the same pretrained
network and, for one seed, on the same data order, writes each run as an ordinary run folder
(``OUT/<method>/seed<k>``) as soon as it finishes, and tabulates the metrics as mean +- standard deviation over
the seeds (``comparison.md`` / ``.csv`` / ``.json``). A killed comparison keeps the runs it finished; ``resume=True``
reads them back instead of running them again.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import statistics
import os
import shutil
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from bayescompress import distributed, methods
from bayescompress.compress import (
    MAX_SEED,
    PROBE_SIZE,
    AccuracyLossWarning,
    PipelineConfig,
    compress,
    resolve_method,
)
from bayescompress.data import as_batch, batches_per_epoch
from bayescompress.inference.checkpoint import check_unclaimed, shuffling_generators
from bayescompress.io import (
    atomic_write,
    check_writable,
    read_json_record,
    read_safetensors,
    weights_fingerprint,
    write_json,
)
from bayescompress.methods.base import Method, effective_settings, setting_differences
from bayescompress.operating_points import DEFAULT_KEEP_FRACTIONS, operating_points
from bayescompress.pruning.masks import copy_network
from bayescompress.folders import CHECKPOINT_DIR, is_interrupted_run, is_run_folder
from bayescompress.runs import damaged_run_files, discard_unstarted_checkpoint, files_not_of_a_run

# (column, how to read it from a run's metrics, how to write it); the order of the table
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("accuracy", "compressed.accuracy", "{:.2%}"),
    ("nll", "compressed.nll", "{:.4f}"),
    ("ece", "compressed.ece", "{:.4f}"),
    ("brier", "compressed.brier", "{:.4f}"),
    ("compression", "compression_rate", "{:.1f}x"),
    ("exported_macs", "macs.exported", "{:,.0f}"),
    ("macs_ratio", "macs_ratio", "{:.3f}"),
    ("latency_ratio", "latency_ratio", "{:.3f}"),
    ("training_macs_ratio", "training_macs_ratio", "{:.3f}"),
    ("training_macs", "training.macs", "{:.3g}"),
    ("wall_s", "training.wall_s", "{:.0f}"),
)
COMPARISON_FILES = frozenset({"comparison.md", "comparison.csv", "comparison.json", "pareto.png"})
DEFAULT_METHODS = ("gaussian-snr", "sparse-vd", "ss-gl", "ss-ghs", "turbo-vbi", "ssvi", "magnitude")


@dataclass
class Comparison:
    """What :func:`compare` returns: per method, the metrics of each seed's run, and where they were written."""

    runs: dict[str, dict[int, dict]]
    out: Path | None = None
    original: dict = field(default_factory=dict)
    points: dict[str, list[dict]] = field(default_factory=dict)
    anchors: list[dict] = field(default_factory=list)
    evaluated_on: str = "test"  # the data the metrics come from: "test", or "validation" without a test loader

    def summary(self) -> list[dict]:
        """One row per method: ``seeds``, ``units`` (exported units per layer, mean over seeds) and per column
        ``{"mean", "std", "values"}`` (std over seeds, 0 for one seed)."""
        rows = []
        for method, by_seed in self.runs.items():
            metrics = [by_seed[seed] for seed in sorted(by_seed)]
            row: dict = {"method": method, "seeds": sorted(by_seed)}
            for column, path, _ in COLUMNS:
                values = [_lookup(m, path) for m in metrics]
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                row[column] = {"mean": statistics.fmean(values), "std": std, "values": values}
            units = [m["architecture"]["exported"] for m in metrics]
            row["units"] = ([round(statistics.fmean(layer)) for layer in zip(*units)] if _same_length(units)
                            else units[0])
            row["accuracy_loss_exceeded"] = sum(bool(m["accuracy_loss"]["exceeded"]) for m in metrics)
            rows.append(row)
        return rows

    def markdown(self) -> str:
        """The table as markdown, one row per method, mean +- std over the seeds."""
        original = self.original
        header = ["method", "seeds", *(c for c, _, _ in COLUMNS), "units kept"]
        lines = []
        if original:
            lines.append(f"Original network ({self.evaluated_on} data): accuracy {original['accuracy']:.2%}, NLL "
                         f"{original['nll']:.4f}, ECE {original['ece']:.4f}, units {original['units']}.")
            lines.append("")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.summary():
            cells = [row["method"], str(len(row["seeds"]))]
            for column, _, style in COLUMNS:
                cell = style.format(row[column]["mean"])
                if len(row["seeds"]) > 1:
                    cell += " ± " + style.format(row[column]["std"]).rstrip("x%")
                cells.append(cell)
            cells.append(str(row["units"]))
            lines.append("| " + " | ".join(cells) + " |")
        warned = [f"{r['method']} ({r['accuracy_loss_exceeded']} of {len(r['seeds'])})" for r in self.summary()
                  if r["accuracy_loss_exceeded"]]
        lines += ["", f"Compressed-network metrics on the {self.evaluated_on} data (MC over the posterior for Bayesian "
                  "methods); ± is the standard deviation over seeds. training_macs_ratio: analytic training MACs over "
                  "dense VI's for the same epochs."]
        if warned:
            lines.append(f"**Runs that lost more accuracy than max_accuracy_loss: {', '.join(warned)}.**")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """One line per method with ``<column>_mean`` and ``<column>_std`` fields."""
        buffer = io.StringIO()
        names = ["method", "seeds", *(f"{c}_{s}" for c, _, _ in COLUMNS for s in ("mean", "std")), "units"]
        writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for row in self.summary():
            writer.writerow({"method": row["method"], "seeds": " ".join(map(str, row["seeds"])),
                             "units": " ".join(map(str, row["units"])),
                             **{f"{c}_{s}": row[c][s] for c, _, _ in COLUMNS for s in ("mean", "std")}})
        return buffer.getvalue()

    def run_points(self) -> dict[str, list[dict]]:
        """Per method, each seed's run as a point of the Pareto figure: compression, error, exported MACs."""
        return {method: [{"compression": m["compression_rate"], "error": 1.0 - m["compressed"]["accuracy"],
                          "exported_macs": m["macs"]["exported"]} for m in by_seed.values()]
                for method, by_seed in self.runs.items()}

    def pareto(self, path: str | os.PathLike | None = None):
        """The Pareto figure (:func:`bayescompress.plot.pareto`): operating points, runs and anchors."""
        from bayescompress.plot import pareto  # here: matplotlib only when a figure is wanted

        return pareto(self.points, self.run_points(), self.anchors, path,
                      title="Test error against compression: every method, one network")

    def save(self, directory: str | os.PathLike) -> list[Path]:
        """Write comparison.md, .csv and .json (with the operating points) and pareto.png into ``directory``
        (atomically, each); returns the paths."""
        from matplotlib import pyplot

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = [directory / "comparison.md", directory / "comparison.csv", directory / "comparison.json"]
        atomic_write(paths[0], lambda tmp: tmp.write_text(self.markdown()))
        atomic_write(paths[1], lambda tmp: tmp.write_text(self.csv()))
        write_json(paths[2], {"original": self.original, "evaluated_on": self.evaluated_on, "rows": self.summary(),
                              "operating_points": self.points, "anchors": self.anchors})
        paths.append(directory / "pareto.png")
        pyplot.close(self.pareto(paths[-1]))
        return paths


def compare(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    methods: Sequence[str | Method] | Mapping[str, str | Method] = DEFAULT_METHODS,
    seeds: Sequence[int] = (0,),
    *,
    test_loader: Iterable | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    pipeline: PipelineConfig | None = None,
    source: dict | None = None,
    keep_fractions: Sequence[float] | None = DEFAULT_KEEP_FRACTIONS,
    anchors: Sequence[dict] = (),
) -> Comparison:
    """Compress ``model`` with every method in ``methods`` (names or configured methods, each at its recipe
    unless configured; or a mapping label -> method, e.g. two settings of one method) once per seed in
    ``seeds``, and tabulate the results, one row per method (or label).

    Every run starts from ``model``, and the runs of one seed see the same data order: before each run the
    train loader's shuffling generators are seeded with the run's seed, as ``make_loaders(seed=k)`` seeds them,
    so the seed-k run is the one ``compress --seed k`` makes. With ``out``, each run is written to
    ``out/<method>/seed<k>`` when it finishes and the tables to ``out/comparison.*``; ``resume=True`` reads the
    runs already there instead of running them again, ``overwrite=True`` replaces them (without either, an
    ``out`` holding runs of this comparison is refused; one holding anything else always is).
    ``pipeline`` applies to every run, its seed replaced by each of ``seeds``; ``source`` is how a run folder
    rebuilds the architecture (set by the command line, see :class:`~bayescompress.runs.CompressionResult`).

    Each method's first-seed run is also re-pruned at ``keep_fractions`` without retraining
    (:func:`~bayescompress.operating_points.operating_points`, measured on ``test_loader`` or ``val_loader``;
    None: no operating points); ``anchors`` are published points (``{"label", "compression", "error"}``) the
    Pareto figure shows beside them.

    Example
    -------
    >>> table = compare(pretrained, train, val, ["gaussian-snr", "turbo-vbi"], seeds=[0, 1],
    ...                 test_loader=test, out="runs/cmp")                                    # doctest: +SKIP
    >>> print(table.markdown())                                                              # doctest: +SKIP
    """
    chosen = _resolve(methods)
    seeds = _check_seeds(seeds)
    pipeline = pipeline or PipelineConfig()
    out = _check_out(out, chosen, seeds, resume, overwrite) if out is not None else None
    made_out = out is not None and not out.exists()  # removed again if a failure leaves it empty
    if out is not None and resume:
        _check_resumable(out, chosen, seeds, model, val_loader, pipeline)
    _check_methods(model, chosen, train_loader, val_loader, pipeline.device)
    generators = shuffling_generators(train_loader)
    comparison = Comparison({name: {} for name in chosen}, out, anchors=[dict(a) for a in anchors],
                            evaluated_on="test" if test_loader is not None else "validation")
    first_runs: dict = {}
    todo = [(name, seed) for name in chosen for seed in seeds]
    bar = tqdm(todo, desc="compare", unit="run", disable=pipeline.quiet)
    for name, seed in bar:
        bar.set_postfix_str(f"{name} seed {seed}")
        folder = None if out is None else out / name / f"seed{seed}"
        if folder is not None and resume and is_run_folder(folder) and not is_interrupted_run(folder):
            comparison.runs[name][seed] = json.loads((folder / "metrics.json").read_text())
            first_runs.setdefault(name, folder)
            continue
        for generator in generators:  # seed k's data order, as make_loaders(seed=k) and `compress --seed k` give
            generator.manual_seed(seed)
        checkpoint = None
        if folder is not None:  # an interrupted run continues from its checkpoint when resuming
            checkpoint = folder / CHECKPOINT_DIR
            if overwrite and not resume and checkpoint.is_dir() and distributed.is_main():
                check_unclaimed(checkpoint)  # not the checkpoint of a run another process still trains
                shutil.rmtree(checkpoint)  # this package's own checkpoint of the run being replaced
        try:
            with warnings.catch_warnings():  # recorded per run and flagged in the table
                warnings.simplefilter("ignore", AccuracyLossWarning)
                result = compress(model, train_loader, val_loader, chosen[name], test_loader=test_loader,
                                  pipeline=replace(pipeline, seed=seed), checkpoint=checkpoint)
        except BaseException:  # an interrupt too
            # a run that failed before its first checkpoint leaves nothing --resume would take for its progress
            if folder is not None and distributed.is_main() and discard_unstarted_checkpoint(folder):
                _remove_if_empty(folder, out if made_out else None)
            raise
        if folder is not None and distributed.is_main():
            result.source = source
            result.save(folder, overwrite=overwrite, resume=True)
        comparison.runs[name][seed] = result.metrics
        first_runs.setdefault(name, result)
    if keep_fractions is not None:
        eval_loader = test_loader if test_loader is not None else val_loader
        for name, run in tqdm(first_runs.items(), desc="operating points", unit="method", disable=pipeline.quiet):
            comparison.points[name] = operating_points(run, eval_loader, keep_fractions, model=model,
                                                       device=pipeline.device, own=True)
    first = next(m for by_seed in comparison.runs.values() for m in by_seed.values())
    comparison.original = {**{k: first["original"][k] for k in ("accuracy", "nll", "ece", "brier")},
                           "units": first["architecture"]["original"]}
    if out is not None and distributed.is_main():
        comparison.save(out)
    return comparison


def _check_methods(model: nn.Module, chosen: dict[str, Method], train_loader, val_loader, device: str) -> None:
    """Every method's settings against the network and data (``Method.check``), before the first run: a
    comparison whose last method cannot work fails now, not after the others have run."""
    first = next(iter(val_loader), None)
    if first is None:
        return  # compress says so, at once
    network = copy_network(model).to(device).eval()
    steps = batches_per_epoch(train_loader)
    for name, method in chosen.items():
        try:
            method.check(network, method.configure(model), first[0][:1].to(device), steps)
        except ValueError as error:  # UnsupportedGraphError too
            raise type(error)(f"{name}: {error}") from None


def _remove_if_empty(folder: Path, out: Path | None = None) -> None:
    """``folder``, then its parent (the method's folder), then ``out`` (given when this comparison made it), each
    only when empty."""
    for path in (folder, folder.parent, *([out] if out is not None else [])):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _resolve(chosen: Sequence[str | Method] | Mapping[str, str | Method]) -> dict[str, Method]:
    """Label -> method: the method's name, or the keys of a mapping (to compare settings of one method)."""
    if isinstance(chosen, str):
        chosen = [part for part in chosen.split(",") if part]
    if not chosen:
        raise ValueError(f"methods is empty; give one or more of {', '.join(methods.names())}")
    items = chosen.items() if isinstance(chosen, Mapping) else [(None, item) for item in chosen]
    resolved: dict[str, Method] = {}
    for label, item in items:
        method = resolve_method(item)
        label = method.name if label is None else label
        if not label or "/" in label or label.startswith("."):
            raise ValueError(f"{label!r} cannot name a run folder; use letters, digits and dashes")
        if label in resolved:
            raise ValueError(f"{label} is given twice in methods; each method runs once per seed (give a mapping "
                             "label -> method to compare two settings of one method)")
        resolved[label] = method
    return resolved


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    if isinstance(seeds, (int, str)):
        raise ValueError(f"seeds must be a list of integers, e.g. [0, 1, 2]; got {seeds!r}")
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in seeds):
        raise ValueError(f"seeds must be one or more integers in [0, {MAX_SEED}]; got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds holds a seed twice ({seeds!r}); give each once")
    return seeds


def load_comparison(directory: str | os.PathLike) -> Comparison:
    """A comparison folder read back: the runs' metrics from ``<label>/seed<k>/metrics.json``, the operating
    points, anchors and original from ``comparison.json``."""
    directory = Path(directory)
    path = directory / "comparison.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (not a folder bayescompress compare wrote)")
    try:
        record = json.loads(path.read_text())
        rows = record["rows"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is damaged ({type(error).__name__}: {error}); run the comparison again with "
                         "--resume to write it anew") from None
    runs = {}
    for row in rows:
        runs[row["method"]] = {seed: read_json_record(directory / row["method"] / f"seed{seed}" / "metrics.json",
                                                      "a run of the comparison")
                               for seed in row["seeds"]}
    return Comparison(runs, directory, record.get("original", {}), record.get("operating_points", {}),
                      record.get("anchors", []), record.get("evaluated_on", "test"))


def compare_destination(out: str | os.PathLike, methods: Sequence[str | Method] | Mapping[str, str | Method],
                        seeds: Sequence[int], resume: bool = False, overwrite: bool = False) -> Path:
    """``out`` as a Path if :func:`compare` may write these methods' and seeds' runs there, else a ``ValueError``
    that says why; call it before work that precedes the comparison."""
    return _check_out(out, _resolve(methods), _check_seeds(seeds), resume, overwrite)


def _check_out(out, chosen: dict[str, Method], seeds: list[int], resume: bool, overwrite: bool) -> Path:
    """Refuse, before any work, an ``out`` that holds anything compare did not write, or runs of this comparison
    unless resuming or overwriting them."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"cannot write the comparison to {out}: it is a file; choose a folder")
    check_writable(out)
    others: list[str] = []
    if out.is_dir():
        foreign = sorted(entry.name for entry in out.iterdir() if not _written_by_compare(entry))
        if foreign:
            raise ValueError(f"{out} holds files compare did not write ({', '.join(foreign)}); choose a new or "
                             "empty folder, or one a comparison wrote (nothing there is replaced)")
        runs = [child for entry in out.iterdir() if not entry.name.startswith(".") and entry.is_dir()
                for child in entry.iterdir() if not child.name.startswith(".") and child.is_dir()]
        kept = [run for run in runs if is_run_folder(run) or is_interrupted_run(run)]
        damaged = sorted(str(run) for run in runs if run not in kept and any(run.iterdir()))
        if damaged:
            raise ValueError(f"not a complete run (metrics.json or architecture.json missing or unreadable): "
                             f"{', '.join(damaged)}; remove it to run it again, or choose another folder (nothing "
                             "was touched)")
        # one folder, one comparison: the table lists only this comparison's runs, so the others would drop out
        others = sorted(f"{run.parent.name}/{run.name}" for run in kept
                        if not (run.parent.name in chosen and run.name in {f"seed{k}" for k in seeds}))
        if others and not (resume or overwrite):
            raise ValueError(f"{out} holds runs of another comparison ({', '.join(others)}), which its table would "
                             "no longer list; give their methods and seeds too (with resume=True, --resume, to keep "
                             "them), or choose another folder (nothing was touched)")
    for name in chosen:
        for seed in seeds:
            folder = out / name / f"seed{seed}"
            if is_interrupted_run(folder) and not (resume or overwrite):
                raise ValueError(f"{folder} holds an interrupted run; pass resume=True (--resume) to continue it "
                                 "from its checkpoint, overwrite=True (--overwrite) to start it again, or choose "
                                 "another folder")
            if resume and is_run_folder(folder) and not is_interrupted_run(folder) and (
                    damaged := damaged_run_files(folder)):  # a kept run goes into the table as it is
                raise ValueError(f"{folder} is a finished run whose files are damaged ({'; '.join(damaged)}); "
                                 "remove that folder to run it again, or pass overwrite=True (--overwrite) instead "
                                 "of resuming (nothing was touched)")
            if is_run_folder(folder) and not (resume or overwrite):
                raise ValueError(f"{out} already holds runs of a comparison ({folder}); pass resume=True "
                                 "(--resume) to keep them and run the rest, overwrite=True (--overwrite) to replace "
                                 "them, or choose another folder")
            if folder.is_dir() and (foreign := files_not_of_a_run(folder)):  # its save would refuse them, later
                raise ValueError(f"{folder} holds files compare did not write ({', '.join(foreign)}); move them out "
                                 "first (nothing was touched)")
    if others:  # said once every refusal is past
        warnings.warn(f"{out}'s table will list this comparison's runs only; those of {', '.join(others)} stay in "
                      "the folder but not in the table (give their methods and seeds to keep them in it)",
                      stacklevel=3)
    return out


def _written_by_compare(entry: Path) -> bool:
    """A comparison table or figure, or a folder of run folders named seed<k>."""
    if entry.name in COMPARISON_FILES or entry.name.startswith("."):  # dot-entries: atomic writes under way
        return True
    return entry.is_dir() and all(child.is_dir() and child.name.startswith("seed") and child.name[4:].isdigit()
                                  for child in entry.iterdir() if not child.name.startswith("."))


def _check_resumable(out: Path, chosen: dict[str, Method], seeds: list[int], model: nn.Module,
                     val_loader: Iterable, pipeline: PipelineConfig) -> None:
    """A run kept by ``resume`` must have been made with the settings this comparison would use (the method's
    and the pipeline's), from the same pretrained network and on the same data (its first validation inputs)."""
    first = next(iter(val_loader), None)
    probe = None if first is None else as_batch(first, "val_loader")[0][:PROBE_SIZE].detach().cpu()
    fingerprint = weights_fingerprint(model)
    for name, method in chosen.items():
        wanted = effective_settings(json.loads(json.dumps(dataclasses.asdict(method.configure(model)))))
        for seed in seeds:
            folder = out / name / f"seed{seed}"
            if not is_run_folder(folder) or is_interrupted_run(folder):
                continue  # an interrupted run (an --overwrite's, over a finished one) is checked by its checkpoint
            record = read_json_record(folder / "metrics.json", "a run of the comparison")
            if record.get("original_weights") not in (None, fingerprint):
                raise ValueError(f"{folder} was run from other pretrained weights than the given model's; give the "
                                 "network the comparison started from, or choose another folder")
            kept_probe = folder / "probe.safetensors"
            if probe is not None and kept_probe.is_file():
                inputs = read_safetensors(kept_probe, "a run of the comparison")["input"]
                if inputs.shape != probe.shape or not torch.equal(inputs, probe):
                    raise ValueError(f"{folder} was run on other data: its first validation inputs differ from "
                                     "those given now; give the data set, folder and split the comparison started "
                                     "with, or choose another folder")
            config = record.get("config", {})
            differ = [f"{name} {difference}" for difference in
                      setting_differences(wanted, effective_settings(config.get("method", {})), method.config_class)]
            # the pipeline too (MC samples, BatchNorm folding, the accuracy budget): the table averages the runs
            run_pipeline = json.loads(json.dumps(dataclasses.asdict(replace(pipeline, seed=seed))))
            differ += [f"pipeline {difference}" for difference in setting_differences(
                run_pipeline, config.get("pipeline", {}), PipelineConfig, ignore=("quiet",))]
            if differ:
                raise ValueError(f"{folder} was run with other settings than this comparison's ("
                                 + ", ".join(differ) + "); give the same settings to resume, or choose another folder")


def _lookup(metrics: dict, path: str) -> float:
    value = metrics
    for key in path.split("."):
        value = value[key]
    return float(value)


def _same_length(lists: list[list[int]]) -> bool:
    return len({len(units) for units in lists}) == 1


__all__ = ["COLUMNS", "COMPARISON_FILES", "DEFAULT_METHODS", "Comparison", "compare", "compare_destination",
           "load_comparison"]
