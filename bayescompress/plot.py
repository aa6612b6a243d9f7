"""Pictures of the structured sparsity a run produced (matplotlib, no display needed)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never needs a screen

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
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
    _save(figure, path)
    return figure


def _save(figure: Figure, path: str | os.PathLike | None) -> None:
    if path is not None:
        path = Path(path)
        atomic_write(path, lambda tmp: figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120))


def inclusion(probabilities: dict, path: str | os.PathLike | None = None, max_columns: int = 4) -> Figure:
    """One panel per layer: the posterior inclusion probability of every weight (Turbo-VBI's pi~) as an image,
    rows = output units, columns = inputs (conv kernels flattened), 1 dark; the title gives the fraction at or
    above 1/2 (what inclusion pruning keeps).

    Example
    -------
    >>> run = bayescompress.load("runs/lenet300-turbo")              # doctest: +SKIP
    >>> inclusion(run.inclusion, "lenet300-inclusion.png")           # doctest: +SKIP
    """
    if not probabilities:
        raise ValueError("no inclusion probabilities to draw: only Turbo-VBI runs record them")
    names = list(probabilities)
    columns = min(max_columns, len(names))
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        grid = probabilities[name].detach().flatten(1).float().cpu()
        image = ax.imshow(grid.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(f"{name}: {100 * (grid >= 0.5).float().mean().item():.1f}% with pi~ >= 1/2", fontsize=9)
        ax.set_xlabel("input")
        ax.set_ylabel("output unit")
    figure.colorbar(image, ax=list(axes.flat), shrink=0.8, label="posterior inclusion pi~")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    _save(figure, path)
    return figure


def mrf_samples(prior, shape: tuple[int, int] = (64, 64), sweeps: int = 200, seed: int = 0,
                path: str | os.PathLike | None = None) -> Figure:
    """Draws from a :class:`~bayescompress.priors.HierarchicalPrior`'s support MRF by Gibbs sampling, beside
    i.i.d. Bernoulli draws of the same density: the clusters along rows (within a unit) and columns (across
    units) are what the MRF adds.

    Example
    -------
    >>> from bayescompress.priors import HierarchicalPrior
    >>> figure = mrf_samples(HierarchicalPrior(pi0=0.5), shape=(16, 16), sweeps=20)
    >>> len(figure.axes)
    2
    """
    from bayescompress.priors.mrf import gibbs_sample

    graph = prior.factor_graph(shape)
    generator = torch.Generator().manual_seed(seed)
    pi0 = float(prior.pi0)
    unary = torch.full(shape, math.log(pi0) - math.log1p(-pi0), dtype=torch.float64)
    sample = gibbs_sample(graph, unary, sweeps=sweeps, generator=generator)
    iid = (torch.rand(shape, generator=generator, dtype=torch.float64) < sample.mean()).double()
    figure, axes = plt.subplots(1, 2, figsize=(8, 4))
    (rp11, rp01), (cp11, cp01) = prior.transitions.tolist()
    titles = (f"MRF ({prior.graph}): rows p11={rp11:g} p01={rp01:g},\ncolumns p11={cp11:g} p01={cp01:g}, "
              f"pi0={pi0:g}", f"i.i.d. Bernoulli({sample.mean().item():.2f})")
    for ax, image, title in zip(axes, (sample, iid), titles):
        ax.imshow(image.numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("input")
        ax.set_ylabel("output unit")
    figure.tight_layout()
    _save(figure, path)
    return figure
