"""Gaussian prior: closed-form KL against Monte Carlo and torch's reference, empirical-Bayes optimum."""

import pytest
import torch.nn.utils.prune as prune
import torch
from torch.distributions import Normal, kl_divergence

from bayescompress.nn import BayesLinear
from bayescompress.priors import GaussianPrior
from bayescompress.priors.kl import kl_normal_normal_sum


def test_normal_kl_matches_monte_carlo_estimate():
    mu, sigma, prior_std = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64), 0.5
    q, p = Normal(mu, sigma), Normal(0.0, prior_std)
    w = q.sample((100_000,))
    mc = (q.log_prob(w) - p.log_prob(w)).mean()
    closed = kl_normal_normal_sum(mu.reshape(1), sigma.reshape(1), prior_std)
    assert abs(closed - mc) / closed <= 0.02


def test_normal_kl_matches_torch_reference():
    mu, sigma = torch.randn(50), torch.rand(50) + 0.01
    expected = kl_divergence(Normal(mu, sigma), Normal(torch.zeros(50), torch.full((50,), 0.3)))
    assert torch.allclose(kl_normal_normal_sum(mu, sigma, 0.3), expected.sum(), rtol=1e-5, atol=1e-6)
    keep = torch.rand(50) > 0.5
    assert torch.allclose(kl_normal_normal_sum(mu, sigma, 0.3, keep), expected[keep].sum(), rtol=1e-5, atol=1e-6)


def test_layer_kl_sums_weights_and_bias_and_skips_pruned_weights():
    layer = BayesLinear(6, 4, prior=GaussianPrior(scale=0.4))
    torch.nn.init.normal_(layer.weight_rho, -2.0, 0.3)
    torch.nn.init.normal_(layer.bias_rho, -2.0, 0.3)
    ref = lambda m, s: kl_divergence(Normal(m, s), Normal(0.0, 0.4)).sum()  # noqa: E731
    expected = ref(layer.weight, layer.weight_sigma) + ref(layer.bias, layer.bias_sigma)
    assert torch.allclose(layer.kl(), expected, rtol=1e-5)

    keep = (torch.rand(4, 6) > 0.5).float()
    prune.custom_from_mask(layer, "weight", keep)
    kept = keep.bool()
    expected = ref(layer.weight_orig[kept], layer.weight_sigma[kept]) + ref(layer.bias, layer.bias_sigma)
    assert torch.allclose(layer.kl(), expected, rtol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_empirical_bayes_update_minimises_the_layer_kl_over_the_scale(bias):
    layer = BayesLinear(10, 5, bias=bias, prior=GaussianPrior(scale=1.0, empirical_bayes=True))
    torch.nn.init.normal_(layer.weight_rho, -3.0, 0.5)
    if bias:  # biases far larger than the weights (a folded BatchNorm's): the weights' optimum alone is 10x off
        with torch.no_grad():
            layer.bias.normal_(0.0, 3.0)
    layer.prior.update(layer)
    best = float(layer.prior.scale)
    best_kl = layer.kl().item()
    for factor in (0.8, 0.95, 1.05, 1.25):
        layer.prior.scale.fill_(best * factor)
        assert layer.kl().item() > best_kl


def test_fixed_scale_prior_update_changes_nothing():
    layer = BayesLinear(3, 2, prior=GaussianPrior(scale=0.2))
    layer.prior.update(layer)
    assert float(layer.prior.scale) == pytest.approx(0.2)


def test_scale_is_a_buffer_in_the_state_dict():
    layer = BayesLinear(3, 2, prior=GaussianPrior(scale=0.2))
    assert "prior.scale" in layer.state_dict()


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_non_positive_scale_is_refused(scale):
    with pytest.raises(ValueError, match="scale"):
        GaussianPrior(scale=scale)


def test_normal_kl_gradient_matches_finite_differences_and_is_zero_for_pruned_entries():
    mu = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    sigma = (torch.rand(4, 3, dtype=torch.float64) + 0.1).requires_grad_()
    prior_std = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    keep = (torch.rand(4, 3) > 0.5).float()
    assert torch.autograd.gradcheck(kl_normal_normal_sum, (mu, sigma, prior_std))
    assert torch.autograd.gradcheck(lambda m, s, p: kl_normal_normal_sum(m, s, p, keep), (mu, sigma, prior_std))
    kl_normal_normal_sum(mu, sigma, prior_std, keep).backward()
    pruned = keep == 0
    assert (mu.grad[pruned] == 0).all() and (sigma.grad[pruned] == 0).all()
