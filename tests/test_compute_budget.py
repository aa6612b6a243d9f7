"""Units removed to a compute budget: the cost model against the export's own MAC count, the Taylor importance
against per-example gradients of explicit unit masks, and the greedy order by importance per MAC."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayescompress.metrics import dense_macs
from bayescompress.models import lenet5, mlp
from bayescompress.nn import bayesianize_
from bayescompress.pruning import Masks, UnsupportedGraphError, export_sequential, propagate
from bayescompress.pruning.compute import (
    INPUTS,
    ChainCosts,
    fill_kept_units,
    fold_input_means_,
    remove_units_to_macs,
    taylor_importance,
)

NAMES = {"mlp": ["1", "3", "5"], "lenet5": ["0", "3", "7", "9"]}


def _network(kind):
    torch.manual_seed(0)
    net = mlp(20, (12, 9), 4) if kind == "mlp" else lenet5()
    example = torch.randn(2, 1, 4, 5) if kind == "mlp" else torch.randn(2, 1, 28, 28)
    return net.eval(), example


def _random_unit_masks(net, names, generator):
    """Masks that drop random rows of every layer but the output, random first-layer inputs, and the next
    layer's columns reading a dropped unit."""
    layers = dict(net.named_modules())
    weight = {name: torch.ones_like(layers[name].weight, dtype=torch.bool) for name in names}
    for i, name in enumerate(names[:-1]):
        rows = torch.rand(weight[name].shape[0], generator=generator) < 0.4
        rows[0] = False  # keep one
        weight[name][rows] = False
        per_unit = weight[names[i + 1]].shape[1] // rows.numel()
        weight[names[i + 1]][:, rows.repeat_interleave(per_unit)] = False
    if weight[names[0]].shape[1] > 1:
        weight[names[0]][:, torch.rand(weight[names[0]].shape[1], generator=generator) < 0.3] = False
    return Masks(weight)


def _exported_macs(net, masks, example):
    masked = masks.apply_(copy.deepcopy(net))
    structure = propagate(masked, masks, example)
    return dense_macs(export_sequential(structure.masks.apply_(masked), structure), example[:1])


def _counts(masks, names):
    """Units per layer and inputs read, counted here rather than by the code under test."""
    units = torch.tensor([int(masks.weight[name].flatten(1).any(dim=1).sum()) for name in names])
    first = masks.weight[names[0]]
    return units, int(first.any(dim=0).reshape(first.shape[1], -1).any(dim=1).sum())


@pytest.mark.parametrize("kind", ["mlp", "lenet5"])
def test_cost_model_counts_the_exported_networks_macs(kind):
    net, example = _network(kind)
    costs = ChainCosts.of(net, example)
    assert costs.names == NAMES[kind]
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        masks = _random_unit_masks(net, costs.names, generator)
        assert costs.macs(*_counts(masks, costs.names)) == _exported_macs(net, masks, example)
        assert costs.counts(masks)[0].tolist() == _counts(masks, costs.names)[0].tolist()
        assert costs.masks_macs(masks) == _exported_macs(net, masks, example)
    full = torch.tensor([net.get_submodule(name).weight.shape[0] for name in costs.names])
    assert costs.macs(full, net.get_submodule(costs.names[0]).weight.shape[1]) == dense_macs(net, example[:1])


def test_cost_model_counts_a_linear_layer_once_per_token():
    net = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    example = torch.randn(1, 9, 7)  # 9 tokens of 7 features
    costs = ChainCosts.of(net, example)
    assert costs.macs(torch.tensor([5, 3]), 7) == dense_macs(net, example) == 9 * (7 * 5 + 5 * 3)


@pytest.mark.parametrize("kind", ["mlp", "lenet5"])
def test_savings_are_the_macs_one_removal_takes_off(kind):
    net, example = _network(kind)
    costs = ChainCosts.of(net, example)
    units = torch.tensor([net.get_submodule(name).weight.shape[0] for name in costs.names]) - 1
    inputs = net.get_submodule(costs.names[0]).weight.shape[1]
    saved, saved_input = costs.saved(units, inputs)
    for i in range(len(units) - 1):
        fewer = units.clone()
        fewer[i] -= 1
        assert int(saved[i]) == costs.macs(units, inputs) - costs.macs(fewer, inputs)
    assert saved_input == costs.macs(units, inputs) - costs.macs(units, inputs - 1)


class _UnitGates(nn.Module):
    """Moves a layer's output units from ``centre`` towards their value by m (ones): d loss_n / d m_j is the
    Taylor term of replacing unit j by ``centre`` (0 for units, the mean for inputs)."""

    def __init__(self, units, centre=None):
        super().__init__()
        self.m = nn.Parameter(torch.ones(units))
        self.centre = torch.zeros(units) if centre is None else centre

    def forward(self, x):
        shape = (1, -1, *([1] * (x.dim() - 2)))
        return self.centre.view(shape) + (x - self.centre.view(shape)) * self.m.view(shape)


def test_taylor_importance_is_the_squared_per_example_derivative_by_an_explicit_unit_mask():
    torch.manual_seed(0)
    net = bayesianize_(nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 5),
                                     nn.ReLU(), nn.Linear(5, 4))).eval()
    x, y = torch.randn(6, 2, 6, 6), torch.randint(0, 4, (6,))
    importance, mean = taylor_importance(net, ["0", "3", "5"], [(x[:3], y[:3]), (x[3:], y[3:])], batches=2)
    assert not any(p.grad is not None for p in net.parameters())  # the network is left clean
    assert torch.allclose(mean, x.mean(dim=(0, 2, 3)), atol=1e-6)
    # reference: gates on the first layer's input channels (around their mean) and the hidden layers' outputs
    gated = nn.Sequential(_UnitGates(2, mean), net[0], _UnitGates(3), *net[1:4], _UnitGates(5), *net[4:])
    expected = {INPUTS: torch.zeros(2), "0": torch.zeros(3), "3": torch.zeros(5)}
    for n in range(6):
        gated.zero_grad()
        F.cross_entropy(gated(x[n:n + 1]), y[n:n + 1], reduction="sum").backward()
        for key, gate in zip((INPUTS, "0", "3"), (gated[0], gated[2], gated[6])):
            expected[key] += gate.m.grad.pow(2)
    assert set(importance) == {INPUTS, "0", "3", "5"}
    for key, value in expected.items():
        assert torch.allclose(importance[key], value, rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize("layer, shape", [(nn.Linear(5, 3), (7, 5)), (nn.Conv2d(4, 3, 3), (7, 4, 6, 6))],
                         ids=["linear", "conv"])
def test_a_constant_input_removed_with_its_mean_folded_into_the_bias_changes_nothing(layer, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    x[:, 1] = 0.7  # a constant feature / channel, like an MNIST border pixel
    removed = torch.zeros(shape[1], dtype=torch.bool)
    removed[1] = True
    expected = layer(x)
    importance, mean = taylor_importance(nn.Sequential(layer, nn.Flatten(), nn.LazyLinear(2)), ["0"],
                                         [(x, torch.randint(0, 2, (len(x),)))], batches=1)
    assert importance[INPUTS][1] <= 1e-6 * importance[INPUTS].max()  # nothing to lose
    fold_input_means_(layer, removed, mean)
    with torch.no_grad():
        layer.weight[:, 1] = 0.0
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_removal_takes_the_lowest_importance_per_mac_first_and_stops_at_the_budget():
    net, example = _network("mlp")  # 20 inputs -> 12 -> 9 -> 4
    costs = ChainCosts.of(net, example)
    masks = Masks({name: torch.ones_like(net.get_submodule(name).weight, dtype=torch.bool) for name in costs.names})
    importance = {"1": torch.arange(1.0, 13.0), "3": torch.arange(1.0, 10.0) * 100, "5": torch.ones(4),
                  INPUTS: torch.arange(1.0, 21.0) * 10}
    start = costs.macs(*_counts(masks, costs.names))
    # one removal: each group's cheapest candidate, by importance over MACs saved
    units, inputs = _counts(masks, costs.names)
    saved, saved_input = costs.saved(units, inputs)
    ratios = {"1": 1 / float(saved[0]), "3": 100 / float(saved[1]), INPUTS: 10 / saved_input}
    one, removed = remove_units_to_macs(masks, costs, importance, start - 1)
    first = min(ratios, key=ratios.get)
    assert int(removed[first].sum()) == 1 and sum(int(r.sum()) for r in removed.values()) == 1
    assert bool(removed[first][0])  # the least important entry of that group
    # a real budget: met, by the export itself, and nothing removed from the output layer
    target = start // 4
    smaller, removed = remove_units_to_macs(masks, costs, importance, target)
    assert _exported_macs(net, smaller, example) <= target
    assert not removed["5"].any() and smaller.weight["5"].flatten(1).any(dim=1).all()
    # units and inputs removed are the lowest-importance ones of their group
    for key in ("1", "3", INPUTS):
        gone = torch.nonzero(removed[key]).flatten()
        assert gone.tolist() == list(range(len(gone)))


def test_an_unreachable_budget_stops_at_one_unit_per_layer():
    net, example = _network("mlp")
    costs = ChainCosts.of(net, example)
    masks = Masks({name: torch.ones_like(net.get_submodule(name).weight, dtype=torch.bool) for name in costs.names})
    importance = {name: torch.rand(net.get_submodule(name).weight.shape[0]) for name in costs.names}
    importance[INPUTS] = torch.rand(20)
    smaller, _ = remove_units_to_macs(masks, costs, importance, 1)
    assert _counts(smaller, costs.names)[0].tolist() == [1, 1, 4] and _counts(smaller, costs.names)[1] == 1


def test_a_network_that_is_not_a_chain_has_no_cost_model():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(x + torch.relu(self.a(x)))

    with pytest.raises(UnsupportedGraphError, match="not an nn.Sequential"):
        ChainCosts.of(Residual(), torch.randn(1, 4))


@pytest.mark.parametrize("kind", ["mlp", "lenet5"])
def test_filling_the_kept_units_keeps_the_units_and_every_weight_between_them(kind):
    net, example = _network(kind)
    costs = ChainCosts.of(net, example)
    generator = torch.Generator().manual_seed(2)
    structured = _random_unit_masks(net, costs.names, generator)
    # single weights pruned inside the kept units as well
    sparse = Masks({name: m & (torch.rand(m.shape, generator=generator) < 0.5) | _first_weight(m)
                    for name, m in structured.weight.items()})
    filled = fill_kept_units(sparse, costs)
    assert _counts(filled, costs.names)[0].tolist() == _counts(sparse, costs.names)[0].tolist()
    for name in costs.names:  # exactly the weights between kept units: those of the structured masks
        assert torch.equal(filled.weight[name], structured.weight[name]), name


def _first_weight(mask):
    """One weight of every kept row and column (so random inner pruning keeps the units and inputs)."""
    rows = mask.flatten(1).any(dim=1)
    keep = torch.zeros_like(mask)
    columns = torch.nonzero(mask.transpose(0, 1).flatten(1).any(dim=1)).flatten()
    for j, row in enumerate(torch.nonzero(rows).flatten()):
        keep[row, columns[j % len(columns)]] = True
    for k, column in enumerate(columns):
        keep[torch.nonzero(rows).flatten()[k % int(rows.sum())], column] = True
    return keep & mask
