"""Closed-form KL divergences.

Each function is checked against a Monte-Carlo estimate made with torch distributions in the tests.
"""

from __future__ import annotations

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
