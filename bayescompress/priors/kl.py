"""Closed-form KL divergences.

Each function is checked against a Monte-Carlo estimate made with torch distributions in the tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class _NormalKLSum(torch.autograd.Function):
    """The summed Gaussian KL with a hand-written backward.

    It runs on every mini-batch over every weight, and autograd's graph of the same formula (log, two dot
    products, their sum) costs about twice as many full-size passes in the backward as the closed-form
    gradients dKL/dmu = mu/s0^2 and dKL/dsigma = sigma/s0^2 - 1/sigma need.
    """

    @staticmethod
    def forward(ctx, mu: Tensor, sigma: Tensor, prior_var: Tensor, keep: Tensor | None) -> Tensor:
        if keep is None:
            count = torch.tensor(float(mu.numel()), dtype=mu.dtype, device=mu.device)
            log_sigma = torch.log(sigma)
        else:
            kept = keep.bool()
            count = kept.sum().to(mu.dtype)
            mu = torch.where(kept, mu, 0.0)
            # where, not a product: a pruned sigma may have underflowed to 0, and 0 * log(0) is nan
            log_sigma = torch.log(torch.where(kept, sigma, 1.0))
            sigma = torch.where(kept, sigma, 0.0)
        second_moment = torch.dot(mu.reshape(-1), mu.reshape(-1)) + torch.dot(sigma.reshape(-1), sigma.reshape(-1))
        ctx.save_for_backward(mu, sigma, prior_var, keep, count, second_moment)
        return 0.5 * (count * (torch.log(prior_var) - 1.0) - 2.0 * log_sigma.sum() + second_moment / prior_var)

    @staticmethod
    def backward(ctx, grad: Tensor):
        mu, sigma, prior_var, keep, count, second_moment = ctx.saved_tensors
        scaled = grad / prior_var
        grad_mu = grad_sigma = grad_prior_var = None
        if ctx.needs_input_grad[0]:
            grad_mu = mu * scaled  # mu is already zero at pruned entries
        if ctx.needs_input_grad[1]:
            grad_sigma = torch.div(-grad, sigma)
            if keep is not None:
                grad_sigma = torch.where(keep.bool(), grad_sigma, 0.0)
            grad_sigma.addcmul_(sigma, scaled)
        if ctx.needs_input_grad[2]:
            grad_prior_var = 0.5 * grad * (count - second_moment / prior_var) / prior_var
        return grad_mu, grad_sigma, grad_prior_var, None


def kl_normal_normal_sum(mu: Tensor, sigma: Tensor, prior_std: Tensor | float, keep: Tensor | None = None) -> Tensor:
    """Sum over the entries ``keep`` marks (all when None) of KL(N(mu, sigma^2) || N(0, prior_std^2)).

    Differentiable in ``mu``, ``sigma`` and ``prior_std``; a pruned entry contributes nothing and gets a zero
    gradient.
    """
    prior_std = torch.as_tensor(prior_std, dtype=mu.dtype, device=mu.device)
    return _NormalKLSum.apply(mu, sigma, prior_std * prior_std, keep)


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



# Molchanov et al. (2017), eq. 14: the constants of their fit of -KL(N(theta, alpha theta^2) || log-uniform).
_VD_K1, _VD_K2, _VD_K3 = 0.63576, 1.87320, 1.48695


def kl_log_uniform(log_alpha: Tensor) -> Tensor:
    """Elementwise KL(N(theta, alpha theta^2) || log-uniform) by Molchanov et al.'s (2017) approximation,

        k1 - k1 sigmoid(k2 + k3 log alpha) + 1/2 log(1 + 1/alpha),

    with the constant chosen so the KL tends to 0 as alpha -> inf (the improper prior's KL is defined up to a
    constant). It depends on the weight only through alpha = sigma^2 / theta^2.
    """
    return _VD_K1 - _VD_K1 * torch.sigmoid(_VD_K2 + _VD_K3 * log_alpha) + 0.5 * F.softplus(-log_alpha)
