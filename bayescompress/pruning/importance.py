"""Importance scores (higher = more worth keeping), separate from the strategies that threshold them.

Weight-level scores have the weight's shape; unit-level scores have one entry per output unit, where a
unit's row is its incoming weights (the whole kernel for a conv filter).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bayescompress.nn.layers import BayesianLayer
from bayescompress.pruning.masks import current_weight


def _require_bayesian(layer: nn.Module, score: str) -> BayesianLayer:
    if not isinstance(layer, BayesianLayer):
        raise TypeError(f"{score} needs a Bayesian layer (posterior sigma); got {type(layer).__name__}")
    return layer


@torch.no_grad()
def weight_snr(layer: nn.Module) -> Tensor:
    """|mu| / sigma per weight (Carannante et al.'s self-compression score)."""
    layer = _require_bayesian(layer, "SNR")
    return current_weight(layer).abs() / layer.weight_sigma.detach().clamp_min(1e-12)


@torch.no_grad()
def unit_snr(layer: nn.Module) -> Tensor:
    """||mu_j|| / sqrt(sum sigma_j^2) per output unit (Frobenius norm of a conv kernel)."""
    layer = _require_bayesian(layer, "SNR")
    mu = current_weight(layer).flatten(1)
    variance = (layer.weight_sigma.detach() ** 2).flatten(1)
    return mu.norm(dim=1) / variance.sum(dim=1).sqrt().clamp_min(1e-12)


def folded_normal_mean(mu: Tensor, sigma: Tensor) -> Tensor:
    """E|theta| for theta ~ N(mu, sigma^2): sigma sqrt(2/pi) exp(-mu^2 / 2 sigma^2) + mu (1 - 2 Phi(-mu/sigma))."""
    z = mu / sigma
    return sigma * math.sqrt(2 / math.pi) * torch.exp(-0.5 * z * z) + mu * torch.erf(z / math.sqrt(2))


def folded_normal_snr(mu: Tensor, sigma: Tensor) -> Tensor:
    """E|theta| / sd|theta| for theta ~ N(mu, sigma^2), with Var|theta| = mu^2 + sigma^2 - E|theta|^2: SSVI's
    default removal score (high when |theta| is reliably away from 0)."""
    mean = folded_normal_mean(mu, sigma)
    return mean / (mu * mu + sigma * sigma - mean * mean).clamp_min(1e-24).sqrt()


@torch.no_grad()
def removal_score(layer: nn.Module, score: str, unit: bool = False) -> Tensor:
    """SSVI's removal scores (higher = keep), per weight: ``"magnitude"`` |mu|, ``"snr"`` |mu|/sigma,
    ``"folded_mean"`` E|theta|, ``"folded_snr"`` E|theta| / sd|theta|. With ``unit``, their group form per output
    unit (its row of weights, a whole kernel for a filter): ||mu||, ||mu|| / sqrt(sum sigma^2), sum E|theta|,
    sum E|theta| / sqrt(sum Var|theta|), which are the per-weight scores for a group of one."""
    if score not in REMOVAL_SCORES:
        raise ValueError(f"unknown removal score {score!r}; valid ones: {', '.join(REMOVAL_SCORES)}")
    mu = current_weight(layer)
    rows = (lambda t: t.flatten(1)) if unit else (lambda t: t.reshape(*t.shape, 1))
    if score == "magnitude":
        return rows(mu).norm(dim=-1)
    layer = _require_bayesian(layer, f"the {score} score")
    sigma = layer.weight_sigma.detach().clamp_min(1e-12)
    if score == "snr":
        return rows(mu).norm(dim=-1) / rows(sigma * sigma).sum(dim=-1).sqrt()
    mean = folded_normal_mean(mu, sigma)
    if score == "folded_mean":
        return rows(mean).sum(dim=-1)
    variance = (mu * mu + sigma * sigma - mean * mean).clamp_min(1e-24)
    return rows(mean).sum(dim=-1) / rows(variance).sum(dim=-1).sqrt()


REMOVAL_SCORES = ("magnitude", "snr", "folded_mean", "folded_snr")


@torch.no_grad()
def weight_magnitude(layer: nn.Module) -> Tensor:
    """|w| per weight: the non-Bayesian baseline (works on plain layers too)."""
    return current_weight(layer).abs()


@torch.no_grad()
def inclusion_probability(layer: nn.Module, level: str) -> Tensor:
    """A prior's posterior inclusion probabilities at ``level`` ("weight", "unit" or "input"), from
    ``layer.prior.inclusion(layer)`` (:class:`~bayescompress.priors.base.Inclusion`)."""
    layer = _require_bayesian(layer, "inclusion-threshold pruning")
    probs = getattr(layer.prior.inclusion(layer), level)
    if probs is None:
        raise ValueError(
            f"{type(layer.prior).__name__} has no {level}-level inclusion probabilities; inclusion-threshold "
            "pruning needs a prior with support variables (HierarchicalPrior, SpikeSlabGroupLasso, "
            "SpikeSlabGroupHorseshoe)"
        )
    return probs


@torch.no_grad()
def sweep_scores(layer: nn.Module) -> Tensor:
    """The score a sweep ranks ``layer``'s weights by: the posterior inclusion probability where the prior has
    one per weight (Turbo-VBI), else the SNR |mu|/sigma (Bayesian layers) or |w| (plain ones); times the unit's
    and the input's inclusion probability where the prior gates them (spike-and-slab), so a gated-off unit
    goes first. Every score is scale-free or a probability, so one ranking spans all layers."""
    if not isinstance(layer, BayesianLayer):
        return current_weight(layer).abs()
    inclusion = layer.prior.inclusion(layer)
    score = inclusion.weight.clone() if inclusion.weight is not None else weight_snr(layer)
    if inclusion.unit is not None:
        score = score * inclusion.unit.view(-1, *([1] * (score.dim() - 1)))
    if inclusion.input is not None:
        score = score * inclusion.input.view(1, -1, *([1] * (score.dim() - 2)))
    return score
