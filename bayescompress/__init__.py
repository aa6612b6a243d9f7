"""bayescompress: structured Bayesian compression of neural networks with hierarchical sparsity priors."""

from bayescompress import methods
from bayescompress.compare import Comparison, compare
from bayescompress.compress import AccuracyLossWarning, PipelineConfig, compress
from bayescompress.inference import Callback, TrainConfig, TurboCallback, fit
from bayescompress.methods import (
    GaussianSNR,
    GaussianSNRConfig,
    Magnitude,
    MagnitudeConfig,
    Method,
    MethodConfig,
    SSVI,
    SparseVD,
    SparseVDConfig,
    SpikeSlabConfig,
    SpikeSlabGHS,
    SpikeSlabGL,
    SpikeSlabHorseshoeConfig,
    SSVIConfig,
    TurboVBI,
    TurboVBIConfig,
)
from bayescompress.metrics import classification_metrics, evaluate
from bayescompress.nn import (
    BayesConv2d,
    BayesLinear,
    PosteriorInit,
    bayesianize_,
    kl_divergence,
    predict,
)
from bayescompress.priors import GaussianPrior, HierarchicalPrior, LogUniformPrior, Prior, SpikeSlabGroupHorseshoe, SpikeSlabGroupLasso
from bayescompress.runs import CompressionResult, load

__version__ = "0.1.0"

__all__ = [
    "AccuracyLossWarning",
    "BayesConv2d",
    "BayesLinear",
    "Callback",
    "Comparison",
    "CompressionResult",
    "GaussianPrior",
    "GaussianSNR",
    "GaussianSNRConfig",
    "HierarchicalPrior",
    "LogUniformPrior",
    "Magnitude",
    "MagnitudeConfig",
    "Method",
    "MethodConfig",
    "PipelineConfig",
    "PosteriorInit",
    "Prior",
    "SSVI",
    "SSVIConfig",
    "SparseVD",
    "SparseVDConfig",
    "SpikeSlabConfig",
    "SpikeSlabGHS",
    "SpikeSlabGL",
    "SpikeSlabGroupHorseshoe",
    "SpikeSlabGroupLasso",
    "SpikeSlabHorseshoeConfig",
    "TrainConfig",
    "TurboCallback",
    "TurboVBI",
    "TurboVBIConfig",
    "bayesianize_",
    "classification_metrics",
    "compare",
    "compress",
    "evaluate",
    "fit",
    "kl_divergence",
    "load",
    "methods",
    "predict",
]
