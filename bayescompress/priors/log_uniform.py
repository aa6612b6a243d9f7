"""The log-uniform prior of sparse variational dropout (Molchanov et al. 2017).

p(|w|) proportional to 1/|w| is improper and scale-free; under it the KL of a Gaussian posterior N(mu, sigma^2)
depends only on the dropout rate alpha = sigma^2 / mu^2, and it pushes alpha up: a weight whose log alpha
passes 3 is noise and is pruned.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bayescompress._validation import check_in_range, check_positive
from bayescompress.priors.base import Prior, masked_sum
from bayescompress.priors.kl import kl_log_uniform


class LogUniformPrior(Prior):
    """Log-uniform prior on every weight (biases have none: they stay as free as in the authors' code).

    Parameters
    ----------
    log_alpha_clip:
        log alpha is clipped to [-clip, clip] inside the KL, as in the authors' code: beyond it the
        approximation's gradient is negligible and log(mu^2) of a weight at zero is -inf.
    train_clip:
        in the sampled passes, a weight whose log alpha exceeds this enters with mean 0 (None = never; the
        authors' LeNet training clips at their pruning threshold, 3). The data then no longer pull a weight
        the posterior calls noise back into use, so only the KL acts on it and it stays pruned; without it
        the weights just below the threshold hold on, and many stay kept.

    Example
    -------
    >>> from bayescompress.nn import BayesLinear
    >>> layer = BayesLinear(4, 2, prior=LogUniformPrior())
    >>> bool(layer.prior.kl(layer) > 0)
    True
    """

    def __init__(self, log_alpha_clip: float = 8.0, train_clip: float | None = None) -> None:
        super().__init__()
        check_positive("log_alpha_clip", log_alpha_clip)
        if train_clip is not None:
            check_in_range("train_clip", train_clip, -log_alpha_clip, log_alpha_clip)
        self.log_alpha_clip = float(log_alpha_clip)
        self.train_clip = None if train_clip is None else float(train_clip)

    def log_alpha(self, layer) -> Tensor:
        """log(sigma^2 / mu^2) per weight, clipped to [-clip, clip]."""
        log_alpha = 2.0 * (torch.log(layer.weight_sigma) - torch.log(layer.weight.abs() + 1e-16))
        return log_alpha.clamp(-self.log_alpha_clip, self.log_alpha_clip)

    def sampled_weight_mean(self, layer) -> Tensor:
        if self.train_clip is None:
            return layer.weight
        with torch.no_grad():  # log alpha > t is sigma > e^(t/2) |mu|, without the logs; the cut is not differentiated
            noise = layer.weight_sigma > math.exp(self.train_clip / 2) * layer.weight.abs()
        return layer.weight.masked_fill(noise, 0.0)

    def kl(self, layer) -> Tensor:
        return masked_sum(kl_log_uniform(self.log_alpha(layer)), layer.weight_keep)

    @torch.no_grad()
    def statistics(self, layer) -> dict[str, Tensor]:
        return {**super().statistics(layer), "log_alpha": self.log_alpha(layer)}

    def extra_repr(self) -> str:
        clip = "" if self.train_clip is None else f", train_clip={self.train_clip:g}"
        return f"log_alpha_clip={self.log_alpha_clip:g}{clip}"
