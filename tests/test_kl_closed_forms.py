"""Closed-form KLs of bayescompress.priors.kl against independent references: Monte Carlo with torch / pyro
distributions (seeded by the conftest fixture), torch's registered KLs, and a KS test of the half-Cauchy
scale-mixture identity that the Gamma x InvGamma KL pair relies on."""


import pytest
import scipy.stats
import torch
from pyro.distributions import InverseGamma
from torch.distributions import Bernoulli, Gamma, LogNormal, Normal, kl_divergence

from bayescompress.priors.kl import (
    kl_bernoulli,
    kl_lognormal_gamma,
    kl_lognormal_invgamma,
    kl_normal_normal,
)

N_MC = 100_000
# Closed-form KL and the reference family it is the KL against (InverseGamma's rate is the InvGamma scale).
FAMILIES = {"gamma": (kl_lognormal_gamma, Gamma), "invgamma": (kl_lognormal_invgamma, InverseGamma)}


def t(x):
    return torch.as_tensor(x, dtype=torch.float64)


def mc_kl(q, log_p):
    x = q.sample((N_MC,))
    return (q.log_prob(x) - log_p(x)).mean()


# Chosen so that for both families the KL is O(1) and the MC standard error is <= 0.5%: 2% is >= 4 sigma.
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "m, v, shape, rate", [(1.0, 0.3, 0.5, 2.0), (0.5, 0.1, 5.0, 1.0), (-1.0, 0.2, 0.5, 3.0), (-2.0, 0.05, 0.5, 0.1)]
)
def test_lognormal_kl_matches_monte_carlo(family, m, v, shape, rate):
    kl, prior = FAMILIES[family]
    q = LogNormal(t(m), t(v).sqrt())  # torch's LogNormal takes the std of the log
    mc = mc_kl(q, prior(t(shape), t(rate)).log_prob)
    closed = kl(t(m), t(v), t(shape), t(rate))
    assert abs(closed - mc) <= 0.02 * closed


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "m, v, shape, m_r, v_r", [(1.0, 0.3, 0.5, 0.5, 0.5), (-1.0, 0.3, 0.5, -0.5, 0.8), (0.5, 0.1, 5.0, 0.0, 0.3)]
)
def test_expected_kl_under_lognormal_random_rate(family, m, v, shape, m_r, v_r):
    kl, prior = FAMILIES[family]
    q, q_rate = LogNormal(t(m), t(v).sqrt()), LogNormal(t(m_r), t(v_r).sqrt())
    # One rate drawn per sample of x: the MC average is over the joint (x, r).
    mc = mc_kl(q, lambda x: prior(t(shape), q_rate.sample((N_MC,))).log_prob(x))
    closed = kl(t(m), t(v), t(shape), q_rate.mean, t(m_r))
    assert abs(closed - mc) <= 0.02 * closed


def test_bernoulli_kl_matches_torch_broadcasting():
    g, lam = torch.rand(5, 4, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    expected = kl_divergence(Bernoulli(probs=g), Bernoulli(probs=lam.expand(5, 4)))
    assert torch.allclose(kl_bernoulli(g, lam), expected, rtol=1e-10, atol=1e-12)


def test_bernoulli_kl_exactly_zero_at_prior_and_finite_at_the_ends():
    g = torch.rand(1000)
    assert (kl_bernoulli(g, g) == 0).all()

    g = torch.tensor([0.0, 1.0, 0.3], dtype=torch.float64, requires_grad=True)
    lam = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64, requires_grad=True)
    kl = kl_bernoulli(g, lam)
    # The limits 0 log 0 = 0: KL(Bern(0) || Bern(lam)) = -log(1 - lam), KL(Bern(1) || Bern(lam)) = -log(lam).
    assert torch.allclose(kl[:2], -torch.log(torch.tensor([0.8, 0.2], dtype=torch.float64)))
    kl.sum().backward()
    assert torch.isfinite(g.grad[2]) and torch.isfinite(lam.grad).all()


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 3, 3)])
@pytest.mark.parametrize("per_row_prior", [False, True])
def test_elementwise_normal_kl_matches_torch(shape, per_row_prior):
    mu, sigma = torch.randn(shape), torch.rand(shape) + 0.05
    prior_std = torch.rand(shape[0], *[1] * (len(shape) - 1)) + 0.1 if per_row_prior else 0.5
    expected = kl_divergence(Normal(mu, sigma), Normal(0.0, torch.as_tensor(prior_std).expand(shape)))
    assert torch.allclose(kl_normal_normal(mu, sigma, prior_std), expected, rtol=1e-5)


@pytest.mark.parametrize("A", [1.0, 2.5])
def test_gamma_invgamma_scale_mixture_is_half_cauchy(A):
    n = 20_000
    a = Gamma(t(0.5), t(1 / A**2)).sample((n,))
    b = InverseGamma(t(0.5), t(1.0)).sample((n,))
    s = torch.sqrt(a * b).numpy()
    assert scipy.stats.kstest(s, scipy.stats.halfcauchy(scale=A).cdf).pvalue > 0.01
    # The test has power: the same sample is clearly not HalfCauchy(2A).
    assert scipy.stats.kstest(s, scipy.stats.halfcauchy(scale=2 * A).cdf).pvalue < 1e-3
