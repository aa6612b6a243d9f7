"""What the entries of a run folder are: the names this package writes there, and what a folder holds (a finished
run, one still training). Kept apart from :mod:`bayescompress.runs` so the figures can read it without the
results' machinery, which draws them."""

from __future__ import annotations

import json
import os
from pathlib import Path

# What a run folder holds while its run trains: the checkpoint and, from the command line, the invocation.
CHECKPOINT_DIR = "checkpoint"
INVOCATION_FILE = "invocation.json"
IN_PROGRESS_FILES = frozenset({CHECKPOINT_DIR, INVOCATION_FILE})


# the figures `bayescompress plot` and save write into a run's plots/ (filters-<layer>.png besides)
FIGURE_NAMES = frozenset({"masks.png", "units.png", "scores.png", "reliability.png", "training.png", "pixels.png",
                          "inclusion.png", "pareto.png"})


def is_figure_name(name: str) -> bool:
    """Whether ``name`` is one of the figures this package draws (:data:`FIGURE_NAMES`, ``filters-<layer>.png``)."""
    return name in FIGURE_NAMES or (name.startswith("filters-") and name.endswith(".png"))


def is_interrupted_run(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a run that has not finished: its checkpoint (a finished run's folder is
    written without one; an interrupted ``--overwrite`` run also still holds the run it replaces)."""
    return (Path(directory) / CHECKPOINT_DIR / "run.json").is_file()


def is_run_folder(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a run folder this package wrote (its metrics.json names a method)."""
    metrics = Path(directory) / "metrics.json"
    if not (metrics.is_file() and (Path(directory) / "architecture.json").is_file()):
        return False
    try:
        record = json.loads(metrics.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "format_version" in record and "method" in record


__all__ = ["CHECKPOINT_DIR", "FIGURE_NAMES", "INVOCATION_FILE", "IN_PROGRESS_FILES", "is_figure_name",
           "is_interrupted_run", "is_run_folder"]
