"""Bayesian layers and whole-model operations."""

from bayescompress.nn.layers import BAYESIAN_TYPES, BayesConv2d, BayesianLayer, BayesLinear, PosteriorInit
from bayescompress.nn.model import (
    bayesian_layers,
    bayesianize_,
    fold_multipliers_,
    kl_divergence,
    mc_sampling,
    predict,
    update_priors,
)

__all__ = [
    "BAYESIAN_TYPES",
    "BayesConv2d",
    "BayesianLayer",
    "BayesLinear",
    "PosteriorInit",
    "bayesian_layers",
    "bayesianize_",
    "fold_multipliers_",
    "kl_divergence",
    "mc_sampling",
    "predict",
    "update_priors",
]
