"""Whole units removed to a compute budget, the least important per multiply-accumulate first.

The ELBO prices parameters, not operations: a conv1 filter of LeNet-5 is 26 parameters but 14.4k MACs, plus
the 80k MACs of the conv2 weights that read it, so the priors keep exactly the units that cost most of the
compute. Here every unit (a neuron or filter of a layer other than the output, and an input feature or channel
of the first layer) is scored by how much the loss would change without it -- the first-order Taylor estimate
``sum over positions of a * dL/da``, squared per example and summed (Molchanov et al. 2019), at the posterior
mean -- and divided by the MACs its removal saves in the exported network. :func:`remove_units_to_macs` takes
the cheapest to lose out first until the export fits the budget.

Only sequential networks (the built-in export's chains) have a cost model here; the training between removal
rounds lives with the methods (``target_macs``, :mod:`bayescompress.methods.base`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayescompress.metrics import output_positions
from bayescompress.pruning.masks import Masks
from bayescompress.pruning.structure import chain_output_shapes, sequential_chain

INPUTS = "inputs"  # the key of the first layer's input features in importance and removal records


@dataclass
class ChainCosts:
    """Dense MACs of a sequential network's export as a function of how many units each layer keeps.

    Layer ``i`` costs ``positions[i] * pairs[i] * in_i * units_i``: ``in_0`` is the first layer's input features
    (channels), ``in_i`` the previous layer's units, and ``pairs[i]`` the weights between one input unit and one
    output unit (a kernel's area, or a producer channel's positions after a flatten, else 1).
    """

    names: list[str]
    positions: list[int]
    pairs: list[int]

    def __post_init__(self) -> None:
        self._per_pair = torch.tensor(self.positions) * torch.tensor(self.pairs)  # MACs per (input, output) unit

    @classmethod
    def of(cls, model: nn.Module, example: Tensor) -> ChainCosts:
        """The cost model of ``model`` (raises :class:`~bayescompress.pruning.UnsupportedGraphError` for a
        network the built-in export cannot read as a chain)."""
        chain = sequential_chain(model)
        shapes = chain_output_shapes(model, chain, example)
        positions = [output_positions(layer, shapes[name]) for name, layer in zip(chain.names, chain.layers)]
        pairs = [chain.layers[0].weight[0, 0].numel()]
        pairs += [layer.weight[0].numel() // previous.weight.shape[0]
                  for previous, layer in zip(chain.layers, chain.layers[1:])]
        return cls(list(chain.names), positions, pairs)

    def counts(self, masks: Masks) -> tuple[Tensor, int]:
        """Units each layer keeps under ``masks`` (rows with a kept weight), and inputs the first layer reads."""
        units = torch.stack([_kept_rows(masks.weight[name]).sum() for name in self.names])
        return units, int(_read_columns(masks.weight[self.names[0]]).sum())

    def masks_macs(self, masks: Masks) -> int:
        """Dense MACs per example of the export of ``masks``."""
        return self.macs(*self.counts(masks))

    def macs(self, units: Tensor, inputs: int) -> int:
        """Dense MACs per example when layer ``i`` keeps ``units[i]`` units and the first layer reads ``inputs``."""
        reads = torch.cat([torch.tensor([inputs]), units[:-1]])
        return int((self._per_pair * reads * units).sum())

    def saved(self, units: Tensor, inputs: int) -> tuple[Tensor, int]:
        """MACs saved by removing one unit of each layer (the output layer's entry is meaningless) and by
        removing one input feature of the first layer."""
        cost = self._per_pair
        reads = torch.cat([torch.tensor([inputs]), units[:-1]])
        read_by_next = torch.cat([cost[1:] * units[1:], torch.zeros(1, dtype=cost.dtype)])
        return cost * reads + read_by_next, int(cost[0] * units[0])


def _kept_rows(mask: Tensor) -> Tensor:
    """Output units with a kept weight."""
    return mask.flatten(1).any(dim=1)


def _read_columns(mask: Tensor) -> Tensor:
    """Input features (channels) with a kept weight."""
    return mask.transpose(0, 1).flatten(1).any(dim=1)


def taylor_importance(model: nn.Module, names: list[str], loader: Iterable, batches: int = 5,
                      device: str = "cpu") -> tuple[dict[str, Tensor], Tensor]:
    """Per unit of each layer in ``names`` (and, under :data:`INPUTS`, per input feature or channel of the
    first), the summed squared first-order estimate of the change in the loss (cross-entropy of the outputs)
    if it were removed, over the first ``batches`` batches of ``loader``, at the posterior mean (eval mode).

    A unit is removed by zeroing its output. An input is replaced by its mean, which
    :func:`fold_input_means_` moves into the first layer's bias (a constant pixel then costs nothing to
    remove), so its estimate is that of ``x - mean``. Returns the scores and the inputs' means (per feature or
    channel; zeros when the first layer has no bias to fold them into)."""
    modules = dict(model.named_modules())
    outputs: dict[str, Tensor] = {}

    def keep_output(name: str, output: Tensor) -> None:
        output.retain_grad()
        outputs[name] = output

    def first_input(_module, inputs):  # a leaf, so its gradient is kept
        outputs[INPUTS] = inputs[0].detach().requires_grad_()
        return (outputs[INPUTS], *inputs[1:])

    hooks = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: keep_output(name, out))
             for name in names]
    hooks.append(modules[names[0]].register_forward_pre_hook(first_input))
    was_training = model.training
    model.eval()
    scores: dict[str, Tensor] = {}
    # per example a = sum_pos x g and b = sum_pos g, so sum_n (a - mean b)^2 is accumulated as three sums
    sums = dict.fromkeys(("aa", "ab", "bb", "x"), 0)
    count = 0
    try:
        for index, (x, y) in enumerate(loader):
            if index == batches:
                break
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum").backward()
            for name in names:
                change = _per_channel(outputs[name] * outputs[name].grad)
                scores[name] = scores.get(name, 0) + change.pow(2).sum(0).detach()
            inputs = outputs[INPUTS]
            a, b = _per_channel(inputs * inputs.grad), _per_channel(inputs.grad)
            sums = {"aa": sums["aa"] + a.pow(2).sum(0), "ab": sums["ab"] + (a * b).sum(0),
                    "bb": sums["bb"] + b.pow(2).sum(0), "x": sums["x"] + _per_channel(inputs.detach()).sum(0)}
            count += inputs[:, :1].numel()  # examples times positions
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
        for hook in hooks:
            hook.remove()
    mean = sums["x"] / count if modules[names[0]].bias is not None else torch.zeros_like(sums["x"])
    scores[INPUTS] = (sums["aa"] - 2 * mean * sums["ab"] + mean.pow(2) * sums["bb"]).clamp_min(0.0)
    return scores, mean


def _per_channel(t: Tensor) -> Tensor:
    """(examples, channels): summed over the positions of an image-shaped tensor."""
    return t.flatten(2).sum(2) if t.dim() > 2 else t


@torch.no_grad()
def fold_input_means_(layer: nn.Module, removed: Tensor, mean: Tensor) -> None:
    """Add what the ``removed`` inputs contribute at their ``mean`` to ``layer``'s bias, so removing their
    columns changes the layer's output only by ``x - mean`` (exact for a linear layer; for a convolution,
    away from zero padding)."""
    if layer.bias is None or not removed.any():
        return
    weight = layer.weight.detach()[:, removed]  # the current (masked) weights: what the inputs contribute now
    layer.bias.add_((weight.flatten(2).sum(2) if weight.dim() > 2 else weight) @ mean[removed].to(weight))


@torch.no_grad()
def remove_units_to_macs(masks: Masks, costs: ChainCosts, importance: dict[str, Tensor], target_macs: int
                         ) -> tuple[Masks, dict[str, Tensor]]:
    """``masks`` with whole units (rows, and the next layer's columns reading them) and input features (the first
    layer's columns) removed, lowest ``importance`` per MAC saved first, until the export needs at most
    ``target_macs`` (or every layer is down to one unit and the first layer to one input).

    Returns the masks and, per layer and under :data:`INPUTS`, which entries this call removed.
    """
    names, first = costs.names, costs.names[0]
    weight = {name: masks.weight[name].clone() for name in names}
    alive = {name: _kept_rows(weight[name]) for name in names}
    alive[INPUTS] = _read_columns(weight[first])
    removed = {name: torch.zeros_like(keep) for name, keep in alive.items()}
    candidates = [*names[:-1], INPUTS]  # the output layer keeps every class
    # Within a group the order never changes (what one unit saves depends only on the counts), so each group is
    # sorted once and the greedy step only compares the groups' heads: one step per removed unit, not per weight.
    order = {name: torch.argsort(torch.where(alive[name], importance[name].cpu(), torch.inf)).tolist()
             for name in candidates}
    head = dict.fromkeys(candidates, 0)
    while True:
        units = torch.stack([alive[name].sum() for name in names])
        inputs = int(alive[INPUTS].sum())
        if costs.macs(units, inputs) <= target_macs:
            break
        saved_units, saved_input = costs.saved(units, inputs)
        saved = dict(zip(names, saved_units.tolist())) | {INPUTS: saved_input}
        best, best_value = None, torch.inf
        for name in candidates:
            if int(alive[name].sum()) <= 1:
                continue
            value = float(importance[name][order[name][head[name]]]) / max(saved[name], 1)
            if value < best_value:
                best, best_value = name, value
        if best is None:
            break
        index = order[best][head[best]]
        head[best] += 1
        alive[best][index], removed[best][index] = False, True
        if best == INPUTS:
            weight[first][:, index] = False
        else:
            weight[best][index] = False
            consumer = names[names.index(best) + 1]
            per_unit = weight[consumer].shape[1] // alive[best].numel()
            weight[consumer][:, index * per_unit:(index + 1) * per_unit] = False
    units = {name: masks.units.get(name, torch.ones_like(alive[name])) & alive[name] for name in names}
    return Masks(weight, units), removed


def fill_kept_units(masks: Masks, costs: ChainCosts) -> Masks:
    """``masks`` with every weight between kept units (and the first layer's kept inputs) kept: the dense
    export pays for them anyway, so under a compute budget a weight pruned inside a kept unit only costs
    accuracy."""
    names = costs.names
    rows = {name: _kept_rows(masks.weight[name]) for name in names}
    weight = {}
    for i, name in enumerate(names):
        shape = masks.weight[name].shape
        if i == 0:
            columns = _read_columns(masks.weight[name])
        else:
            columns = rows[names[i - 1]].repeat_interleave(shape[1] // rows[names[i - 1]].numel())
        pairs = rows[name][:, None] & columns[None, :]
        weight[name] = pairs.view(*pairs.shape, *([1] * (len(shape) - 2))).expand(shape).clone()
    return Masks(weight, masks.units)


__all__ = ["INPUTS", "ChainCosts", "fill_kept_units", "fold_input_means_", "remove_units_to_macs",
           "taylor_importance"]
