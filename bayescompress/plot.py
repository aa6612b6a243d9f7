"""Pictures of the structured sparsity a run produced (matplotlib, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never needs a screen

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bayescompress.io import atomic_write  # noqa: E402
from bayescompress.pruning import Masks  # noqa: E402


def masks(run_masks: Masks, path: str | os.PathLike | None = None, max_columns: int = 4) -> Figure:
    """One panel per layer: its weight keep mask as an image (rows = output units, columns = inputs; a
    conv filter's kernel is flattened into its row), kept weights dark; the title gives the kept fraction
    and the surviving units.

    With ``path``, the figure is also written there (atomically; the format follows the suffix).

    Example
    -------
    >>> run = bayescompress.load("runs/lenet300")            # doctest: +SKIP
    >>> masks(run.masks, "lenet300-masks.png")               # doctest: +SKIP
    """
    if not run_masks.weight:
        raise ValueError("there are no weight masks to draw")
    names = list(run_masks.weight)
    columns = min(max_columns, len(names))
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        keep = run_masks.weight[name].flatten(1).float()
        units = run_masks.units.get(name)
        ax.imshow(keep.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        unit_text = "" if units is None else f", units {int(units.sum())}/{units.numel()}"
        ax.set_title(f"{name}: {100 * keep.mean().item():.1f}% kept{unit_text}", fontsize=9)
        ax.set_xlabel("input")
        ax.set_ylabel("output unit")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    figure.tight_layout()
    if path is not None:
        path = Path(path)
        atomic_write(path, lambda tmp: figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120))
    return figure
