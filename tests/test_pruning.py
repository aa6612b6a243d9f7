"""Pruning: strategies, structure propagation, export equivalence, prune buffers, bad input."""

import copy

import pytest
import torch
from torch import nn

from bayescompress.metrics import dense_macs, sparse_macs, weight_uses
from bayescompress.models import lenet5, mlp
from bayescompress.nn import BayesianLayer, bayesianize_
from bayescompress.priors import GaussianPrior, Inclusion
from bayescompress.pruning import (
    InclusionPruning,
    MagnitudePruning,
    Masks,
    SNRPruning,
    UnsupportedGraphError,
    export_sequential,
    propagate,
)
from bayescompress.pruning.masks import copy_network


def _random_bnn(net):
    bayesianize_(net)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, BayesianLayer):
                m.bias.normal_()  # non-zero constants make folding mistakes visible
                m.weight_rho.normal_(-4.0, 1.0)
    return net.eval()


NETWORKS = {
    "mlp": (lambda: mlp(20, (30, 15), 5), (32, 1, 4, 5)),
    "lenet5": (lenet5, (8, 1, 28, 28)),
    "conv-padding-sigmoid": (
        lambda: nn.Sequential(nn.Conv2d(2, 6, 3), nn.Tanh(), nn.Conv2d(6, 5, 3, padding=1), nn.Sigmoid(),
                              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(20, 7), nn.ReLU(), nn.Linear(7, 3)),
        (16, 2, 6, 6)),
    "nested-sequential": (
        lambda: nn.Sequential(nn.Sequential(nn.Flatten(), nn.Linear(12, 9), nn.GELU()),
                              nn.Sequential(nn.Linear(9, 8), nn.LeakyReLU(0.1), nn.Dropout(0.2)), nn.Linear(8, 4)),
        (16, 3, 4)),
    "conv-only": (lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.AvgPool2d(2)),
                  (4, 1, 10, 10)),
}


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("strategy", [SNRPruning(keep_fraction=0.3), SNRPruning(keep_fraction=0.03),
                                      SNRPruning(keep_fraction=0.5, level="unit"), MagnitudePruning(0.1)],
                         ids=["snr-30%", "snr-3%", "snr-unit", "magnitude-10%"])
@pytest.mark.filterwarnings("ignore:pruning would remove every unit")
def test_exported_network_computes_the_masked_posterior_mean(name, strategy):
    make, shape = NETWORKS[name]
    net = _random_bnn(make())
    x = torch.randn(*shape)
    masks = strategy.masks(net)
    masked = masks.apply_(copy.deepcopy(net)).eval()
    structure = propagate(masked, masks, x)
    final = structure.masks.apply_(copy.deepcopy(masked)).eval()
    for bayesian in (False, True):
        exported = export_sequential(final, structure, bayesian=bayesian).eval()
        assert (exported(x) - masked(x)).abs().max().item() <= 1e-4
    # propagation only drops weights nothing reads
    assert (final(x) - masked(x)).abs().max().item() <= 1e-5


def test_constant_unit_is_folded_into_the_next_bias():
    net = _random_bnn(mlp(4, (3,), 2))
    keep = torch.ones(3, 4, dtype=torch.bool)
    keep[1] = False  # unit 1 of the hidden layer has no inputs left: it outputs relu(b_1)
    masks = Masks({"1": keep, "3": torch.ones(2, 3, dtype=torch.bool)})
    structure = propagate(net, masks, torch.randn(1, 1, 2, 2))
    assert structure.masks.units["1"].tolist() == [True, False, True]
    expected = net[3].weight[:, 1].detach() * torch.relu(net[1].bias[1].detach())
    assert torch.allclose(structure.bias_correction["3"], expected)
    exported = export_sequential(masks.apply_(net), structure)
    assert exported[1].out_features == 2 and exported[3].in_features == 2


@pytest.mark.parametrize("bias, dropped", [(-1.0, True), (0.5, False)])
def test_outgoing_weights_of_a_folded_unit_are_dropped_only_when_its_constant_is_zero(bias, dropped):
    net = _random_bnn(mlp(4, (3,), 2))
    with torch.no_grad():
        net[1].bias[1] = bias  # relu(-1) = 0: the unit is silent; relu(0.5) is a constant the next layer reads
    keep = torch.ones(3, 4, dtype=torch.bool)
    keep[1] = False
    x = torch.randn(5, 1, 2, 2)
    masked = Masks({"1": keep}).apply_(net)
    expected = masked(x)
    structure = propagate(masked, Masks({"1": keep}), x)
    assert structure.masks.weight["3"][:, 1].any() != dropped
    assert torch.allclose(structure.masks.apply_(masked)(x), expected, atol=1e-6)


def test_unit_without_outgoing_weights_is_removed_and_its_row_dropped():
    net = _random_bnn(mlp(4, (3,), 2))
    out_keep = torch.ones(2, 3, dtype=torch.bool)
    out_keep[:, 2] = False
    structure = propagate(net, Masks({"3": out_keep}), torch.randn(1, 1, 2, 2))
    assert structure.masks.units["1"].tolist() == [True, True, False]
    assert not structure.masks.weight["1"][2].any()


def test_a_ranking_across_layers_never_empties_a_layer_whose_scores_are_on_another_scale():
    from bayescompress.pruning import MagnitudePruning

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    with torch.no_grad():
        net[2].weight.mul_(1e-3)  # the classifier's weights far below the first layer's (a folded BatchNorm)
    with pytest.warns(UserWarning, match="keeps no weight of layer '2' .all its scores below the other "
                                         "layers'.; each keeps its own top 0.1"):
        masks = MagnitudePruning(0.1, scope="global").masks(net)
    assert int(masks.weight["2"].sum()) == 10  # its own top tenth of 100, the largest |w| of that layer
    assert torch.equal(masks.weight["2"], net[2].weight.abs() >= net[2].weight.abs().flatten().topk(10).values[-1])
    assert int(masks.weight["0"].sum()) == 30  # the first layer holds the whole global budget, as before
    with torch.no_grad():
        net[2].weight.zero_()  # every score tied: still exactly its top tenth
    with pytest.warns(UserWarning, match="keeps no weight of layer '2'"):
        assert int(MagnitudePruning(0.1, scope="global").masks(net).weight["2"].sum()) == 10


def test_snr_keeps_the_requested_fraction_globally_and_output_units():
    net = _random_bnn(mlp(10, (20,), 4))
    masks = SNRPruning(keep_fraction=0.25).masks(net)
    assert masks.kept_weights() == round(0.25 * (200 + 80))
    snr = torch.cat([(m.weight.abs() / m.weight_sigma).flatten() for m in (net[1], net[3])]).detach()
    kept = torch.cat([masks.weight["1"].flatten(), masks.weight["3"].flatten()])
    assert snr[kept].min() >= snr[~kept].max()
    assert masks.units["3"].all()


def test_snr_threshold_and_unit_level():
    net = _random_bnn(mlp(10, (20,), 4))
    masks = SNRPruning(threshold=5.0).masks(net)
    assert torch.equal(masks.weight["1"], (net[1].weight.abs() / net[1].weight_sigma >= 5.0))
    units = SNRPruning(keep_fraction=0.5, level="unit").masks(net)
    assert int(units.units["1"].sum()) == 10 and units.units["3"].all()
    rows = units.weight["1"].all(dim=1) | ~units.weight["1"].any(dim=1)
    assert rows.all()  # whole rows kept or dropped


def test_magnitude_keeps_the_fraction_per_layer_on_a_plain_network():
    net = mlp(10, (20,), 4)
    masks = MagnitudePruning(0.1).masks(net)
    assert int(masks.weight["1"].sum()) == 20 and int(masks.weight["3"].sum()) == 8


class _InclusionPrior(GaussianPrior):
    """Test double: a prior that reports fixed inclusion probabilities."""

    def __init__(self, probs, level):
        super().__init__()
        self.probs, self.level = probs, level

    def inclusion(self, layer):
        return Inclusion(**{self.level: self.probs})


def test_inclusion_threshold_reads_weight_or_unit_probabilities():
    net = mlp(3, (4,), 2)
    probs = {"1": torch.rand(4, 3), "3": torch.rand(2, 4)}
    bayesianize_(net, lambda name, layer: _InclusionPrior(probs[name], "weight"))
    masks = InclusionPruning(0.5).masks(net)
    assert torch.equal(masks.weight["1"], probs["1"] >= 0.5)
    unit_probs = {"1": torch.tensor([0.9, 0.1, 0.7, 0.2]), "3": torch.tensor([0.1, 0.1])}
    net = bayesianize_(mlp(3, (4,), 2), lambda name, layer: _InclusionPrior(unit_probs[name], "unit"))
    masks = InclusionPruning(0.5).masks(net)
    assert masks.units["1"].tolist() == [True, False, True, False]
    assert masks.units["3"].all()  # the output layer keeps every class
    with pytest.raises(ValueError, match="GaussianPrior has no weight-level inclusion"):
        InclusionPruning().masks(bayesianize_(mlp(3, (4,), 2)))


def test_masks_as_prune_buffers_load_into_a_plain_copy(tmp_path):
    from bayescompress.io import load_state_dict_file, save_weights

    plain = mlp(6, (5,), 3)
    bnn = _random_bnn(copy.deepcopy(plain))
    masks = SNRPruning(keep_fraction=0.4).masks(bnn)
    masks.apply_(bnn)
    assert "1.weight_mask" in bnn.state_dict() and "1.weight_orig" in bnn.state_dict()
    save_weights(masks.to_tensors(), tmp_path / "masks.safetensors")
    loaded = Masks.from_tensors(load_state_dict_file(tmp_path / "masks.safetensors"))
    loaded.apply_(plain)
    for name in ("1", "3"):
        assert torch.equal(plain.get_submodule(name).weight_mask.bool(), masks.weight[name])
        assert torch.equal(plain.get_submodule(name).weight == 0, ~masks.weight[name] | (plain.get_submodule(name).weight_orig == 0))
    # the plain masked copy's state_dict loads into another plain copy carrying the same buffers
    other = loaded.apply_(mlp(6, (5,), 3))
    other.load_state_dict(plain.state_dict())
    x = torch.randn(4, 6)
    assert torch.equal(other(x), plain(x))


def test_sparse_macs_equal_dense_macs_without_pruning_and_scale_with_masks():
    net = lenet5()
    x = torch.randn(1, 1, 28, 28)
    full = Masks({n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in net.named_modules()
                  if isinstance(m, (nn.Linear, nn.Conv2d))})
    uses = weight_uses(net, [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))], x)
    biasless = dense_macs(net, x)
    assert sparse_macs(full.weight, uses) == biasless
    half = {n: m.clone() for n, m in full.weight.items()}
    half["3"][:25] = False  # half of conv2's filters: 25 * 20*5*5 weights at 8*8 positions
    assert sparse_macs(half, uses) == biasless - 25 * 500 * 64


def test_pruning_a_network_without_bayesian_layers_is_refused():
    with pytest.raises(ValueError, match="no Bayesian layers"):
        SNRPruning(keep_fraction=0.5).masks(mlp(4, (3,), 2))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_keep_fraction_outside_the_open_unit_interval_is_refused(fraction):
    with pytest.raises(ValueError, match="keep_fraction"):
        SNRPruning(keep_fraction=fraction)
    with pytest.raises(ValueError, match="keep_fraction"):
        MagnitudePruning(fraction)


@pytest.mark.filterwarnings("ignore:pruning would remove every unit of layer .3.")
def test_threshold_that_prunes_every_unit_keeps_the_best_one_and_warns():
    net = _random_bnn(mlp(6, (5, 4), 3))
    masks = SNRPruning(threshold=1e9).masks(net)
    x = torch.randn(8, 1, 2, 3)
    with pytest.warns(UserWarning, match="every unit of layer '1'"):
        structure = propagate(net, masks, x)
    assert all(int(u.sum()) >= 1 for u in structure.masks.units.values())
    exported = export_sequential(masks.apply_(copy.deepcopy(net)), structure)
    assert exported(x).shape == (8, 3)
    assert torch.allclose(exported(x), masks.apply_(copy.deepcopy(net))(x), atol=1e-5)


def test_unsupported_op_is_named_and_masks_stay_available():
    net = bayesianize_(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2)))
    masks = SNRPruning(keep_fraction=0.5).masks(net)
    with pytest.raises(UnsupportedGraphError, match=r"'1' \(BatchNorm1d\).*masks are still available"):
        propagate(net, masks, torch.randn(2, 4))

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return x + self.fc(x)

    with pytest.raises(UnsupportedGraphError, match="not an nn.Sequential"):
        propagate(Residual(), Masks({}), torch.randn(2, 4))


def test_pruned_weights_are_zero_in_every_sample_and_get_no_gradient():
    net = _random_bnn(mlp(6, (5,), 3))
    masks = SNRPruning(keep_fraction=0.3).masks(net)
    masks.apply_(net)
    net.train()
    loss = net(torch.randn(16, 1, 2, 3)).pow(2).sum() + net[1].kl()
    loss.backward()
    dropped = ~masks.weight["1"]
    assert (net[1].weight_orig.grad[dropped] == 0).all()
    assert (net[1].weight_rho.grad[dropped] == 0).all()
    assert (net[1].weight_variance()[dropped] == 0).all()


def test_the_unit_kept_in_an_emptied_layer_is_one_still_alive():
    from bayescompress.pruning.structure import _keep_best_unit

    weight = torch.tensor([[9.0, 9.0], [2.0, 1.0], [1.0, 1.0]])  # unit 0 is strongest but already removed
    alive = torch.tensor([False, True, True])
    with pytest.warns(UserWarning, match="keeping its strongest unit \\(1\\)"):
        remove = _keep_best_unit("1", alive.clone(), weight, alive)
    assert remove.tolist() == [False, False, True]


def test_masks_can_be_replaced_so_pruned_weights_grow_back():
    net = nn.Sequential(nn.Linear(3, 2))
    first = Masks({"0": torch.tensor([[True, False, True], [True, True, False]])})
    second = Masks({"0": torch.tensor([[False, True, True], [True, True, True]])})
    first.apply_(net)
    intersected = second.apply_(copy_network(net))
    assert intersected[0].weight_mask.tolist() == [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]  # prune's logical and
    replaced = second.apply_(copy_network(net), replace=True)
    assert replaced[0].weight_mask.tolist() == [[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    x = torch.randn(4, 3)
    expected = x @ (replaced[0].weight_orig * second.weight["0"]).T + replaced[0].bias
    assert torch.allclose(replaced(x), expected)


def test_optimizer_state_of_regrown_entries_is_reset_and_the_rest_kept():
    from bayescompress.pruning import reset_optimizer_state_

    weight = nn.Parameter(torch.zeros(2, 3))
    for optimizer in (torch.optim.Adam([weight], lr=0.1), torch.optim.SGD([weight], lr=0.1, momentum=0.9)):
        weight.grad = torch.ones(2, 3)
        optimizer.step()
        before = {k: v.clone() for k, v in optimizer.state[weight].items() if isinstance(v, torch.Tensor)}
        where = torch.tensor([[True, False, False], [False, False, True]])
        reset_optimizer_state_(optimizer, weight, where)
        for key, value in optimizer.state[weight].items():
            if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                assert bool((value[where] == 0).all()) and torch.equal(value[~where], before[key][~where])
                assert bool((before[key][where] != 0).all())  # the reset changed something


@pytest.mark.parametrize("make, shape, dead, saved_macs", [
    (lambda: mlp(12, (6,), 3), (9, 1, 3, 4), [0, 5, 11], 3 * 6),  # pixels no unit reads
    # one input channel: 4 filters x 3x3 kernel x 2x2 positions
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2)), (5, 3, 4, 4), [1], 144),
], ids=["pixels", "input-channel"])
def test_inputs_the_first_layer_no_longer_reads_are_gathered_away_and_save_and_rebuild(make, shape, dead,
                                                                                        saved_macs):
    from bayescompress.runs import build_sequential, describe_sequential

    net = _random_bnn(make())
    first = next(name for name, m in net.named_modules() if isinstance(m, BayesianLayer))
    keep = torch.ones_like(net.get_submodule(first).weight, dtype=torch.bool)
    keep[:, dead] = False
    x = torch.randn(*shape)
    masked = Masks({first: keep}).apply_(copy.deepcopy(net)).eval()
    exported = export_sequential(masked, propagate(masked, Masks({first: keep}), x)).eval()
    select = [m for m in exported if type(m).__name__ == "SelectInputs"]
    assert len(select) == 1 and sorted(set(range(keep.shape[1])) - set(select[0].index.tolist())) == dead
    assert (exported(x) - masked(x)).abs().max().item() <= 1e-5
    assert dense_macs(net, x[:1]) - dense_macs(exported, x[:1]) == saved_macs
    rebuilt = build_sequential(describe_sequential(exported))
    rebuilt.load_state_dict(exported.state_dict())
    assert torch.equal(rebuilt.eval()(x), exported(x))


@pytest.mark.parametrize("wrong", [float("nan"), float("inf")])
def test_an_export_that_outputs_nan_or_inf_where_the_network_does_not_is_infinitely_far(wrong):
    from bayescompress.pruning.export import EXPORT_TOLERANCE, largest_difference

    network = nn.Linear(3, 2)
    broken = copy.deepcopy(network)
    with torch.no_grad():
        broken.bias[1] = wrong
    inputs = [torch.randn(4, 3)]
    assert largest_difference(broken, network, inputs) == float("inf")
    assert not largest_difference(network, broken, inputs) <= EXPORT_TOLERANCE
    # the same non-finite output in both is no difference
    assert largest_difference(broken, copy.deepcopy(broken), inputs) == 0.0


class _HeadFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 10)
        self.body = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())

    def forward(self, x):
        return self.head(self.body(x))


def test_a_head_registered_before_its_body_keeps_its_classes_under_every_strategy_and_the_graph_export():
    """The strategies' default output layer was the last registered: body.2 kept its units while the head lost
    half its classes (and magnitude pruning 8 of 10)."""
    from bayescompress.pruning import MagnitudePruning, export_with_torch_pruning

    torch.manual_seed(0)
    x = torch.randn(8, 12)
    net = bayesianize_(_HeadFirst(), GaussianPrior(1.0), example_input=x).eval()
    for strategy in (SNRPruning(keep_fraction=0.5, level="unit"), MagnitudePruning(keep_fraction=0.02)):
        masks = strategy.masks(net)
        assert bool(masks.units["head"].all())
        assert not bool(masks.units["body.2"].all())  # the hidden layer is an ordinary one
    plain = _HeadFirst().eval()
    keep = {"head": torch.ones(10, 16, dtype=torch.bool), "body.0": torch.ones(32, 12, dtype=torch.bool),
            "body.2": torch.ones(16, 32, dtype=torch.bool)}
    keep["head"][:3] = False  # rows of the head the masks empty: classes, so they stay
    exported, _ = export_with_torch_pruning(plain, Masks(keep, {n: k.any(1) for n, k in keep.items()}), x)
    assert exported.head.out_features == 10
