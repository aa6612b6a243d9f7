"""Prior families over the weights of Bayesian layers."""

from bayescompress.priors.base import Prior
from bayescompress.priors.gaussian import GaussianPrior

__all__ = ["Prior", "GaussianPrior"]
