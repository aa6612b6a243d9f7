"""Pruning strategies: importance scores -> :class:`Masks` (SPEC section 5).

A strategy only decides what to keep; structure propagation and export are separate steps
(:mod:`bayescompress.pruning.structure`, :mod:`bayescompress.pruning.export`).
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Collection

import torch
from torch import Tensor, nn

from bayescompress._validation import check_choice, check_in_range
from bayescompress.nn.model import bayesian_layers
from bayescompress.pruning import importance
from bayescompress.pruning.masks import Masks, output_names, prunable_layers


def _check_fraction(value: float) -> None:
    check_in_range("keep_fraction", value, 0.0, 1.0, low_inclusive=False, high_inclusive=False)


def _top_fraction_threshold(scores: Tensor, keep_fraction: float) -> Tensor:
    """The score at or above which ``keep_fraction`` of the entries lie (at least one is kept)."""
    flat = scores.flatten()
    keep = max(1, round(keep_fraction * flat.numel()))
    return torch.kthvalue(flat, flat.numel() - keep + 1).values


def _global_keep(layers: list[tuple[str, nn.Module]], scores: list[Tensor], keep_fraction: float) -> list[Tensor]:
    """Keep masks of one ranking across the layers; a layer it would leave without a weight (its scores all
    below the others', e.g. a convolution a BatchNorm was folded into) keeps its own top ``keep_fraction``
    instead, with a warning: an emptied layer cuts the network, whatever the others keep."""
    cut = _top_fraction_threshold(torch.cat([s.flatten() for s in scores]), keep_fraction)
    keep = [s >= cut for s in scores]
    emptied = [i for i, k in enumerate(keep) if not k.any()]
    if emptied:
        warnings.warn(f"the ranking across layers keeps no weight of layer "
                      f"{', '.join(repr(layers[i][0]) for i in emptied)} "
                      f"(all its scores below the other layers'); each keeps its own top {keep_fraction} instead",
                      stacklevel=3)
        for i in emptied:  # exactly that many, ties or not
            flat = torch.zeros(scores[i].numel(), dtype=torch.bool, device=scores[i].device)
            flat[scores[i].flatten().topk(max(1, round(keep_fraction * flat.numel()))).indices] = True
            keep[i] = flat.view_as(scores[i])
    return keep


class PruningStrategy(abc.ABC):
    """Turns a trained network into keep masks. Subclasses implement :meth:`masks`.

    ``output_layer`` names the layer, or layers, whose units (the classes) are all kept; by default the last
    registered. Pass :func:`~bayescompress.nn.output_layers` of an example input for a model whose head is
    registered before its body or that has several heads.
    """

    @abc.abstractmethod
    def masks(self, model: nn.Module, output_layer: str | Collection[str] | None = None) -> Masks:
        """Weight and unit keep masks of every Linear/Conv2d layer of ``model``."""

    @staticmethod
    def _output(layers, output_layer: str | Collection[str] | None) -> frozenset[str]:
        # by default the layers conversion marked as outputs (bayesianize_ with an example input finds a head
        # registered before its body), else the last registered
        marked = [name for name, layer in layers if getattr(layer, "is_output", False)]
        return output_names(output_layer if output_layer is not None else marked or None,
                            [name for name, _ in layers])

    @staticmethod
    def _layers(model: nn.Module, bayesian: bool) -> list[tuple[str, nn.Module]]:
        if bayesian and not bayesian_layers(model):
            raise ValueError(
                f"{type(model).__name__} has no Bayesian layers to prune by posterior statistics; convert it "
                "with bayescompress.bayesianize_ and train it first (or use magnitude pruning)"
            )
        layers = bayesian_layers(model) if bayesian else prunable_layers(model)
        if not layers:
            raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to prune")
        return layers

    @staticmethod
    def _from_weight_masks(layers, weight_masks: list[Tensor], outputs: Collection[str]) -> Masks:
        """Units are kept while any incoming weight is; the output layers keep all their units."""
        units = {name: mask.flatten(1).any(dim=1) for (name, _), mask in zip(layers, weight_masks)}
        units.update({name: torch.ones_like(units[name]) for name in output_names(outputs, list(units))})
        return Masks({name: mask for (name, _), mask in zip(layers, weight_masks)}, units)

    @staticmethod
    def _from_unit_masks(layers, unit_masks: list[Tensor], outputs: Collection[str]) -> Masks:
        # the output layers keep every class
        outputs = output_names(outputs, [name for name, _ in layers])
        unit_masks = [torch.ones_like(u) if name in outputs else u for (name, _), u in zip(layers, unit_masks)]
        weight = {
            name: units.view(-1, *([1] * (layer.weight.dim() - 1))).expand_as(layer.weight).clone()
            for (name, layer), units in zip(layers, unit_masks)
        }
        return Masks(weight, {name: units for (name, _), units in zip(layers, unit_masks)})


class SNRPruning(PruningStrategy):
    """Self-compression by signal-to-noise ratio (Carannante et al. 2020).

    Parameters
    ----------
    threshold:
        Keep entries with SNR >= threshold. Give exactly one of ``threshold`` and ``keep_fraction``.
    keep_fraction:
        Keep this fraction (0, 1) of the entries with the highest SNR; at weight level the ranking is
        global across layers (SNR is scale-free), at unit level it is per layer.
    level:
        ``"weight"`` (|mu|/sigma per weight) or ``"unit"`` (||mu_j|| / sqrt(sum sigma_j^2) per neuron/filter).

    Example
    -------
    >>> from bayescompress.nn import bayesianize_
    >>> net = bayesianize_(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)))
    >>> masks = SNRPruning(keep_fraction=0.5).masks(net)
    >>> masks.kept_weights() == 20
    True
    """

    def __init__(self, threshold: float | None = None, keep_fraction: float | None = None, level: str = "weight"):
        if (threshold is None) == (keep_fraction is None):
            raise ValueError("give exactly one of threshold and keep_fraction")
        if threshold is not None:
            check_in_range("threshold", threshold, 0.0)
        if keep_fraction is not None:
            _check_fraction(keep_fraction)
        check_choice("level", level, ("weight", "unit"))
        self.threshold, self.keep_fraction, self.level = threshold, keep_fraction, level

    def masks(self, model: nn.Module, output_layer: str | Collection[str] | None = None) -> Masks:
        layers = self._layers(model, bayesian=True)
        outputs = self._output(layers, output_layer)
        if self.level == "unit":
            scores = [importance.unit_snr(layer) for _, layer in layers]
            cut = [self.threshold if self.threshold is not None else _top_fraction_threshold(s, self.keep_fraction)
                   for s in scores]
            return self._from_unit_masks(layers, [s >= c for s, c in zip(scores, cut)], outputs)
        scores = [importance.weight_snr(layer) for _, layer in layers]
        keep = ([s >= self.threshold for s in scores] if self.threshold is not None
                else _global_keep(layers, scores, self.keep_fraction))
        return self._from_weight_masks(layers, keep, outputs)


class MagnitudePruning(PruningStrategy):
    """Keep the ``keep_fraction`` largest |w|: the non-Bayesian baseline (Han et al. 2015).

    ``scope="layer"`` keeps that fraction of every layer; ``scope="global"`` ranks all weights together, so
    small layers whose weights are large (a first conv) keep more than large redundant ones. Works on plain and
    Bayesian networks (it reads the posterior mean).
    """

    def __init__(self, keep_fraction: float, scope: str = "layer"):
        _check_fraction(keep_fraction)
        check_choice("scope", scope, ("layer", "global"))
        self.keep_fraction, self.scope = keep_fraction, scope

    def masks(self, model: nn.Module, output_layer: str | Collection[str] | None = None) -> Masks:
        layers = self._layers(model, bayesian=False)
        scores = [importance.weight_magnitude(layer) for _, layer in layers]
        if self.scope == "global":
            keep = _global_keep(layers, scores, self.keep_fraction)
        else:
            keep = [s >= _top_fraction_threshold(s, self.keep_fraction) for s in scores]
        return self._from_weight_masks(layers, keep, self._output(layers, output_layer))


class InclusionPruning(PruningStrategy):
    """Drop what a sparsity prior says is probably off: inclusion probability < ``threshold``.

    Reads each layer's :class:`~bayescompress.priors.base.Inclusion` (``prior.inclusion(layer)``): per-unit
    probabilities where every layer's prior has them (e.g. spike-and-slab gates g_j), else per-weight ones
    (e.g. Turbo-VBI's pi~); per-input ones, where the inputs are gated, remove input features or channels too.
    A hidden layer left with no unit triggers a warning naming it; structure propagation then keeps the network
    valid.
    """

    def __init__(self, threshold: float = 0.5):
        check_in_range("threshold", threshold, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        self.threshold = threshold

    def masks(self, model: nn.Module, output_layer: str | Collection[str] | None = None) -> Masks:
        layers = self._layers(model, bayesian=True)
        outputs = self._output(layers, output_layer)
        summaries = [layer.prior.inclusion(layer) for _, layer in layers]
        if all(s.unit is not None for s in summaries):
            masks = self._from_unit_masks(layers, [s.unit >= self.threshold for s in summaries], outputs)
        else:
            probs = [importance.inclusion_probability(layer, "weight") for _, layer in layers]
            masks = self._from_weight_masks(layers, [p >= self.threshold for p in probs], outputs)
        for (name, layer), summary in zip(layers, summaries):
            if summary.input is not None:
                inputs = summary.input >= self.threshold
                inputs = inputs.to(masks.weight[name].device)  # the masks live on the CPU, the gates on the layer's
                masks.weight[name] &= inputs.view(1, -1, *([1] * (layer.weight.dim() - 2)))
        for name, _ in layers:
            if name not in outputs and not masks.weight[name].any():
                warnings.warn(
                    f"inclusion pruning removed every unit of hidden layer {name!r}: the network's output no "
                    "longer depends on its input there (its constant is kept); train with a larger "
                    "prior_inclusion, or a lower threshold",
                    stacklevel=2,
                )
        return masks


class KeepMasks(PruningStrategy):
    """The masks the layers already carry (``weight_mask``), unchanged: for a method that trains in a sparse
    subspace and ends with it (SSVI). A layer without a mask keeps every weight."""

    def masks(self, model: nn.Module, output_layer: str | Collection[str] | None = None) -> Masks:
        layers = self._layers(model, bayesian=False)
        weight = [getattr(layer, "weight_mask", torch.ones_like(layer.weight)).bool().clone() for _, layer in layers]
        return self._from_weight_masks(layers, weight, self._output(layers, output_layer))
