"""bayescompress: structured Bayesian compression of neural networks with hierarchical sparsity priors."""

from bayescompress.inference import Callback, TrainConfig, fit
from bayescompress.metrics import classification_metrics, evaluate
from bayescompress.nn import (
    BayesConv2d,
    BayesLinear,
    PosteriorInit,
    bayesianize_,
    kl_divergence,
    predict,
)
from bayescompress.priors import GaussianPrior, Prior

__version__ = "0.1.0"

__all__ = [
    "BayesConv2d",
    "BayesLinear",
    "Callback",
    "GaussianPrior",
    "PosteriorInit",
    "Prior",
    "TrainConfig",
    "bayesianize_",
    "classification_metrics",
    "evaluate",
    "fit",
    "kl_divergence",
    "predict",
]
