"""Spike-and-slab group priors (SPEC section 3): conversion, KL against references, gates, pruning, recovery."""

import copy
import math

import pyro.distributions as pdist
import pytest
import torch
from torch import distributions as D
from torch import nn

from bayescompress.inference import GateMonitor, TrainConfig, fit, point_gates, sample_gates
from bayescompress.nn import BayesLinear, PosteriorInit, bayesian_layers, bayesianize_, fold_multipliers_
from bayescompress.priors import GaussianPrior, SpikeSlabGroupHorseshoe, SpikeSlabGroupLasso
from bayescompress.pruning import InclusionPruning, export_sequential, propagate

FAMILIES = [SpikeSlabGroupLasso, SpikeSlabGroupHorseshoe]


def _mlp():
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


def _cnn():
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(5 * 4 * 4, 3))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("make, shape", [(_mlp, (7, 6)), (_cnn, (7, 2, 6, 6))])
def test_conversion_keeps_the_function_and_folding_keeps_it_again(family, make, shape):
    net, x = make(), torch.randn(shape)
    expected = net(x)
    bayesianize_(net, family(input_gates=True)).eval()
    assert torch.allclose(net(x), expected, atol=1e-5)
    fold_multipliers_(net, GaussianPrior(0.5))
    assert all(isinstance(layer.prior, GaussianPrior) for _, layer in bayesian_layers(net))
    assert torch.allclose(net(x), expected, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_output_layer_is_slab_only_and_only_the_first_layer_gates_its_inputs(family):
    net = bayesianize_(_mlp(), family(input_gates=True))
    priors = [layer.prior for _, layer in bayesian_layers(net)]
    assert [p.gate_logit is not None for p in priors] == [True, True, False]
    assert [p.input_gate_logit is not None for p in priors] == [True, False, False]
    assert torch.equal(priors[-1].statistics(net[4])["unit_inclusion"], torch.ones(3))
    gated_output = bayesianize_(_mlp(), family(gate_output_layer=True))
    assert gated_output[4].prior.gate_logit is not None


def _expected_slab_and_gate_kl(layer):
    """The gate and slab part of the KL assembled from torch.distributions (independent of priors.kl)."""
    prior = layer.prior
    g = torch.sigmoid(prior.gate_logit)
    g_in = torch.sigmoid(prior.input_gate_logit)
    slab = D.Normal(0.0, prior.slab_scale)
    weights = D.kl_divergence(D.Normal(layer.weight, layer.weight_sigma), slab) * g_in
    per_unit = weights.sum(1) + D.kl_divergence(D.Normal(layer.bias, layer.bias_sigma), slab)
    lam = prior.prior_inclusion
    return ((g * per_unit).sum() + D.kl_divergence(D.Bernoulli(g), D.Bernoulli(lam)).sum()
            + D.kl_divergence(D.Bernoulli(g_in), D.Bernoulli(lam)).sum())


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_kl_is_gates_plus_gated_slab_plus_scales(family):
    layer = BayesLinear(5, 4, prior=family(input_gates=True, prior_inclusion=0.1, slab_kl="gated"))
    with torch.no_grad():
        layer.prior.gate_logit.copy_(torch.tensor([2.0, -1.0, 0.5, 3.0]))
        layer.prior.input_gate_logit.copy_(torch.linspace(-2, 2, 5))
        layer.weight_rho.uniform_(-3, -1)
    expected = _expected_slab_and_gate_kl(layer) + layer.prior._scale_kl()
    assert torch.allclose(layer.kl(), expected, rtol=1e-5)


def _randomise_log_normals(prior):
    with torch.no_grad():
        for name, param in prior.named_parameters():
            if name.endswith("loc"):
                param.add_(torch.randn_like(param) * 0.3)
            elif name.endswith("log_std"):
                param.copy_(torch.empty_like(param).uniform_(-1.5, -0.5))


def _log_normal(q):
    return D.LogNormal(q.loc.detach().double(), q.var.detach().double().sqrt())


def test_group_lasso_scale_kl_equals_monte_carlo():
    layer = BayesLinear(4, 3, prior=SpikeSlabGroupLasso())
    prior = layer.prior
    _randomise_log_normals(prior)
    n = 200_000
    q_tau2, q_lam2 = _log_normal(prior.tau2), _log_normal(prior.lam2)
    tau2, lam2 = q_tau2.sample((n,)), q_lam2.sample((n,))
    shape = prior.group_shape.double()
    log_ratio = (q_tau2.log_prob(tau2) - D.Gamma(shape, lam2[:, None] / 2).log_prob(tau2)).sum(1) + (
        q_lam2.log_prob(lam2) - D.Gamma(prior.lam2_shape.double(), prior.lam2_rate.double()).log_prob(lam2))
    assert float(prior._scale_kl().detach()) == pytest.approx(float(log_ratio.mean()), rel=0.02)


def test_group_horseshoe_scale_kl_equals_monte_carlo():
    layer = BayesLinear(4, 3, prior=SpikeSlabGroupHorseshoe(global_scale=0.5, local_scale=2.0))
    prior = layer.prior
    _randomise_log_normals(prior)
    n = 200_000

    def term(q, p):
        q = _log_normal(q)
        x = q.sample((n,))
        return (q.log_prob(x) - p.log_prob(x)).reshape(n, -1).sum(1).mean()

    def half_cauchy_terms(a, b, scale):
        return (term(a, D.Gamma(0.5, float(scale) ** -2)) + term(b, pdist.InverseGamma(0.5, 1.0)))

    expected = (half_cauchy_terms(prior.local_a, prior.local_b, prior.local_scale)
                + half_cauchy_terms(prior.global_a, prior.global_b, prior.global_scale))
    assert float(prior._scale_kl().detach()) == pytest.approx(float(expected), rel=0.02)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampled_log_scale_has_the_stated_moments(family):
    """The forward pass samples log s_j from N(mean, var) of _log_scale_moments: compare with sampling every
    factor separately (each scale variable drawn from its own log-normal)."""
    layer = BayesLinear(4, 2, prior=family(slab_regulariser=None) if family is SpikeSlabGroupHorseshoe
                        else family())
    prior = layer.prior
    _randomise_log_normals(prior)
    n = 100_000
    if family is SpikeSlabGroupLasso:
        direct = 0.5 * _log_normal(prior.tau2).sample((n,)).log()
    else:
        factors = [prior.global_a, prior.global_b, prior.local_a, prior.local_b]
        direct = 0.5 * sum(_log_normal(f).sample((n,)).log().reshape(n, -1) for f in factors)
    sampled = torch.stack([prior._sampled_scale().detach() for _ in range(20_000)]).log()
    for values in (direct, sampled.double()):
        mean, var = prior._log_scale_moments()
        assert torch.allclose(values.mean(0), mean.detach().double(), atol=0.03)
        assert torch.allclose(values.var(0), var.detach().double(), rtol=0.05)


def test_hard_gate_frequency_matches_bernoulli_and_gradient_flows():
    g = torch.tensor([0.05, 0.3, 0.5, 0.9])
    logits = torch.logit(g).requires_grad_()
    n = 100_000
    samples = sample_gates(logits.expand(n, 4), 0.5)
    assert set(samples.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(samples.mean(0), g, atol=4 * math.sqrt(0.25 / n))
    samples[:, 1].sum().backward()  # straight-through: the relaxed sample's gradient reaches the logits
    assert logits.grad[1] > 0 and logits.grad[[0, 2, 3]].abs().max() == 0
    assert torch.equal(point_gates(torch.tensor([-0.1, 0.0, 2.0])), torch.tensor([0.0, 1.0, 1.0]))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(prior_inclusion=0.0), "prior_inclusion"),
        (dict(prior_inclusion=1.0), "prior_inclusion"),
        (dict(prior_inclusion=1.5), "prior_inclusion"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(slab_scale=0.0), "slab_scale"),
        (dict(init_inclusion=1.0), "init_inclusion"),
    ],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_out_of_range_hyperparameters_name_the_field(family, kwargs, field):
    with pytest.raises(ValueError, match=field):
        family(**kwargs)


@pytest.mark.parametrize(
    "family, kwargs, field",
    [
        (SpikeSlabGroupLasso, dict(lam2_shape=0.0), "lam2_shape"),
        (SpikeSlabGroupLasso, dict(lam2_rate=-1.0), "lam2_rate"),
        (SpikeSlabGroupHorseshoe, dict(global_scale=0.0), "global_scale"),
        (SpikeSlabGroupHorseshoe, dict(local_scale=-2.0), "local_scale"),
        (SpikeSlabGroupHorseshoe, dict(slab_regulariser=0.0), "slab_regulariser"),
    ],
)
def test_family_shapes_and_scales_must_be_positive(family, kwargs, field):
    with pytest.raises(ValueError, match=field):
        family(**kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_attaching_to_an_unsupported_layer_is_refused(family):
    with pytest.raises(TypeError, match="BayesLinear, BayesConv2d"):
        family().attach(nn.Linear(3, 2))
    with pytest.raises(TypeError, match="Conv1d"):
        family().attach(nn.Conv1d(2, 2, 3))


def _switch_off(net, layer_index, units):
    with torch.no_grad():
        net[layer_index].prior.gate_logit[units] = -10.0


def test_inclusion_pruning_drops_gated_units_and_input_columns():
    net = bayesianize_(_mlp(), SpikeSlabGroupLasso(input_gates=True))
    _switch_off(net, 0, [1, 4])
    with torch.no_grad():
        net[0].prior.input_gate_logit[[0, 5]] = -10.0
    masks = InclusionPruning().masks(net)
    assert masks.units["0"].tolist() == [i not in (1, 4) for i in range(12)]
    assert not masks.weight["0"][:, [0, 5]].any() and masks.weight["0"][0, 1:5].all()
    assert masks.units["4"].all()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_hidden_layer_pruned_to_nothing_warns_and_the_export_stays_valid(family):
    net = bayesianize_(_mlp(), family())
    _switch_off(net, 2, slice(None))
    net.eval()
    x = torch.randn(9, 6)
    expected = net(x)
    with pytest.warns(UserWarning, match="'2'"):
        masks = InclusionPruning().masks(net)
    fold_multipliers_(net)
    with pytest.warns(UserWarning):
        structure = propagate(net, masks, x[:1])
    structure.masks.apply_(net)
    exported = export_sequential(net, structure).eval()
    assert exported(x).shape == (9, 3)
    assert torch.allclose(exported(x), expected, atol=1e-5)  # a constant output, as the masked network's


def test_gate_monitor_records_alive_units_and_warns_on_an_empty_hidden_layer():
    net = bayesianize_(_mlp(), SpikeSlabGroupHorseshoe())
    _switch_off(net, 2, slice(None))
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    with pytest.warns(UserWarning, match="hidden layer '2'"):
        history = fit(net, [(x, y)], config=TrainConfig(epochs=1, quiet=True, lr=1e-6, prior_lr=1e-6),
                      callbacks=[GateMonitor()], n_train=40)
    assert history[0]["units/0"] == 12 and history[0]["units/2"] == 0
    assert "units/4" not in history[0] or history[0]["units/4"] == 3


def test_rho_and_prior_parameters_get_their_own_learning_rates():
    from bayescompress.inference import Trainer

    net = bayesianize_(_mlp(), SpikeSlabGroupLasso())
    trainer = Trainer(net, [(torch.randn(4, 6), torch.zeros(4, dtype=torch.long))],
                      config=TrainConfig(lr=1e-3, rho_lr=2e-2, prior_lr=5e-2, quiet=True), n_train=4)
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 2e-2, 5e-2]
    layers = [layer for _, layer in bayesian_layers(net)]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for l in layers for p in (l.weight_rho, l.bias_rho)}
    assert {id(p) for p in groups[2]["params"]} == {id(p) for l in layers for p in l.prior.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_input_gates_get_their_own_learning_rate():
    from bayescompress.inference import Trainer

    net = bayesianize_(_mlp(), SpikeSlabGroupHorseshoe(input_gates=True))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    trainer = Trainer(net, [(x, y)], config=TrainConfig(epochs=1, lr=1e-3, prior_lr=1e-3, input_gate_lr=0.1,
                                                        quiet=True), n_train=16)
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-3, 1e-3, 0.1]
    assert [id(p) for p in groups[3]["params"]] == [id(net[0].prior.input_gate_logit)]
    before = {name: p.detach().clone() for name, p in net.named_parameters() if "gate_logit" in name}
    trainer.fit()
    # Adam's first step moves every parameter with a nonzero gradient by its learning rate
    moved = {name: (p.detach() - before[name]).abs() for name, p in net.named_parameters() if name in before}
    assert torch.allclose(moved["0.prior.input_gate_logit"], torch.tensor(0.1), rtol=1e-3)
    assert torch.allclose(moved["0.prior.gate_logit"], torch.tensor(1e-3), rtol=1e-3)
    assert torch.allclose(moved["2.prior.gate_logit"], torch.tensor(1e-3), rtol=1e-3)


def _teacher_student(active=5, hidden=50, features=10, classes=3, n=3000):
    """Labels from a teacher MLP whose hidden units 0..active-1 alone reach the output, and a pretrained
    student of the same shape: the teacher's first layer, and small random output weights on the units the
    teacher does not use (so they carry a little of nothing)."""
    g = torch.Generator().manual_seed(1)
    teacher = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))
    with torch.no_grad():
        teacher[0].weight.normal_(generator=g)
        teacher[2].weight.zero_()
        teacher[2].weight[:, :active].normal_(0, 3, generator=g)
        for layer in teacher:
            if isinstance(layer, nn.Linear):
                layer.bias.zero_()
    x = torch.randn(n, features, generator=g)
    y = teacher(x).argmax(1)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student[2].weight[:, active:].normal_(0, 0.1, generator=g)
    batches = [(x[i:i + 100], y[i:i + 100]) for i in range(0, n, 100)]
    fit(student, batches, config=TrainConfig(epochs=3, quiet=True), n_train=n)
    return student, batches, n


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_student_recovery_keeps_the_active_units_and_prunes_the_rest(family):
    student, batches, n = _teacher_student()
    bayesianize_(student, family(), init=PosteriorInit(rho=-6.0))
    fit(student, batches, config=TrainConfig(epochs=15, prior_lr=3e-2, rho_lr=3e-2, kl_warmup_epochs=1,
                                             eval_samples=0, quiet=True), n_train=n)
    kept = InclusionPruning().masks(student).units["0"]
    assert kept[:5].all(), f"an active unit was pruned: kept {kept.nonzero().flatten().tolist()}"
    assert (~kept[5:]).float().mean() >= 0.9, f"kept {kept.nonzero().flatten().tolist()}"
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert (student.eval()(x).argmax(1) == y).float().mean() > 0.95


def test_silent_units_keep_a_pruned_unit_at_zero_through_fine_tuning():
    from bayescompress.inference import SilentUnits

    net = bayesianize_(_mlp(), SpikeSlabGroupLasso())
    _switch_off(net, 0, [2, 7])
    masks = InclusionPruning().masks(net)
    fold_multipliers_(net)
    masks.apply_(net)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    fit(net, [(x, y)], config=TrainConfig(epochs=5, lr=1e-2, quiet=True), n_train=64,
        callbacks=[SilentUnits(net, masks.units)])
    assert torch.equal(net[0].bias[[2, 7]].detach(), torch.zeros(2))
    assert net[0].bias_sigma[[2, 7]].max() < 1e-6
    assert net[0].bias[[0, 1, 3]].abs().min() > 0  # the kept units trained
    structure = propagate(net, masks, x[:1])
    assert not structure.masks.weight["2"][:, [2, 7]].any()  # nothing reads a silent unit


def test_input_gates_on_a_grouped_first_conv_are_refused():
    with pytest.raises(ValueError, match="groups=1"):
        bayesianize_(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), SpikeSlabGroupLasso(input_gates=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_input_gates_remove_the_unit_before_that_feeds_a_gated_off_input(family):
    net = _cnn()
    x = torch.randn(4, 2, 6, 6)
    bayesianize_(net, family(hidden_input_gates=True), example_input=x)
    priors = [layer.prior for _, layer in bayesian_layers(net)]
    # not the first layer (input_gates is off), every later one, the classifier included
    assert [p.input_gate_logit is not None for p in priors] == [False, True, True]
    with torch.no_grad():
        priors[1].input_gate_logit[2] = -6.0  # the second conv stops reading the first conv's filter 2
    net.eval()
    masks = InclusionPruning().masks(net)
    structure = propagate(net, masks, x)
    assert structure.masks.units["0"].tolist() == [True, True, False, True]
    expected = net(x)
    fold_multipliers_(net)  # gates and scales into the weights, as compress does before the export
    structure.masks.apply_(net)
    exported = export_sequential(net, structure).eval()
    assert exported[0].out_channels == 3 and exported[2].in_channels == 3
    assert torch.allclose(exported(x), expected, atol=1e-5)
    assert torch.allclose(exported(x), net(x), atol=1e-5)


def test_hidden_input_gates_leave_a_grouped_conv_ungated():
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 2 * 2, 3))
    bayesianize_(net, SpikeSlabGroupLasso(input_gates=True, hidden_input_gates=True),
                 example_input=torch.randn(1, 2, 6, 6))
    assert [layer.prior.input_gate_logit is not None for _, layer in bayesian_layers(net)] == [True, False, True]
