"""Closed-form KL divergences.

Each function is checked against a Monte-Carlo estimate made with torch distributions in the tests.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def kl_normal_normal_sum(mu: Tensor, sigma: Tensor, prior_std: Tensor | float, keep: Tensor | None = None) -> Tensor:
    """Sum over the entries ``keep`` marks (all when None) of KL(N(mu, sigma^2) || N(0, prior_std^2)).

    Written with reductions (two dot products, one log-sum) instead of an elementwise KL, which halves the
    full-size temporaries: this runs on every mini-batch over every weight. (``vector_norm`` would be the
    obvious spelling, but its backward guards against a zero norm with an extra full-size pass.)
    """
    if keep is not None:
        kept = keep.bool()
        mu, sigma = mu[kept], sigma[kept]
    prior_var = torch.as_tensor(prior_std, dtype=mu.dtype, device=mu.device) ** 2
    n = mu.numel()
    mu, sigma = mu.reshape(-1), sigma.reshape(-1)
    second_moment = torch.dot(mu, mu) + torch.dot(sigma, sigma)
    return 0.5 * (n * (torch.log(prior_var) - 1.0) - 2.0 * torch.log(sigma).sum() + second_moment / prior_var)


def _like(x: Tensor | float, ref: Tensor) -> Tensor:
    return torch.as_tensor(x, dtype=ref.dtype, device=ref.device)


def kl_bernoulli(g: Tensor, lam: Tensor | float) -> Tensor:
    """Elementwise KL(Bern(g) || Bern(lam)) = g log(g/lam) + (1-g) log((1-g)/(1-lam)).

    Written as (g log g - g log lam) + ((1-g) log(1-g) - (1-g) log(1-lam)) with ``entr`` / ``xlogy``, so
    0 log 0 = 0 (the KL is finite at g in {0, 1}), each bracket is exactly 0 when g == lam, the gradient in
    ``lam`` stays finite at g in {0, 1}, and the gradient in ``g`` there is the true -inf / +inf rather than NaN.
    """
    lam = _like(lam, g)
    return (-torch.special.entr(g) - torch.xlogy(g, lam)) + (-torch.special.entr(1 - g) - torch.xlogy(1 - g, 1 - lam))


def kl_lognormal_gamma(
    m: Tensor, v: Tensor, shape: Tensor | float, rate: Tensor | float, log_rate: Tensor | float | None = None
) -> Tensor:
    """Elementwise KL(LogNormal(m, v) || Gamma(shape, rate)), v the variance of the log (not its std):

        -m - 1/2 log(2 pi e v) - shape log_rate + lgamma(shape) - (shape-1) m + rate exp(m + v/2),

    with ``log_rate`` = log(rate) by default. The KL is linear in log(rate) and rate, so when the rate is itself
    random (a latent variable with its own, e.g. log-normal, posterior, independent of this one), passing
    rate = E[r] and log_rate = E[log r] gives the expected KL E_r[KL(LogNormal(m, v) || Gamma(shape, r))].
    """
    shape, rate = _like(shape, m), _like(rate, m)
    log_rate = torch.log(rate) if log_rate is None else _like(log_rate, m)
    # The two m terms of the formula merged: -m - (shape-1) m = -shape m.
    return (
        -shape * (m + log_rate)
        - 0.5 * torch.log(2 * math.pi * math.e * v)
        + torch.lgamma(shape)
        + rate * torch.exp(m + 0.5 * v)
    )


def kl_lognormal_invgamma(
    m: Tensor, v: Tensor, shape: Tensor | float, scale: Tensor | float, log_scale: Tensor | float | None = None
) -> Tensor:
    """Elementwise KL(LogNormal(m, v) || InvGamma(shape, scale)), v the variance of the log (not its std):

        -m - 1/2 log(2 pi e v) - shape log_scale + lgamma(shape) + (shape+1) m + scale exp(-m + v/2),

    InvGamma(shape, scale) having density scale^shape / Gamma(shape) x^(-shape-1) exp(-scale / x), and
    ``log_scale`` = log(scale) by default. As for :func:`kl_lognormal_gamma`, the KL is linear in log(scale) and
    scale, so scale = E[s] and log_scale = E[log s] give the expected KL when the scale s is itself random
    (independent of this variable).
    """
    shape, scale = _like(shape, m), _like(scale, m)
    log_scale = torch.log(scale) if log_scale is None else _like(log_scale, m)
    # The two m terms of the formula merged: -m + (shape+1) m = shape m.
    return (
        shape * (m - log_scale)
        - 0.5 * torch.log(2 * math.pi * math.e * v)
        + torch.lgamma(shape)
        + scale * torch.exp(-m + 0.5 * v)
    )


def kl_normal_normal(mu: Tensor, sigma: Tensor, prior_std: Tensor | float) -> Tensor:
    """Elementwise KL(N(mu, sigma^2) || N(0, prior_std^2)) = log(prior_std / sigma) + (sigma^2 + mu^2) / (2 prior_std^2) - 1/2."""
    prior_std = _like(prior_std, mu)
    return torch.log(prior_std / sigma) + (sigma * sigma + mu * mu) / (2 * prior_std**2) - 0.5


def kl_normal_normal_rows(mu: Tensor, sigma: Tensor, prior_std: Tensor | float) -> Tensor:
    """Per output unit (row) sums of :func:`kl_normal_normal`, summed over every dim but dim 0: mu of shape
    (out, ...) gives shape (out,). ``prior_std`` broadcasts (a scalar, or one value per row of shape (out, 1, ...)).
    """
    return kl_normal_normal(mu, sigma, prior_std).flatten(1).sum(1)
