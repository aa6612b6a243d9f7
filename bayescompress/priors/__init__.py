"""Prior families over the weights of Bayesian layers."""

from bayescompress.priors.base import Inclusion, Prior
from bayescompress.priors.gaussian import GaussianPrior
from bayescompress.priors.hierarchical import HierarchicalPrior
from bayescompress.priors.log_uniform import LogUniformPrior
from bayescompress.priors.spike_slab import SpikeSlabGroupHorseshoe, SpikeSlabGroupLasso, SpikeSlabPrior

__all__ = ["Inclusion", "Prior", "GaussianPrior", "HierarchicalPrior", "LogUniformPrior", "SpikeSlabGroupHorseshoe", "SpikeSlabGroupLasso", "SpikeSlabPrior"]
