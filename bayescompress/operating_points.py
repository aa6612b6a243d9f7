"""Operating points without retraining: re-prune a run's trained posterior at other budgets.

A run keeps the network's state as the pruning found it (``CompressionResult.before_pruning``, a run folder's
``trained.safetensors``). :func:`operating_points` ranks every weight of it by the method's own posterior
score (:func:`~bayescompress.pruning.importance.sweep_scores`), keeps the top fraction for each budget, propagates the structure, exports the
smaller network and measures it, with no fine-tuning: the curve a method's posterior supports, to be compared
across methods at equal compression or equal exported MACs (``bayescompress.plot.pareto``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from bayescompress import methods
from bayescompress.compress import TrainedRun
from bayescompress.io import read_json_record, read_safetensors
from bayescompress.methods.base import TrainingContext, load_trained_state_
from bayescompress.metrics import dense_macs, evaluate
from bayescompress.nn import output_layers
from bayescompress.nn.model import fold_multipliers_
from bayescompress.pruning import Masks, UnsupportedGraphError, export_with_torch_pruning, prunable_layers
from bayescompress.pruning.batchnorm import fold_batchnorm_
from bayescompress.pruning.export import checked_sequential_export
from bayescompress.pruning.importance import sweep_scores
from bayescompress.pruning.masks import copy_network
from bayescompress.pruning.strategies import PruningStrategy, _top_fraction_threshold
from bayescompress.runs import CompressionResult, SavedRun, build_original, read_masks, units_per_layer

# fractions of the weights kept, from mild to extreme
DEFAULT_KEEP_FRACTIONS = (0.5, 0.3, 0.2, 0.14, 0.1, 0.07, 0.05, 0.035, 0.025, 0.018, 0.013, 0.009, 0.006, 0.004)


def operating_points(
    run: CompressionResult | SavedRun | str | os.PathLike,
    loader: Iterable,
    keep_fractions: Sequence[float] = DEFAULT_KEEP_FRACTIONS,
    *,
    model: nn.Module | None = None,
    device: str = "cpu",
    own: bool = False,
) -> list[dict]:
    """Re-prune ``run`` (a result, a run folder, or one read back with ``bayescompress.load``) at each of
    ``keep_fractions`` and measure each point on
    ``loader``: one dict per point with ``keep_fraction``, ``compression`` (|W| / |W != 0| after structure
    propagation), ``accuracy``, ``error``, ``nll``, ``ece`` (the exported network, posterior mean),
    ``exported_macs`` and ``units``, and ``emptied_layers`` where the ranking across layers keeps no weight of a
    layer (a cut network, warned about). Budgets that keep the same weights (those above an SSVI run's density:
    weights outside its subspace are never kept) give one point, labelled with the smallest of them.
    ``model`` is the original architecture, needed only for a run saved from
    Python whose network is not a reference model or a factory. ``own`` appends the point of the run's own
    masks (``"own": True``), re-measured without fine-tuning: for a method without fine-tuning it is the run
    itself; for the others, the gap to the run is what the fine-tuning bought.

    Example
    -------
    >>> points = operating_points("runs/lenet300-turbo", test_loader)             # doctest: +SKIP
    >>> [(round(p["compression"]), p["error"]) for p in points]                 # doctest: +SKIP
    """
    for fraction in keep_fractions:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"keep_fractions must lie in (0, 1]; got {fraction!r}")
    if isinstance(run, SavedRun):  # its trained network and scores are files of its folder
        run = run.folder
    network, example = trained_network(run, model)
    run_masks = run.masks if isinstance(run, CompressionResult) else read_masks(run)[0]
    network = network.to(device).eval()
    example = example.to(device)
    outputs = output_layers(network, example)
    layers = prunable_layers(network)
    scores = {name: sweep_scores(layer).cpu() for name, layer in layers}
    fold_multipliers_(network)  # gates and scales into the weights: the export reads ordinary layers
    total = sum(s.numel() for s in scores.values())
    everything = torch.cat([s.flatten() for s in scores.values()])
    points, previous = [], None
    for fraction in keep_fractions:
        cut = _top_fraction_threshold(everything, fraction)
        # a zero score (a weight outside a subspace, or at exactly 0) is never kept: it adds nothing
        keep = [(s >= cut) & (s > 0) for s in scores.values()]
        count = sum(int(k.sum()) for k in keep)
        if count == previous and points:  # the posterior has no more weights to give: the same point again
            points[-1]["keep_fraction"] = fraction
            continue
        previous = count
        masks = PruningStrategy._from_weight_masks(layers, keep, outputs)
        point = _measure(network, masks, example, outputs, loader, device, total) | {"keep_fraction": fraction}
        emptied = [name for name, layer_keep in zip(scores, keep) if not layer_keep.any()]
        if emptied:  # measured as it is (the curve's end), but said: such a point is a cut network
            point["emptied_layers"] = emptied
        points.append(point)
    if cut_off := [p for p in points if "emptied_layers" in p]:
        warnings.warn("the ranking across layers keeps no weight of a layer at "
                      + "; ".join(f"keep fraction {p['keep_fraction']}: {', '.join(p['emptied_layers'])}"
                                  for p in cut_off)
                      + ": those points measure a cut network (their error is about chance), marked "
                      "'emptied_layers'", stacklevel=2)
    if own:
        point = _measure(network, run_masks, example, outputs, loader, device, total)
        points.append(point | {"keep_fraction": run_masks.kept_weights() / total, "own": True})
    return points


def _measure(network, masks: Masks, example, outputs, loader, device, total: int) -> dict:
    exported, kept_masks = _export(copy_network(network), masks, example, outputs)
    metrics = evaluate(exported.to(device), loader, samples=0, device=device)
    return {"compression": total / max(kept_masks.kept_weights(), 1), "accuracy": metrics["accuracy"],
            "error": 1.0 - metrics["accuracy"], "nll": metrics["nll"], "ece": metrics["ece"],
            "exported_macs": dense_macs(exported, example), "units": units_per_layer(exported)}


def trained_network(run: CompressionResult | str | os.PathLike, model: nn.Module | None = None
                    ) -> tuple[nn.Module, Tensor]:
    """The trained network of ``run`` as the pruning found it, and an example input."""
    if isinstance(run, CompressionResult):
        source = {"kind": "caller"}
        architecture = {"source": source, "batchnorm_folded": [list(p) for p in run.export_record.batchnorm_folded]}
        example = run.export_record.probe[:1]
        model = run.original
    else:
        directory = Path(run)
        what = "not a run folder with a trained posterior (runs written before operating points had none)"
        architecture = read_json_record(directory / "architecture.json", what)
        if "source" not in architecture:
            raise ValueError(f"{directory / 'architecture.json'} does not say how to build the original network: "
                             "the run predates operating points; compress again")
        example = read_safetensors(directory / "probe.safetensors", what)["input"][:1]
    trained = TrainedRun.read(run)
    network = build_original(architecture["source"], model).cpu().eval()
    fold_batchnorm_(network, [tuple(pair) for pair in architecture["batchnorm_folded"]])
    config = trained.saved_config()
    methods.get(trained.method)(config=config).prepare(network, config, TrainingContext(
        (), (), example, tuple(output_layers(network, example))))
    load_trained_state_(network, trained.state)
    return network.eval(), example


def _export(network: nn.Module, masks: Masks, example: Tensor, outputs: list[str]) -> tuple[nn.Module, Masks]:
    masks.apply_(network, replace=True)
    try:
        _, exported, structure = checked_sequential_export(network, masks, example, [example])
        return exported, structure.masks
    except UnsupportedGraphError:
        exported, _ = export_with_torch_pruning(network, masks, example, output_layer=outputs)
        return exported.eval(), masks


__all__ = ["DEFAULT_KEEP_FRACTIONS", "operating_points", "trained_network"]
