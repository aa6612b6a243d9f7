"""Turbo-VBI's prior and module A: closed forms against independent references, coordinate-ascent optimality,
validation, and the callback inside the training loop."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Gamma, Normal, StudentT, kl_divergence

from bayescompress.inference import TrainConfig, TurboCallback, fit
from bayescompress.priors.hierarchical import expected_kl_sum, module_a_, support_log_odds, update_precision
from bayescompress.nn import BayesConv2d, BayesLinear, bayesianize_
from bayescompress.priors import HierarchicalPrior
from bayescompress.pruning import InclusionPruning

DOUBLE = torch.float64
GAMMA = (1.0, 0.04, 1.0, 4e-6)  # a, b, a_bar, b_bar: slab std 0.2, spike std 0.002


def _random_moments(n=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, generator=generator, dtype=DOUBLE) * 0.2
    sigma = torch.rand(n, generator=generator, dtype=DOUBLE) * 0.05 + 1e-3
    return mu, sigma


def _gamma_quadrature(shape, rate, points=20001):
    """Nodes and weights to integrate f(gamma) against Gamma(shape, rate) numerically, per entry (log-spaced
    grid over +-14 standard deviations of log gamma, trapezoid rule in log gamma)."""
    q = Gamma(shape, rate)
    centre = torch.digamma(shape) - torch.log(rate)
    spread = torch.polygamma(1, shape).sqrt()
    t = torch.linspace(-1.0, 1.0, points, dtype=DOUBLE)
    log_gamma = centre[:, None] + 14 * spread[:, None] * t[None, :]
    gamma = log_gamma.exp()
    density = (q.log_prob(gamma.T).T + log_gamma).exp()  # density of log gamma
    step = log_gamma[:, 1:] - log_gamma[:, :-1]
    weights = torch.zeros_like(gamma)
    weights[:, 1:] += 0.5 * step * density[:, 1:]
    weights[:, :-1] += 0.5 * step * density[:, :-1]
    return gamma, weights


def _numeric_elbo(mu, sigma, prior_pi, inclusion, shape, rate):
    """The q(gamma), q(s)-dependent part of the ELBO per weight, integrated numerically over gamma:
    E[log N(w; 0, 1/gamma)] + E[log p(gamma | s)] + E[log Bern(s; pi)] + H[q(gamma)] + H[q(s)]."""
    gamma, weights = _gamma_quadrature(shape, rate)
    a, b, a_bar, b_bar = GAMMA
    second_moment = (mu**2 + sigma**2)[:, None]
    log_normal = 0.5 * torch.log(gamma) - 0.5 * math.log(2 * math.pi) - 0.5 * gamma * second_moment
    active = Gamma(torch.tensor(a, dtype=DOUBLE), torch.tensor(b, dtype=DOUBLE)).log_prob(gamma)
    inactive = Gamma(torch.tensor(a_bar, dtype=DOUBLE), torch.tensor(b_bar, dtype=DOUBLE)).log_prob(gamma)
    expected = (weights * (log_normal + inclusion[:, None] * active + (1 - inclusion[:, None]) * inactive)).sum(1)
    support = inclusion * torch.log(prior_pi) + (1 - inclusion) * torch.log1p(-prior_pi)
    return expected + support + Gamma(shape, rate).entropy() + Bernoulli(probs=inclusion).entropy()


def test_precision_update_is_a_coordinate_ascent_optimum():
    mu, sigma = _random_moments()
    generator = torch.Generator().manual_seed(1)
    prior_pi = torch.rand(mu.shape, generator=generator, dtype=DOUBLE) * 0.9 + 0.05
    inclusion = torch.rand(mu.shape, generator=generator, dtype=DOUBLE)
    shape, rate = update_precision(inclusion, mu**2 + sigma**2, GAMMA)
    best = _numeric_elbo(mu, sigma, prior_pi, inclusion, shape, rate)
    for trial in range(6):
        perturb = torch.randn(2, *mu.shape, generator=generator, dtype=DOUBLE) * 0.1
        moved = _numeric_elbo(mu, sigma, prior_pi, inclusion, shape * perturb[0].exp(), rate * perturb[1].exp())
        assert (moved <= best + 1e-9).all()
    assert (best - _numeric_elbo(mu, sigma, prior_pi, inclusion, shape * 1.05, rate)).min() > 0


def test_support_update_is_a_coordinate_ascent_optimum():
    mu, sigma = _random_moments(seed=2)
    generator = torch.Generator().manual_seed(3)
    prior_pi = torch.rand(mu.shape, generator=generator, dtype=DOUBLE) * 0.9 + 0.05
    shape = 1.5 + torch.rand(mu.shape, generator=generator, dtype=DOUBLE)
    rate = torch.rand(mu.shape, generator=generator, dtype=DOUBLE) * 0.05 + 1e-4
    logit = torch.logit(prior_pi) + support_log_odds(shape, rate, GAMMA)
    inclusion = torch.sigmoid(logit)
    best = _numeric_elbo(mu, sigma, prior_pi, inclusion, shape, rate)
    for delta in (-1.0, -0.1, 0.1, 1.0):
        moved = _numeric_elbo(mu, sigma, prior_pi, torch.sigmoid(logit + delta), shape, rate)
        assert (moved <= best + 1e-9).all()


def test_expected_kl_matches_monte_carlo_over_the_precision():
    mu, sigma = _random_moments(n=5, seed=4)
    shape = torch.tensor([1.5, 2.0, 1.2, 3.0, 1.5], dtype=DOUBLE)
    rate = torch.tensor([0.02, 0.05, 1e-4, 0.01, 0.3], dtype=DOUBLE)
    gamma = Gamma(shape, rate).sample((200_000,))
    monte_carlo = kl_divergence(Normal(mu, sigma), Normal(torch.zeros_like(mu), gamma.rsqrt())).mean(0)
    closed = torch.stack([expected_kl_sum(mu[i:i + 1], sigma[i:i + 1], (shape / rate)[i:i + 1],
                                          (torch.digamma(shape) - torch.log(rate))[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(closed, monte_carlo, rtol=0.02, atol=0)


def test_expected_kl_gradients_match_finite_differences_and_skip_pruned_weights():
    mu, sigma = _random_moments(n=12, seed=5)
    precision = torch.rand(12, dtype=DOUBLE) * 50 + 1
    log_precision = torch.log(precision) - 0.3
    keep = (torch.arange(12) % 3 != 0).to(DOUBLE)
    torch.autograd.gradcheck(lambda m, s: expected_kl_sum(m, s, precision, log_precision, keep),
                             (mu.clone().requires_grad_(), sigma.clone().requires_grad_()))
    m, s = mu.clone().requires_grad_(), sigma.clone().requires_grad_()
    expected_kl_sum(m, s, precision, log_precision, keep).backward()
    assert (m.grad[keep == 0] == 0).all() and (s.grad[keep == 0] == 0).all()


def test_module_a_decides_by_second_moment_and_prior_message():
    layer = BayesLinear(200, 4, prior=HierarchicalPrior(pi0=0.1))
    with torch.no_grad():
        layer.weight.normal_(0, 0.1)
        layer.weight[0].mul_(0.01)  # a unit whose weights are far below the layer's scale
    module_a_(layer.prior, layer)
    inclusion = layer.prior.statistics(layer)["inclusion"]
    assert inclusion[0].max() < 0.5 and inclusion[1:].mean() > inclusion[0].mean()
    # a strong prior message overrules weak evidence: push everything towards active
    layer.prior.prior_logit.fill_(8.0)
    module_a_(layer.prior, layer)
    assert layer.prior.statistics(layer)["inclusion"][1:].min() > 0.5
    # inactive weights get a far larger expected precision (the spike pins them to zero)
    layer.prior.prior_logit.fill_(-8.0)
    module_a_(layer.prior, layer)
    stats = layer.prior.statistics(layer)
    assert (stats["expected_precision"][stats["inclusion"] < 0.5].median()
            > 100 * stats["expected_precision"][stats["inclusion"] >= 0.5].median())


def test_scale_aware_defaults_follow_the_layer_weight_variance():
    layer = BayesConv2d(3, 8, 3, prior=HierarchicalPrior())
    variance = float(layer.weight.detach().var())
    a, b, a_bar, b_bar = layer.prior.gamma_parameters()
    assert (a, a_bar) == (1.0, 1.0)
    assert b == pytest.approx(variance, rel=1e-5) and b_bar == pytest.approx(1e-4 * variance, rel=1e-5)
    assert layer.prior.statistics(layer)["inclusion"].shape == layer.weight.shape  # filters flattened and back


@pytest.mark.parametrize("kwargs, message", [
    (dict(row_p11=1.0), "row_p11"), (dict(column_p01=0.0), "column_p01"), (dict(pi0=1.2), "pi0"),
    (dict(active_shape=0.0), "active_shape"), (dict(inactive_rate=-1.0), "inactive_rate"),
    (dict(active_rate=1e-3, inactive_rate=1.0), "narrower"), (dict(graph="ring"), "graph"),
])
def test_bad_hyperparameters_are_refused_on_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HierarchicalPrior(**kwargs)


def test_an_inactive_state_wider_than_the_scale_aware_active_one_is_refused_on_attach():
    with pytest.raises(ValueError, match="narrower"):
        BayesLinear(10, 5, prior=HierarchicalPrior(inactive_rate=10.0))


def test_turbo_callback_prunes_the_inputs_a_teacher_ignores():
    """A linear teacher reads 4 of 24 inputs; Turbo-VBI turns the 20 ignored columns off, keeps the 4."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 24, generator=generator)
    y = (x[:, :4] @ torch.tensor([[2.0, -2.0], [1.5, 1.0], [-1.0, 2.0], [2.0, 0.5]])).argmax(1)
    student = nn.Sequential(nn.Linear(24, 2))
    fit(student, [(x[i:i + 100], y[i:i + 100]) for i in range(0, 2000, 100)],
        config=TrainConfig(epochs=30, lr=3e-2, quiet=True), n_train=2000)
    bayesianize_(student, HierarchicalPrior(pi0=0.1, graph="columns"))
    loader = [(x[i:i + 100], y[i:i + 100]) for i in range(0, 2000, 100)]
    history = fit(student, loader, config=TrainConfig(epochs=15, lr=1e-2, quiet=True), n_train=2000,
                  callbacks=[TurboCallback()])
    keep = InclusionPruning().masks(student).weight["0"]
    assert keep[:, :4].all() and not keep[:, 4:].any()
    assert "turbo/0/active" in history[-1] and history[-1]["turbo/0/bp_iterations"] >= 1


def test_a_turbo_callback_reused_on_another_model_starts_afresh():
    callback = TurboCallback()
    batch = [(torch.randn(4, 6), torch.tensor([0, 1, 0, 1]))]
    for hidden in (6, 4):  # same layer names, different grid shapes: stale caches would not fit
        model = bayesianize_(nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 2)), HierarchicalPrior())
        fit(model, batch, config=TrainConfig(epochs=1, quiet=True), n_train=4, callbacks=[callback])


def test_more_updates_than_batches_warn():
    model = bayesianize_(nn.Sequential(nn.Linear(3, 2)), HierarchicalPrior())
    with pytest.warns(UserWarning, match="one turbo iteration per batch"):
        fit(model, [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))], config=TrainConfig(epochs=1, quiet=True),
            n_train=4, callbacks=[TurboCallback(updates_per_epoch=3)])


def test_probabilities_close_to_one_survive_storage():
    prior = HierarchicalPrior(row_p11=1 - 1e-9)
    assert prior.potentials()[0].p11 == 1 - 1e-9


def test_turbo_callback_needs_a_hierarchical_prior():
    model = bayesianize_(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="HierarchicalPrior"):
        fit(model, [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))], config=TrainConfig(epochs=1, quiet=True),
            n_train=4, callbacks=[TurboCallback()])


def test_turbo_iterations_run_before_training_and_evenly_within_each_epoch():
    calls = []

    class Counting(TurboCallback):
        def iterate(self, model):
            calls.append(len(calls))
            super().iterate(model)

    model = bayesianize_(nn.Sequential(nn.Linear(6, 3)), HierarchicalPrior())
    loader = [(torch.randn(5, 6), torch.randint(0, 3, (5,))) for _ in range(7)]
    fit(model, loader, config=TrainConfig(epochs=2, quiet=True), n_train=35, callbacks=[Counting(updates_per_epoch=3)])
    assert len(calls) == 1 + 2 * 3


def _kernel_layer(seed=0):
    """A 3x3 conv, 4 -> 6 channels, with kernel support: input channel 2 and filter 5 far below the layer's
    scale, every other slice at it."""
    torch.manual_seed(seed)
    layer = BayesConv2d(4, 6, 3, prior=HierarchicalPrior(pi0=0.01, support="kernel"))
    with torch.no_grad():
        layer.weight.normal_(0, 0.1)
        layer.weight[:, 2].mul_(1e-3)
        layer.weight[5].mul_(1e-3)
    layer.prior.attach(layer)  # the scale-aware rates from these weights
    return layer


def test_kernel_support_sums_its_weights_student_t_bayes_factors():
    """With the precision integrated out, w | s is a Student-t (2a degrees of freedom, scale sqrt(b/a)); a
    kernel slice's evidence is the sum of its weights' log density ratios at w = sqrt(E[w^2])."""
    layer = _kernel_layer()
    prior = layer.prior
    generator = torch.Generator().manual_seed(7)
    prior.prior_logit.copy_(torch.randn(prior.prior_logit.shape, generator=generator) - 4)
    extrinsic = module_a_(prior, layer)
    a, b, a_bar, b_bar = prior.gamma_parameters()
    w = (layer.weight.detach() ** 2 + layer.weight_sigma.detach() ** 2).double().sqrt()
    active = StudentT(2 * a, 0.0, math.sqrt(b / a)).log_prob(w)
    inactive = StudentT(2 * a_bar, 0.0, math.sqrt(b_bar / a_bar)).log_prob(w)
    torch.testing.assert_close(extrinsic.double(), (active - inactive).sum((2, 3)), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(prior.inclusion_logit, prior.prior_logit + extrinsic)
    # q(gamma) of every weight then follows its slice's decided inclusion
    expected_shape, _ = update_precision(torch.sigmoid(prior.per_weight(prior.inclusion_logit)),
                                         w.float().reshape(6, -1) ** 2, prior.gamma_parameters())
    torch.testing.assert_close(prior.precision_shape, expected_shape)


def test_kernel_support_turns_off_a_whole_input_channel_and_a_whole_filter():
    layer = _kernel_layer()
    callback = TurboCallback()
    for _ in range(5):  # turbo iterations: module A then BP on the (filters, input channels) grid
        callback.iterate(nn.Sequential(layer))
    inclusion = layer.prior.inclusion(layer).weight
    assert inclusion.shape == layer.weight.shape
    assert (inclusion == inclusion[..., :1, :1]).all()  # one value per kernel slice
    on = inclusion[..., 0, 0] >= 0.5
    expected = torch.ones(6, 4, dtype=torch.bool)
    expected[:, 2] = False
    expected[5] = False
    assert torch.equal(on, expected)


def test_kernel_support_leaves_linear_layers_and_1x1_convolutions_per_weight():
    torch.manual_seed(0)
    for make in (lambda support: BayesLinear(8, 3, prior=HierarchicalPrior(support=support)),
                 lambda support: BayesConv2d(8, 3, 1, prior=HierarchicalPrior(support=support))):
        torch.manual_seed(0)
        per_weight = make("weight")
        torch.manual_seed(0)
        per_kernel = make("kernel")
        torch.testing.assert_close(per_kernel.prior.inclusion_logit, per_weight.prior.inclusion_logit)
        assert per_kernel.prior.inclusion_logit.shape == (3, 8)


def test_the_callback_checks_the_evidence_at_every_iteration_and_warns_once_per_layer(monkeypatch):
    import warnings

    from bayescompress.inference import turbo
    from bayescompress.priors.mrf import BeliefPropagationWarning

    net = bayesianize_(nn.Sequential(nn.Linear(32, 32)), HierarchicalPrior(pi0=0.01))
    logit_pi0 = math.log(0.01) - math.log(0.99)
    strong = torch.where(torch.rand(32, 32, generator=torch.Generator().manual_seed(0)) < 0.5, 8.0, -8.0)
    # module A's evidence: strong at the first iteration, then none (the unary at 0: the couplings decide)
    evidence = iter([strong - logit_pi0, torch.full((32, 32), -logit_pi0), torch.full((32, 32), -logit_pi0)])
    monkeypatch.setattr(turbo, "module_a_", lambda prior, layer: next(evidence))
    callback = turbo.TurboCallback()
    counts = []
    for _ in range(3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            callback.iterate(net)
        counts.append(sum(issubclass(w.category, BeliefPropagationWarning) and "outweigh" in str(w.message)
                          for w in caught))
    assert counts == [0, 1, 0]  # checked only at the first iteration, the weak evidence went unsaid
    assert callback.state_dict()["warned"] == ["0"]
