"""bayescompress: structured Bayesian compression of neural networks with hierarchical sparsity priors."""

from bayescompress.compress import CompressConfig, compress
from bayescompress.inference import Callback, TrainConfig, TurboCallback, fit
from bayescompress.metrics import classification_metrics, evaluate
from bayescompress.nn import (
    BayesConv2d,
    BayesLinear,
    PosteriorInit,
    bayesianize_,
    kl_divergence,
    predict,
)
from bayescompress.priors import GaussianPrior, HierarchicalPrior, Prior, SpikeSlabGroupHorseshoe, SpikeSlabGroupLasso
from bayescompress.runs import CompressionResult, load

__version__ = "0.1.0"

__all__ = [
    "BayesConv2d",
    "BayesLinear",
    "Callback",
    "CompressConfig",
    "CompressionResult",
    "GaussianPrior",
    "HierarchicalPrior",
    "PosteriorInit",
    "Prior",
    "SpikeSlabGroupHorseshoe",
    "SpikeSlabGroupLasso",
    "TrainConfig",
    "TurboCallback",
    "bayesianize_",
    "classification_metrics",
    "compress",
    "evaluate",
    "fit",
    "kl_divergence",
    "load",
    "predict",
]
