"""Gaussian prior N(0, s0^2) on every weight and bias: the dense VI baseline (SPEC section 1)."""

from __future__ import annotations

import torch
from torch import Tensor

from bayescompress._validation import check_positive
from bayescompress.priors.base import Prior, masked_sum
from bayescompress.priors.kl import kl_normal_normal_sum


class GaussianPrior(Prior):
    """Isotropic Gaussian prior with standard deviation ``scale``.

    Parameters
    ----------
    scale:
        Prior standard deviation s0 (> 0).
    empirical_bayes:
        If True, :meth:`update` sets s0^2 to the value that minimises the layer's KL,
        mean(mu^2 + sigma^2) over its un-pruned weights and its biases (the KL's terms) — a per-layer
        learned scale, since a fixed Gaussian prior is a weak sparsifier (SPEC section 5).

    Example
    -------
    >>> from bayescompress.nn import BayesLinear
    >>> layer = BayesLinear(4, 2, prior=GaussianPrior(scale=0.1))
    >>> bool(layer.prior.kl(layer) > 0)
    True
    """

    def __init__(self, scale: float = 1.0, empirical_bayes: bool = False) -> None:
        super().__init__()
        check_positive("scale", scale)
        self.empirical_bayes = bool(empirical_bayes)
        self.register_buffer("scale", torch.tensor(float(scale)))

    def kl(self, layer) -> Tensor:
        total = kl_normal_normal_sum(layer.weight, layer.weight_sigma, self.scale, layer.weight_keep)
        if layer.bias is not None:
            total = total + kl_normal_normal_sum(layer.bias, layer.bias_sigma, self.scale)
        return total

    @torch.no_grad()
    def update(self, layer) -> None:
        if not self.empirical_bayes:
            return
        keep = layer.weight_keep
        total = masked_sum(layer.weight**2 + layer.weight_sigma**2, keep)
        count = layer.weight.numel() if keep is None else int(keep.sum())
        if layer.bias is not None:  # the KL puts the biases under the same scale: a folded BatchNorm's are large
            total = total + (layer.bias**2 + layer.bias_sigma**2).sum()
            count += layer.bias.numel()
        if count:
            self.scale.fill_(float(total / count) ** 0.5)

    def extra_repr(self) -> str:
        return f"scale={float(self.scale):.4g}, empirical_bayes={self.empirical_bayes}"
