"""Closed-form KL divergences.

Each function is checked against a Monte-Carlo estimate made with torch distributions in the tests.
"""

from __future__ import annotations

import torch
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
