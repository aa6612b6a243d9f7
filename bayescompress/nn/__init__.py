"""Bayesian layers and whole-model operations."""

from bayescompress.nn.layers import (
    BAYESIAN_TYPES,
    ESTIMATORS,
    BayesConv2d,
    BayesianLayer,
    BayesLinear,
    PosteriorInit,
    is_handled_layer,
)
from bayescompress.nn.model import (
    bayesian_layers,
    bayesianize_,
    execution_order,
    fold_multipliers_,
    handled_layers,
    kl_divergence,
    mc_sampling,
    shared_sigma,
    output_layers,
    predict,
    set_estimator_,
    unhandled_modules,
    update_priors,
)

__all__ = [
    "BAYESIAN_TYPES",
    "ESTIMATORS",
    "BayesConv2d",
    "BayesianLayer",
    "BayesLinear",
    "PosteriorInit",
    "bayesian_layers",
    "bayesianize_",
    "execution_order",
    "fold_multipliers_",
    "handled_layers",
    "is_handled_layer",
    "kl_divergence",
    "mc_sampling",
    "shared_sigma",
    "output_layers",
    "predict",
    "set_estimator_",
    "unhandled_modules",
    "update_priors",
]
