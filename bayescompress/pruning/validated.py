"""Single weights pruned inside the units a strategy kept, lowest posterior SNR first, across all layers.

Unit gates remove whole neurons, filters and inputs, but a surviving unit keeps every incoming weight, most of
which the posterior says carry little (a small |mu| / sigma). :func:`prune_within_units` ranks the surviving
weights by SNR across all layers and keeps the fewest whose posterior-mean validation accuracy stays within
``max_drop`` of the structured masks' own: the final threshold is chosen on validation data, not fixed.
:func:`keep_top_weights` cuts the same ranking to a given count (a compression budget's rounds).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence

import torch
from torch import Tensor, nn

from bayescompress._validation import check_in_range, check_non_negative_int
from bayescompress.metrics import evaluate
from bayescompress.nn.model import bayesian_layers
from bayescompress.pruning.importance import weight_snr
from bayescompress.pruning.masks import Masks, copy_network
from bayescompress.pruning.strategies import PruningStrategy, _top_fraction_threshold

# Fractions of the surviving weights tried, from mild to extreme; the scan stops at the first that fails.
KEEP_FRACTIONS = (0.7, 0.5, 0.35, 0.25, 0.18, 0.13, 0.09, 0.065, 0.045, 0.03, 0.02, 0.014, 0.01)


def masked_accuracy(network: nn.Module, masks: Masks, loader: Iterable, device: str = "cpu") -> float:
    """Posterior-mean accuracy of a copy of ``network`` under ``masks`` (the network itself is left alone)."""
    return _accuracy_under(copy_network(network), masks, loader, device)


def _accuracy_under(trial: nn.Module, masks: Masks, loader: Iterable, device: str) -> float:
    """Accuracy of ``trial`` with its masks replaced by ``masks``: one copy serves every candidate."""
    return float(evaluate(masks.apply_(trial, replace=True), loader, samples=0, device=device)["accuracy"])


@torch.no_grad()
def prune_within_units(
    network: nn.Module,
    masks: Masks,
    loader: Iterable,
    outputs: str | Collection[str],
    max_drop: float,
    device: str = "cpu",
    keep_fractions: Sequence[float] = KEEP_FRACTIONS,
    bisections: int = 4,
) -> tuple[Masks, dict]:
    """``masks`` with, in addition, the lowest-SNR weights of the surviving units removed: the smallest
    fraction of the weights ``masks`` keeps (ranked by |mu|/sigma across all Bayesian layers) whose
    posterior-mean accuracy on ``loader`` is at least that of ``masks`` minus ``max_drop``. ``keep_fractions``
    are tried from the largest down until one fails; then ``bisections`` steps of bisection (in log space)
    between the last that passed and the first that failed.

    Returns the masks and a record: ``accuracy_units`` (under ``masks``), ``accuracy`` (under the result),
    ``keep_fraction`` (1.0 when no fraction passed) and ``tried`` (each fraction tried, with its accuracy).
    ``outputs`` names the output layer, or layers, whose units are all kept.

    Example
    -------
    >>> masks, record = prune_within_units(net, InclusionPruning().masks(net), val, "fc3", 0.005)  # doctest: +SKIP
    """
    check_in_range("max_drop", max_drop, 0.0, 1.0)
    check_non_negative_int("bisections", bisections)
    layers, kept, scores, surviving = _ranked(network, masks, "prune_within_units")
    trial = copy_network(network)
    units_accuracy = _accuracy_under(trial, masks, loader, device)
    floor = units_accuracy - max_drop
    tried = []

    def attempt(fraction: float) -> tuple[Masks, float]:
        cut = _top_fraction_threshold(surviving, fraction)
        candidate = PruningStrategy._from_weight_masks(layers, [k & (s >= cut) for s, k in zip(scores, kept)],
                                                        outputs)
        accuracy = _accuracy_under(trial, candidate, loader, device)
        tried.append({"keep_fraction": fraction, "accuracy": accuracy})
        return candidate, accuracy

    best, best_fraction, best_accuracy, failed = masks, 1.0, units_accuracy, None
    for fraction in keep_fractions if surviving.numel() else ():
        candidate, accuracy = attempt(fraction)
        if accuracy < floor:
            failed = fraction
            break
        best, best_fraction, best_accuracy = candidate, fraction, accuracy
    # the grid is coarse (steps of about 1.4x): bisect, in log space, between the last fraction that passed
    # and the first that failed
    for _ in range(bisections if failed is not None else 0):
        fraction = math.sqrt(best_fraction * failed)
        candidate, accuracy = attempt(fraction)
        if accuracy < floor:
            failed = fraction
        else:
            best, best_fraction, best_accuracy = candidate, fraction, accuracy
    record = {"accuracy_units": units_accuracy, "accuracy": best_accuracy, "keep_fraction": best_fraction,
              "tried": tried}
    return best, record


def _ranked(network: nn.Module, masks: Masks,
            caller: str) -> tuple[list[tuple[str, nn.Module]], list[Tensor], list[Tensor], Tensor]:
    """(layers, kept masks, SNR scores zeroed where not kept, the kept entries' scores concatenated)."""
    layers = bayesian_layers(network)
    if {name for name, _ in layers} != set(masks.weight):
        raise ValueError(f"masks do not cover exactly the network's Bayesian layers: {caller} needs a fully "
                         "Bayesian network and its masks")
    kept = [masks.weight[name].to(layer.weight.device) for name, layer in layers]
    scores = [torch.where(keep, weight_snr(layer), 0.0) for (_, layer), keep in zip(layers, kept)]
    return layers, kept, scores, torch.cat([s[k] for s, k in zip(scores, kept)])


@torch.no_grad()
def keep_top_weights(network: nn.Module, masks: Masks, count: int, outputs: str | Collection[str]) -> Masks:
    """``masks`` cut to the ``count`` weights of highest SNR |mu| / sigma among those it keeps (across all
    Bayesian layers; ties at the cut are kept). Units left without a weight are removed, but the output layers'
    (``outputs``). ``masks`` are returned as they are when they keep ``count`` weights or fewer."""
    check_non_negative_int("count", count)
    layers, kept, scores, surviving = _ranked(network, masks, "keep_top_weights")
    if surviving.numel() <= count:
        return masks
    cut = _top_fraction_threshold(surviving, count / surviving.numel())
    return PruningStrategy._from_weight_masks(layers, [k & (s >= cut) for s, k in zip(scores, kept)], outputs)


__all__ = ["KEEP_FRACTIONS", "keep_top_weights", "masked_accuracy", "prune_within_units"]
