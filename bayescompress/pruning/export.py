"""Export: a physically smaller network that computes what the masked posterior-mean network computes.

Two modes: ``bayesian=False`` gives plain ``nn.Linear``/``nn.Conv2d`` layers at the posterior mean;
``bayesian=True`` gives smaller Bayesian layers that keep sigma (and the prior) for MC prediction, with the
weights still pruned inside kept units held by ``torch.nn.utils.prune`` masks.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
import torch.nn.utils.prune as prune
from torch import Tensor, nn

from bayescompress.nn.layers import BayesConv2d, BayesianLayer, BayesLinear, user_hooks
from bayescompress.pruning.masks import Masks, copy_network, current_weight
from bayescompress.pruning.structure import (
    GRAPH_EXPORT_HINT,
    SelectInputs,
    Structure,
    UnsupportedGraphError,
    propagate,
    sequential_chain,
)

# rho of a bias that only carries folded constants: sigma = softplus(-14) ~ 8e-7
DETERMINISTIC_RHO = -14.0
# Largest |logit difference| between an export and the masked network that counts as the same function.
EXPORT_TOLERANCE = 1e-4


@torch.no_grad()
def largest_difference(a: nn.Module, b: nn.Module, inputs: Iterable[Tensor]) -> float:
    """The largest |a(x) - b(x)| over ``inputs`` (0 for none): how far an export is from the network it copies.
    An output that is NaN or infinite in one network and not the same in the other counts as infinitely far (a
    NaN would pass any comparison with the tolerance)."""
    return max((output_difference(a(x), b(x)) for x in inputs), default=0.0)


def output_difference(ya: Tensor, yb: Tensor) -> float:
    """The largest |ya - yb|, a non-finite entry where the other has another value counting as infinite."""
    same = (ya == yb) | (ya.isnan() & yb.isnan())
    return float(torch.where(same, 0.0, (ya - yb).abs()).nan_to_num(nan=float("inf"), posinf=float("inf")).max())


@torch.no_grad()
def checked_sequential_export(network: nn.Module, masks: Masks, example: Tensor,
                              inputs: Iterable[Tensor]) -> tuple[nn.Module, nn.Module, Structure]:
    """The built-in export of the eval-mode sequential ``network`` under ``masks``, checked: returns a copy of
    ``network`` with the weights of units nothing reads dropped too, its export and its structure. Raises
    :class:`UnsupportedGraphError` for a network the built-in export does not handle, and (with a warning) for
    one whose export does not compute the masked ``network`` on ``inputs``: the graph export takes over there.
    ``network`` itself is left as it is, so the caller's masks still describe it."""
    structure = propagate(network, masks, example)
    pruned = structure.masks.apply_(copy_network(network), replace=True)
    exported = export_sequential(pruned, structure).eval()
    try:
        difference = largest_difference(exported, network, inputs)
    except RuntimeError as error:  # the smaller network does not even run (a shape the user's code assumes)
        warnings.warn(f"the sequential export fails where the masked network runs ({error}); exporting through "
                      "Torch-Pruning's dependency graph instead", stacklevel=3)
        raise UnsupportedGraphError(f"the sequential export fails: {error}") from None
    if difference > EXPORT_TOLERANCE:
        warnings.warn(f"the sequential export differs from the masked network by {difference:.3g}; exporting "
                      "through Torch-Pruning's dependency graph instead", stacklevel=3)
        raise UnsupportedGraphError(f"the sequential export differs by {difference:.3g}")
    return pruned, exported, structure


def plain_layer_like(layer: nn.Module, n_in: int, n_out: int, bayesian: bool, groups: int = 1,
                     bias: bool | None = None) -> nn.Module:
    """A fresh layer like ``layer`` with ``n_in`` inputs and ``n_out`` outputs (the only linear/conv split);
    ``bias`` overrides whether it has a bias (default: as ``layer``)."""
    has_bias = layer.bias is not None if bias is None else bias
    if isinstance(layer, nn.Conv2d):
        cls = BayesConv2d if bayesian else nn.Conv2d
        fresh = cls(n_in, n_out, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                    dilation=layer.dilation, groups=groups, bias=has_bias, padding_mode=layer.padding_mode)
    else:
        fresh = (BayesLinear if bayesian else nn.Linear)(n_in, n_out, bias=has_bias)
    return _with_hooks_of(layer, fresh)


def _with_hooks_of(layer: nn.Module, fresh: nn.Module) -> nn.Module:
    """``fresh`` with the forward (pre-)hooks a user registered on ``layer``: they are part of the function the
    export must compute (an input scaling, say)."""
    for table, hooks in user_hooks(layer).items():
        getattr(fresh, table).update(hooks)
    return fresh


def _columns(layer: nn.Module, previous_units: Tensor | None, keep: Tensor) -> Tensor:
    """Index of the kept entries of dim 1 of ``layer``'s weight, given the previous layer's unit mask (for the
    first layer, whose inputs no unit mask covers: the columns ``keep`` still reads)."""
    n_in = layer.weight.shape[1]
    if previous_units is None:
        read = keep.transpose(0, 1).flatten(1).any(dim=1)
        return torch.nonzero(read).flatten() if read.any() else torch.arange(1)  # a layer needs an input
    per_unit = n_in // previous_units.numel()  # spatial positions of one channel after a flatten, else 1
    return torch.nonzero(previous_units.repeat_interleave(per_unit)).flatten()


@torch.no_grad()
def export_sequential(model: nn.Module, structure: Structure, bayesian: bool = False) -> nn.Sequential:
    """Build the smaller network of a sequential ``model`` from :func:`propagate`'s ``structure``.

    The result is a flat ``nn.Sequential`` of the same operations; it has no prune buffers unless
    ``bayesian=True`` and weights were pruned inside kept units.

    Example
    -------
    >>> from bayescompress.pruning import MagnitudePruning, propagate
    >>> net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> s = propagate(net, MagnitudePruning(0.3).masks(net), torch.randn(1, 6))
    >>> isinstance(export_sequential(net, s), nn.Sequential)
    True
    """
    try:
        chain = sequential_chain(model)
    except UnsupportedGraphError as error:
        raise UnsupportedGraphError(f"{error}; {GRAPH_EXPORT_HINT}") from None
    if bayesian and not all(isinstance(layer, BayesianLayer) for layer in chain.layers):
        raise ValueError("a Bayesian export needs every Linear/Conv2d layer to be Bayesian; use bayesian=False")
    modules: list[nn.Module] = [copy.deepcopy(m) for m in chain.prefix]
    previous_units = None
    for name, layer, after in zip(chain.names, chain.layers, chain.after):
        units = structure.masks.units[name].to(layer.weight.device)
        rows = torch.nonzero(units).flatten()
        keep = structure.masks.weight[name].to(layer.weight.device)
        cols = _columns(layer, previous_units, keep)
        if previous_units is None and cols.numel() < layer.weight.shape[1]:
            # a linear layer reads the last dim, a conv its channels
            modules.append(SelectInputs(cols, 1 if isinstance(layer, nn.Conv2d) else -1).to(layer.weight.device))
        # cols index input features of a linear layer and input channels of a conv alike (dim 1 of weight)
        keep = keep[rows][:, cols]
        correction = structure.bias_correction[name].to(layer.weight.device)
        # a folded constant needs a bias even where the layer had none
        new = plain_layer_like(layer, int(cols.numel()), int(rows.numel()), bayesian,
                               bias=layer.bias is not None or bool(correction.ne(0).any()))
        new.weight.copy_(current_weight(layer)[rows][:, cols] * keep)
        if new.bias is not None:
            bias = correction if layer.bias is None else layer.bias.detach() + correction
            new.bias.copy_(bias[rows])
        if bayesian:
            new.weight_rho.copy_(layer.weight_rho.detach()[rows][:, cols])
            if layer.bias is not None:
                new.bias_rho.copy_(layer.bias_rho.detach()[rows])
            elif new.bias is not None:  # the folded constant is exact: (almost) no posterior spread
                new.bias_rho.fill_(DETERMINISTIC_RHO)
            new.prior = copy.deepcopy(layer.prior)
            if not bool(keep.all()):
                prune.custom_from_mask(new, "weight", keep.to(new.weight.device, new.weight.dtype))  # both on CPU yet
        modules.append(new.to(layer.weight.device))
        modules.extend(copy.deepcopy(m) for m in after)
        previous_units = units
    return nn.Sequential(*modules)

