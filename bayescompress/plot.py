"""Pictures of the structured sparsity a run produced (matplotlib, no display needed)."""

from __future__ import annotations

import math
import os
import shlex
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never needs a screen

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from bayescompress.io import atomic_write  # noqa: E402
from bayescompress.pruning import Masks  # noqa: E402
from bayescompress.folders import is_figure_name, is_interrupted_run, is_run_folder  # noqa: E402


_REMOVED = torch.tensor([0.85, 0.1, 0.1, 0.35])
_TIED = torch.tensor([0.95, 0.55, 0.0, 0.35])


def masks(run_masks: Masks, path: str | os.PathLike | None = None, max_columns: int = 4,
          exported: Mapping[str, int] | None = None) -> Figure:
    """One panel per layer: its weight keep mask as an image (rows = output units, columns = inputs; a conv
    filter's kernel is flattened into its row), kept weights black, pruned ones white; removed units (rows) and
    the inputs no kept weight reads (columns) are shaded red. The title gives the kept fraction and the units
    and inputs left.

    ``exported`` (units per layer name of the exported network, from ``metrics["architecture"]``) gives each
    title the exported width where it differs from the units the masks keep. Where the export keeps more (channels
    tied to kept ones by a residual sum or a grouped convolution, or constant channels it cannot fold away), the
    switched-off rows are shaded orange, not red: some of them are still in the network.

    With ``path``, the figure is also written there (atomically; the format follows the suffix).

    Example
    -------
    >>> run = bayescompress.load("runs/lenet300")            # doctest: +SKIP
    >>> masks(run.masks, "lenet300-masks.png")               # doctest: +SKIP
    """
    if not run_masks.weight:
        raise ValueError("there are no weight masks to draw")
    names = list(run_masks.weight)
    figure, axes = _grid(len(names), max_columns, (4.2, 3.4))
    any_tied = False
    for ax, name in zip(axes, names):
        weight = run_masks.weight[name]
        keep = weight.flatten(1).float()
        units = run_masks.units.get(name, keep.any(dim=1).bool())
        per_input = weight.flatten(2).any(dim=2) if weight.dim() > 2 else weight
        inputs = per_input.any(dim=0)
        width = (exported or {}).get(name)
        tied = width is not None and width > max(int(units.sum()), 1)
        any_tied |= tied
        removed_columns = (~inputs).repeat_interleave(keep.shape[1] // inputs.numel())
        # wider than the panel's pixels: blocks of rows / columns, shaded by the share of their units (inputs)
        # removed, so a block of 3 with one removed unit is a third as red (an image resampled by matplotlib
        # would fade one removed row among 1000 to nothing; a block drawn red for any would overstate removal)
        rows, columns = -(-keep.shape[0] // _MAX_MASK_PIXELS), -(-keep.shape[1] // _MAX_MASK_PIXELS)
        row_share = _block_mean((~units.bool()).float()[:, None], rows, 1)  # (row blocks, 1)
        column_share = _block_mean(removed_columns.float()[None, :], 1, columns)  # (1, column blocks)
        extent = (-0.5, keep.shape[1] - 0.5, keep.shape[0] - 0.5, -0.5)  # axes in units and inputs, not blocks
        ax.imshow(_block_mean(keep, rows, columns).numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto",
                  interpolation="nearest", extent=extent)
        row_colour = _TIED if tied else _REMOVED
        shade = torch.where((row_share > 0)[..., None], row_colour, _REMOVED).expand(
            row_share.shape[0], column_share.shape[1], 4).clone()
        shade[..., 3] = torch.maximum(row_colour[3] * row_share, _REMOVED[3] * column_share)
        ax.imshow(shade.numpy(), aspect="auto", interpolation="nearest", extent=extent)
        for axis in (ax.xaxis, ax.yaxis):  # units and inputs are whole: no tick at 2.5
            axis.set_major_locator(MaxNLocator(integer=True))
        kept_units = f"units {int(units.sum())}/{units.numel()}" + (
            f" (exported {width})" if width is not None and width != int(units.sum()) else "")
        ax.set_title(f"{name}: {100 * keep.mean().item():.1f}% kept\n{kept_units}, "
                     f"inputs {int(inputs.sum())}/{inputs.numel()}", fontsize=9)
        ax.set_xlabel("input" + (" (channel x kernel)" if weight.dim() > 2 else ""))
        ax.set_ylabel("output unit")
    legend = [Patch(facecolor="black", label="kept weight"),
              Patch(facecolor="white", edgecolor="grey", label="pruned weight"),
              Patch(facecolor=_REMOVED.tolist(), label="removed unit / input")]
    if any_tied:
        legend.append(Patch(facecolor=_TIED.tolist(), label="unit switched off; the export keeps some of these"))
    figure.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    figure.suptitle("Weight masks per layer", fontsize=11)
    figure.tight_layout(rect=(0, 0.06, 1, _below_suptitle(figure)))
    _save(figure, path)
    return figure


# a mask is drawn at most this many blocks wide and high (about a panel's pixels)
_MAX_MASK_PIXELS = 400


def _block_mean(image: Tensor, rows: int, columns: int) -> Tensor:
    """``image`` averaged over blocks of ``rows`` x ``columns`` (the last blocks may be smaller, averaged over
    what they hold); of 0/1 flags, the share set per block."""
    if rows == columns == 1:
        return image
    pooled = torch.nn.functional.avg_pool2d(image[None, None], (rows, columns), ceil_mode=True)
    return pooled[0, 0]


def _below_suptitle(figure: Figure) -> float:
    """The top of a tight layout's rectangle that leaves the suptitle a line of its own above the panel titles
    (a fixed 0.95 is too little on a one-row figure and too much on a tall one)."""
    return 1.0 - 0.3 / figure.get_figheight()


def _grid(panels: int, max_columns: int, size: tuple[float, float], layout: str | None = None):
    """A figure of ``panels`` axes in rows of at most ``max_columns``; unused axes are switched off. ``layout``
    "constrained" makes room for a colour bar shared by the panels."""
    columns = min(max_columns, panels)
    rows = -(-panels // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(size[0] * columns, size[1] * rows), squeeze=False,
                                layout=layout)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    return figure, list(axes.flat)[:panels]


def _save(figure: Figure, path: str | os.PathLike | None) -> None:
    if path is not None:
        path = Path(path)
        # bbox_inches="tight": no colour-bar or axis label is cut off at the figure's edge
        atomic_write(path, lambda tmp: figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120,
                                                      bbox_inches="tight"))


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
    for name in names:
        if probabilities[name].dim() < 2:
            raise ValueError(f"the inclusion probabilities of {name} have shape {tuple(probabilities[name].shape)}; "
                             "give one per weight, shaped like the layer's weight (units, inputs[, kernel])")
    figure, axes = _grid(len(names), max_columns, (4.0, 3.2), layout="constrained")
    for ax, name in zip(axes, names):
        grid = probabilities[name].detach().flatten(1).float().cpu()
        image = ax.imshow(grid.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(f"{name}: {100 * (grid >= 0.5).float().mean().item():.1f}% with pi~ >= 1/2", fontsize=9)
        ax.set_xlabel("input")
        ax.set_ylabel("output unit")
    figure.colorbar(image, ax=axes, shrink=0.8, label="posterior inclusion pi~")
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


def filters(kernels: Tensor, units: Tensor | None = None, name: str = "conv", path: str | os.PathLike | None = None,
            max_columns: int = 10, exported: int | None = None) -> Figure:
    """A convolution's filters as a grid, one small image per filter (its kernel averaged over input channels,
    on one colour scale centred at 0); filters the masks switch off (``units`` False) are framed red and struck
    through. ``exported``, the filters of the exported layer, is named in the title where it differs.

    ``kernels`` is the layer's weight, (filters, in channels, kh, kw).

    Example
    -------
    >>> figure = filters(torch.randn(6, 1, 5, 5), torch.tensor([1, 0, 1, 1, 0, 1]).bool())
    >>> len([ax for ax in figure.axes if ax.get_images()])
    6
    """
    if kernels.dim() != 4:
        raise ValueError(f"filters draws a Conv2d weight (filters, channels, kh, kw); got shape {tuple(kernels.shape)}")
    images = kernels.detach().float().cpu().mean(dim=1)
    units = torch.ones(images.shape[0], dtype=torch.bool) if units is None else units.bool().cpu()
    limit = float(images.abs().max()) or 1.0
    figure, axes = _grid(images.shape[0], max_columns, (1.1, 1.25))
    for index, (ax, image) in enumerate(zip(axes, images)):
        shown = ax.imshow(image.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{index}", fontsize=7, color="black" if units[index] else "red")
        if not units[index]:
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2)
            ax.plot([-0.5, image.shape[1] - 0.5], [-0.5, image.shape[0] - 0.5], color="red", linewidth=1.5)
    kept = int(units.sum())
    export = f"; the export keeps {exported}" if exported is not None and exported != kept else ""
    figure.suptitle(f"{name}: {kept} of {units.numel()} filters switched on (red: off{export})", fontsize=10)
    figure.colorbar(shown, ax=axes, shrink=0.8, label="mean weight over input channels")
    _save(figure, path)
    return figure


def score_histograms(scores: dict[str, Tensor], run_masks: Masks | None = None, label: str = "score",
                     log: bool = False, path: str | os.PathLike | None = None, max_columns: int = 4) -> Figure:
    """One histogram per layer of the weights' pruning scores (inclusion probabilities, SNR, |w|), with the
    threshold the run's masks correspond to (the smallest kept score) drawn as a vertical line where one score
    separates the kept weights from the pruned (not where whole units were removed, or nothing was).

    ``log`` histograms log10 of the score (for SNR and |w|, which span decades); scores of 0 are left out of a
    log histogram and counted in the title.

    Example
    -------
    >>> figure = score_histograms({"fc1": torch.rand(30, 20)}, label="inclusion probability")
    >>> figure.axes[0].get_xlabel()
    'inclusion probability'
    """
    if not scores:
        raise ValueError("there are no scores to draw")
    names = list(scores)
    figure, axes = _grid(len(names), max_columns, (4.0, 3.0))
    for ax, name in zip(axes, names):
        values = scores[name].detach().double().cpu().flatten()
        finite = values.isfinite()
        zeros = int((values <= 0).sum()) if log else 0
        shown = values[finite & (values > 0)].log10() if log else values[finite]
        ax.hist(shown.numpy(), bins=60, color="tab:blue", alpha=0.8)
        ax.set_yscale("log")
        ax.set_xlabel(f"log10 {label}" if log else label)
        ax.set_ylabel("weights")
        at_zero = f"{zeros:,} at 0" if zeros else ""
        not_finite = f"{int((~finite).sum()):,} not finite (not drawn)" if not finite.all() else ""
        title = f"{name}: {values.numel():,} weights" + (
            f" ({', '.join(filter(None, (at_zero, not_finite)))})" if at_zero or not_finite else "")
        if run_masks is not None and name in run_masks.weight:
            kept = run_masks.weight[name].flatten().cpu()
            if kept.any() and not kept.all():
                cut = float(values[kept].min())
                if float(values[~kept].max()) <= cut and math.isfinite(cut) and (not log or cut > 0):
                    ax.axvline(math.log10(cut) if log else cut, color="red", linestyle="--", label="threshold")
                    ax.legend(fontsize=8)
            title += f"\n{100 * kept.float().mean().item():.1f}% kept"
        ax.set_title(title, fontsize=9)
    figure.suptitle(f"Pruning scores before pruning ({label})", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, _below_suptitle(figure)))
    _save(figure, path)
    return figure


def units_kept(original: Sequence[int], exported: Sequence[int], names: Sequence[str] | None = None,
               path: str | os.PathLike | None = None) -> Figure:
    """Per layer, bars of the units (neurons, filters) of the original network beside the exported one's.

    Example
    -------
    >>> figure = units_kept([300, 100, 10], [60, 30, 10])
    >>> [round(bar.get_height()) for bar in figure.axes[0].patches]
    [300, 100, 10, 60, 30, 10]
    """
    if len(original) != len(exported):
        raise ValueError(f"original has {len(original)} layers and exported {len(exported)}; they must match")
    names = list(names) if names is not None else [f"layer {i + 1}" for i in range(len(original))]
    positions = torch.arange(len(original)).double().numpy()
    figure, ax = plt.subplots(figsize=(min(max(4.5, 1.3 * len(original) + 2), 16.0), 3.6))  # a ResNet: 16 in
    ax.bar(positions - 0.2, original, width=0.4, color="lightgrey", edgecolor="grey", label="original")
    bars = ax.bar(positions + 0.2, exported, width=0.4, color="tab:blue", label="exported")
    for bar, before, after in zip(bars, original, exported):
        ax.annotate(f"{100 * after / max(before, 1):.0f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(positions, names, fontsize=8, rotation=(45 if len(original) > 10 else 20) if len(original) > 5 else 0,
                  ha="right" if len(original) > 5 else "center")
    ax.set_ylabel("units (neurons / filters)")
    ax.set_title("Units kept per layer (label: fraction of the original)", fontsize=10)
    ax.legend(fontsize=8)
    figure.tight_layout()
    _save(figure, path)
    return figure


def reliability_diagram(bins: dict[str, dict], path: str | os.PathLike | None = None) -> Figure:
    """Accuracy against confidence per bin for each network in ``bins`` (``{"original": ..., "compressed":
    ...}``, each :func:`bayescompress.metrics.reliability`'s output), over the share of test inputs per bin.

    Example
    -------
    >>> from bayescompress.metrics import reliability
    >>> probs = torch.softmax(torch.randn(200, 3), dim=1)
    >>> figure = reliability_diagram({"original": reliability(probs, torch.randint(0, 3, (200,)))})
    >>> figure.axes[0].get_ylabel()
    'accuracy'
    """
    if not bins:
        raise ValueError("there are no reliability bins to draw")
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5, 5.4), sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    width = 1.0 / len(next(iter(bins.values()))["count"]) / (len(bins) + 0.5)
    for index, (name, b) in enumerate(bins.items()):
        centres = [(lo + hi) / 2 for lo, hi in zip(b["lower"], b["upper"])]
        filled = [(c, acc, conf) for c, acc, conf in zip(centres, b["accuracy"], b["confidence"]) if acc is not None]
        top.plot([conf for _, _, conf in filled], [acc for _, acc, _ in filled], marker="o", markersize=3,
                 label=name)
        total = max(sum(b["count"]), 1)
        bottom.bar([c + (index - (len(bins) - 1) / 2) * width for c in centres], [n / total for n in b["count"]],
                   width=width, label=name)
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1.02)
    top.set_title("Reliability: accuracy against confidence (test data)", fontsize=10)
    top.legend(fontsize=8)
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("share of inputs")
    bottom.set_yscale("log")
    bottom.set_ylim(top=1.5)  # a share is at most 1: the axis ends at the decade, not the next one
    bottom.set_xlim(0, 1)
    figure.tight_layout()
    _save(figure, path)
    return figure


def training_curves(history: Sequence[dict], path: str | os.PathLike | None = None) -> Figure:
    """The run's epoch records: loss and NLL, KL, validation accuracy, and the fraction of weights kept, one panel
    each (those the records hold a value of; no KL panel for a run without a posterior, whose KL is 0), on a log
    scale where a panel's lines span more than a factor 100; a dashed line where a new training phase (the
    fine-tuning) begins.

    Example
    -------
    >>> records = [{"epoch": e, "loss": 1.0 / e, "nll": 0.5 / e, "kl": 10.0, "val_accuracy": 0.9} for e in (1, 2, 3)]
    >>> [ax.get_ylabel() for ax in training_curves(records).axes]
    ['loss per example', 'KL (nats)', 'validation accuracy']
    """
    if not history:
        raise ValueError("the run has no training history to draw")
    steps = list(range(1, len(history) + 1))
    phases = [i for i in range(1, len(history)) if history[i].get("epoch", 0) <= history[i - 1].get("epoch", 0)]
    panels = _training_panels(history)
    if not panels:
        raise ValueError("the run's training history records no loss, KL, accuracy or kept fraction to draw")
    figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, (keys, label, log) in zip(axes[0], panels):
        for key in keys:
            points = [(x, r[key]) for x, r in zip(steps, history) if key in r and r[key] is not None]
            if points:
                ax.plot(*zip(*points), marker=".", label=key)
        values = [v for line in ax.get_lines() for v in line.get_ydata()]
        # log where asked, or where one line would flatten another (a loss with a KL term of 1e4 beside the NLL)
        if values and min(values) > 0 and (log or max(values) / min(values) > 100):
            ax.set_yscale("log")
        ax.set_xlim(0.5, len(history) + 0.5)
        for start in phases:
            ax.axvline(start + 0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("epoch (all phases)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.5 between two of them
        if len(history) == 1:  # with one integer in range the locator falls back to 0.5, 0.6, ...
            ax.set_xticks([1])
        ax.set_ylabel(label)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    title = "Training curves" + (" (dashed: fine-tuning begins)" if phases else "")
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    _save(figure, path)
    return figure


def _training_panels(history: Sequence[dict]) -> list[tuple[tuple[str, ...], str, bool]]:
    """(keys, label, log scale) of each panel of :func:`training_curves` the records hold a value of; not the KL
    of a run without a posterior (all 0)."""
    panels = [(("loss", "nll"), "loss per example", False), (("kl",), "KL (nats)", True),
              (("val_accuracy",), "validation accuracy", False), (("kept_fraction",), "fraction of weights kept", True)]
    return [p for p in panels if any(record.get(key) not in (None, 0) for record in history for key in p[0])]


def kept_pixels(weight_mask: Tensor, image_shape: Sequence[int], name: str = "input layer",
                path: str | os.PathLike | None = None) -> Figure:
    """For a first Linear layer reading a flattened image: per pixel, how many of its outgoing weights are
    kept (0: the pixel is no longer read), as an image of ``image_shape`` ((H, W) or (C, H, W), summed over
    channels).

    Example
    -------
    >>> mask = torch.zeros(5, 16, dtype=torch.bool); mask[:, 5] = True
    >>> kept_pixels(mask, (4, 4)).axes[0].get_images()[0].get_array().sum()
    np.float64(5.0)
    """
    per_pixel = weight_mask.detach().bool().cpu().sum(dim=0).double()
    if per_pixel.numel() != math.prod(image_shape):
        raise ValueError(f"the layer reads {per_pixel.numel()} inputs, not an image of shape {tuple(image_shape)}")
    image = per_pixel.reshape(*image_shape)
    image = image.sum(dim=0) if image.dim() == 3 else image
    figure, ax = plt.subplots(figsize=(4.4, 3.8))
    shown = ax.imshow(image.numpy(), cmap="viridis", vmin=0, vmax=max(float(image.max()), 1.0),
                      interpolation="nearest")  # from 0: the darkest pixel is one no longer read
    ax.set_title(f"{name}: {int((image > 0).sum())} of {image.numel()} pixels read", fontsize=10)
    ax.set_xlabel("pixel column")
    ax.set_ylabel("pixel row")
    figure.colorbar(shown, ax=ax, label="kept weights from the pixel")
    figure.tight_layout()
    _save(figure, path)
    return figure


def _times(value: float) -> str:
    return f"{value:g}x"


def _count(value: float) -> str:
    """20000 -> 20k, 1500000 -> 1.5M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def pareto(points: dict[str, Sequence[dict]], runs: dict[str, Sequence[dict]] | None = None,
           anchors: Sequence[dict] = (), path: str | os.PathLike | None = None, title: str = "") -> Figure:
    """Test error against compression |W| / |W != 0| and against the exported network's MACs, every method on
    one figure: its operating points (:func:`bayescompress.operating_points.operating_points`) as a line (the
    point of the run's own masks, ``"own"``, as a small diamond beside it: a unit-level run's masks are not on the
    weight ranking's curve), its runs (fine-tuned, one per seed: dicts with ``compression``, ``error``,
    ``exported_macs``) as larger markers,
    and published ``anchors`` (``{"label", "compression", "error"}``, optionally ``"exported_macs"``) as black
    stars labelled "published".

    Example
    -------
    >>> pts = {"turbo-vbi": [{"compression": c, "error": 0.01 * c ** 0.3, "exported_macs": 1e5 / c} for c in (2, 10, 50)]}
    >>> [ax.get_xlabel() for ax in pareto(pts).axes]
    ['compression |W| / |W≠0| (log scale)', 'MACs of the exported network (log scale)']
    """
    if not points and not runs:
        raise ValueError("there are no operating points or runs to draw")
    runs = runs or {}
    for kind, entries in (("operating point", points), ("run", runs)):
        for method, listed in entries.items():
            for entry in listed:
                if entry.get("error") is None or entry.get("compression") is None:
                    raise ValueError(f"a {kind} of {method} has no error or compression ({entry}); each needs "
                                     "both (exported_macs is optional: without it, only the left panel shows it)")
    figure, axes = plt.subplots(1, 2, figsize=(14, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, method in enumerate(dict.fromkeys([*points, *runs])):
        colour = colours[index % len(colours)]
        for ax, x in zip(axes, ("compression", "exported_macs")):
            curve = sorted((p[x], 100 * p["error"]) for p in points.get(method, ())
                           if not p.get("own") and p.get(x) is not None)
            if curve:
                ax.plot(*zip(*curve), color=colour, marker=".", markersize=4, linewidth=1.2,
                        label=f"{method} (re-pruned, no fine-tuning)")
            own = [(p[x], 100 * p["error"]) for p in points.get(method, ()) if p.get("own") and p.get(x) is not None]
            if own:
                ax.scatter(*zip(*own), color=colour, marker="D", s=18, zorder=3)
            done = [(r[x], 100 * r["error"]) for r in runs.get(method, ()) if r.get(x) is not None]
            if done:
                ax.scatter(*zip(*done), color=colour, edgecolor="black", s=40, zorder=3, label=f"{method} (runs)")
    for index, anchor in enumerate(anchors):
        for ax, x in zip(axes, ("compression", "exported_macs")):
            if anchor.get(x) is not None:
                ax.scatter([anchor[x]], [100 * anchor["error"]], marker="*", color="black", s=90, zorder=4)
                # staggered, so anchors at one error (BC-GHS and BC-GNJ, 1.0 %) do not write over each other
                ax.annotate(f"{anchor['label']} (published)", (anchor[x], 100 * anchor["error"]),
                            textcoords="offset points", xytext=(5, 4 + 11 * index), fontsize=7,
                            arrowprops=dict(arrowstyle="-", color="grey", linewidth=0.5) if index else None)
    for ax, label, unit in zip(axes, ("compression |W| / |W≠0| (log scale)", "MACs of the exported network (log scale)"),
                               (_times, _count)):
        ax.set_xscale("log")
        # labels at 1, 2 and 5 of each decade: a panel often spans less than two decades
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _position, unit=unit: unit(value)))
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a log axis collide
        ax.set_xlabel(label)
        ax.set_ylabel("test error (%)")
        ax.grid(True, which="both", alpha=0.3)
    # zoomed on the best point, not stretched by a curve's far end; runs above get a labelled triangle (below)
    low = min([100 * p["error"] for ps in points.values() for p in ps] + [100 * r["error"] for rs in runs.values()
                                                                          for r in rs] + [100.0])
    top = min(100.0, max(low * 4, low + 5))
    # an anchor more accurate than every run widens the bottom, not the zoom (it would push the runs off the top)
    bottom = max(0.0, min([low] + [100 * a["error"] for a in anchors]) - 0.5)
    for ax, x in zip(axes, ("compression", "exported_macs")):
        ax.set_ylim(bottom, top)
        # the x-range of what is drawn inside the axes: a curve's far end is off the top, and would leave most of
        # the panel empty
        shown = [p[x] for ps in points.values() for p in ps if 100 * p["error"] <= top and p.get(x)]
        shown += [r[x] for rs in runs.values() for r in rs if r.get(x)] + [a[x] for a in anchors if a.get(x)]
        if shown:
            ax.set_xlim(min(shown) / 1.25, max(shown) * 1.25)
    # runs above the zoomed axis stay visible: a triangle on the top edge, labelled with their error (labels of
    # neighbouring triangles stacked downwards, not drawn over each other)
    above = [(run, method, colours[index % len(colours)])
             for index, method in enumerate(dict.fromkeys([*points, *runs]))
             for run in runs.get(method, ()) if 100 * run["error"] > top]
    for ax, x in zip(axes, ("compression", "exported_macs")):
        previous, depth = None, 0
        for run, method, colour in sorted((e for e in above if e[0].get(x) is not None), key=lambda e: e[0][x]):
            depth = depth + 1 if previous is not None and run[x] < previous * 1.25 else 0
            previous = run[x]
            ax.scatter([run[x]], [top], marker="^", color=colour, edgecolor="black", s=60, zorder=5, clip_on=False)
            ax.annotate(f"{method} {100 * run['error']:.1f} %", (run[x], top), textcoords="offset points",
                        xytext=(0, -12 - 9 * depth), ha="center", fontsize=7, color=colour)
    axes[1].invert_xaxis()  # fewer MACs to the right, like more compression on the left panel
    handles, labels = axes[0].get_legend_handles_labels()
    # a curve wholly above the zoomed axis is not seen: its legend entry says where it is
    hidden = {f"{method} (re-pruned, no fine-tuning)" for method, ps in points.items()
              if all(100 * p["error"] > top for p in ps if not p.get("own"))}
    labels = [label + f": above {top:.3g} % error" if label in hidden else label for label in labels]
    if any(p.get("own") for ps in points.values() for p in ps):
        handles.append(Line2D([], [], color="grey", marker="D", markersize=4, linestyle=""))
        labels.append("a run's own masks, no fine-tuning")
    figure.suptitle(title or "Accuracy against compression", fontsize=11)
    figure.tight_layout(rect=(0, 0, 0.76, 1))  # the legend's column on the right, inside the figure
    figure.legend(handles, labels, loc="center left", bbox_to_anchor=(0.765, 0.5), fontsize=8, frameon=False)
    _save(figure, path)
    return figure


# Published anchors (SPEC, "Reference results"), for the Pareto figures of the reference networks on MNIST
PUBLISHED = {
    "lenet300": [{"label": "Sparse VD", "compression": 68.0, "error": 0.0192}],
    "lenet5": [{"label": "Sparse VD", "compression": 280.0, "error": 0.0075},
               {"label": "BC-GHS", "compression": 156.0, "error": 0.010, "exported_macs": 160_000},
               {"label": "BC-GNJ", "compression": 108.0, "error": 0.010}],
}

# filter grids drawn per run: those of the first convolutions (in the masks' order)
MAX_FILTER_FIGURES = 4

# the score each method prunes by, as the histograms label it: (label, log scale)
_SCORE_LABELS = {"turbo-vbi": ("posterior inclusion probability pi~", False),
                 "ss-gl": ("SNR x gate inclusion", True), "ss-ghs": ("SNR x gate inclusion", True),
                 "magnitude": ("|w|", True)}


def figures_in(folder: Path) -> list[str]:
    """The files in ``folder`` a plot would replace."""
    return sorted(p.name for p in folder.glob("*.png") if is_figure_name(p.name))


def draw_run(directory: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """Every figure a run folder supports, written to ``out`` (default ``directory/plots``); returns the paths.

    masks.png (weight masks, removed units and inputs marked), units.png (units kept per layer), scores.png
    (histograms of the pruning scores with the threshold), reliability.png (compressed against original),
    training.png (loss, KL, validation accuracy, fraction kept), filters-<layer>.png (the filters of the
    first four convolutions) and pixels.png (for a first Linear layer reading an image: the pixels still read), and, for
    Turbo-VBI runs, inclusion.png. Only safetensors and JSON are read; no network is rebuilt.
    """
    from bayescompress.io import read_json_record, read_safetensors

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a folder; give a run folder (compress --out, or one of a "
                                "comparison's <method>/seed<k>)")
    what = "not a complete bayescompress run folder"
    if not (directory / "masks.safetensors").is_file():  # say what the folder is instead, where it is one of ours
        if is_interrupted_run(directory):
            raise ValueError(f"{directory} holds a run that has not finished; finish it with `bayescompress "
                             f"compress --resume {shlex.quote(str(directory))}`, then plot it")
        if seeds := sorted(p.name for p in directory.glob("seed*") if is_run_folder(p)):
            raise ValueError(f"{directory} holds a comparison's runs of one method ({', '.join(seeds)}): plot one "
                             f"of them ({directory / seeds[0]}), or the comparison's folder for its Pareto figure")

    def optional(name: str, read):
        return read(directory / name, what) if (directory / name).is_file() else None

    # everything read before the first figure: a damaged file stops the command with nothing half-drawn
    run_masks = Masks.read(directory / "masks.safetensors", what)
    inclusion_probabilities = optional("inclusion.safetensors", read_safetensors) or {}
    metrics = read_json_record(directory / "metrics.json", what)
    scores = optional("scores.safetensors", read_safetensors)
    history = (optional("history.json", read_json_record) or {}).get("history", [])
    state = optional("trained.safetensors", read_safetensors)
    image_shape = _input_image_shape(directory)
    out = Path(out) if out is not None else directory / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def draw(name: str, make) -> None:
        plt.close(make(out / name))
        written.append(out / name)

    names = list(run_masks.weight)
    architecture = metrics.get("architecture", {})
    # the architecture's layers by name (runs before they were recorded: by position, if one mask per layer)
    layers = architecture.get("layers") or (names if architecture and len(names) == len(architecture["original"])
                                            else None)
    widths = dict(zip(layers, architecture["exported"])) if layers else {}
    draw("masks.png", lambda p: masks(run_masks, p, exported=widths or None))
    if architecture:
        original, exported = architecture["original"], architecture["exported"]
        draw("units.png", lambda p: units_kept(original, exported, layers, p))
    # every figure's panels in the network's order (a safetensors file gives its tensors sorted by name)
    scores = {name: scores[name] for name in [*names, *scores] if name in scores} if scores is not None else None
    inclusion_probabilities = {name: inclusion_probabilities[name] for name in [*names, *inclusion_probabilities]
                               if name in inclusion_probabilities}
    if scores is not None:
        label, log = _SCORE_LABELS.get(metrics.get("method"), ("SNR |mu| / sigma", True))
        draw("scores.png", lambda p: score_histograms(scores, run_masks, label, log, p))
    if metrics.get("reliability"):
        draw("reliability.png", lambda p: reliability_diagram(metrics["reliability"], p))
    if _training_panels(history):
        draw("training.png", lambda p: training_curves(history, p))
    if state is not None:
        kernels = {name: state.get(f"{name}.weight_orig", state.get(f"{name}.weight")) for name in names}
        convs = [name for name, k in kernels.items() if k is not None and k.dim() == 4 and k.shape[0] <= 128]
        for name in convs[:MAX_FILTER_FIGURES]:  # the first ones: a ResNet would give one per block
            draw(f"filters-{name}.png", lambda p, n=name: filters(kernels[n], run_masks.units.get(n), n, p,
                                                                  exported=widths.get(n)))
    first = run_masks.weight.get(names[0]) if names else None
    if image_shape and first is not None and first.dim() == 2 and first.shape[1] == math.prod(image_shape):
        draw("pixels.png", lambda p: kept_pixels(first, image_shape, names[0], p))
    if inclusion_probabilities:
        draw("inclusion.png", lambda p: inclusion(inclusion_probabilities, p))
    # a figure every run folder supports, left out because its file is gone: said, not silently missing
    missing = [f"{figure} ({why})" for figure, why, gone in (
        ("units.png", "metrics.json has no architecture", not architecture),
        ("scores.png", "no scores.safetensors", scores is None),
        ("reliability.png", "metrics.json has no reliability bins", not metrics.get("reliability")),
        ("training.png", "no history.json", not (directory / "history.json").is_file()),
        ("filters-<layer>.png", "no trained.safetensors", state is None and any(
            w.dim() == 4 for w in run_masks.weight.values())),
        ("inclusion.png", "no inclusion.safetensors", metrics.get("method") == "turbo-vbi"
         and not (directory / "inclusion.safetensors").is_file())) if gone]
    if missing:
        warnings.warn(f"{directory} lacks what these figures need, so they were not drawn: {'; '.join(missing)}",
                      stacklevel=2)
    return written


def _input_image_shape(directory: Path) -> tuple[int, ...] | None:
    """The shape of one input image from the run's probe inputs: (C, H, W), (H, W), or a flat square."""
    from bayescompress.io import read_safetensors

    if not (directory / "probe.safetensors").is_file():
        return None
    shape = tuple(read_safetensors(directory / "probe.safetensors", "a run folder")["input"].shape[1:])
    if len(shape) == 1:  # a flat square from 8x8 (digits) up; 4 or 16 tabular features are not an image
        side = math.isqrt(shape[0])
        return (side, side) if side * side == shape[0] and side >= 8 else None
    return shape if len(shape) in (2, 3) else None
