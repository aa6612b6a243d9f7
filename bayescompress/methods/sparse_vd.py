"""``sparse-vd``: sparse variational dropout (Molchanov, Ashukha and Vetrov, ICML 2017), the baseline the
papers of this field report against.

Convert under the log-uniform prior, train by VI (the local reparameterisation trick with the variance as its
own parameter, i.e. the additive-noise form; with ``train_clip`` the weights already past the threshold enter the
training passes' mean as 0, as in the authors' LeNet runs), prune every weight whose dropout rate log alpha =
log(sigma^2 / mu^2) exceeds ``log_alpha_threshold``. No fine-tuning by default (the authors have none); when
asked, the survivors are fine-tuned under a Gaussian prior N(0, ``prior_scale``^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from bayescompress.methods.base import VariationalConfig, VariationalMethod
from bayescompress.nn.model import fold_multipliers_
from bayescompress.priors import GaussianPrior, LogUniformPrior
from bayescompress.pruning import SNRPruning
from bayescompress.settings import Flag, Real, setting


@dataclass(frozen=True, kw_only=True)
class SparseVDConfig(VariationalConfig):
    """Settings of ``sparse-vd``; the defaults follow the authors' LeNet setting, shortened (docs/benchmarks.md)."""

    # the fine-tuning's prior acts only after the training (the threshold is train_clip's too)
    after_training: ClassVar[frozenset[str]] = VariationalConfig.after_training | {"prior_scale"}

    epochs: int = VariationalConfig.override("epochs", 20)
    # the authors' log sigma^2 = -10 at the start: sigma = e^-5
    init_rho: float | None = VariationalConfig.override("init_rho", -5.0)
    kl_warmup_epochs: int = VariationalConfig.override("kl_warmup_epochs", 5)
    log_alpha_threshold: float = setting(3.0, "prune the weights with log(sigma^2 / mu^2) above this",
                                         Real(-8.0, 8.0))
    train_clip: bool = setting(True, "in training, weights past log_alpha_threshold enter the mean pass as 0 (the "
                               "authors' train_clip): the data stop holding back what the posterior calls noise; "
                               "off, far fewer weights reach the threshold", Flag())
    finetune_epochs: int = VariationalConfig.override("finetune_epochs", 0)


class SparseVD(VariationalMethod):
    """Log-uniform prior, VI, pruning by dropout rate; see the module docstring."""

    name = "sparse-vd"
    config_class = SparseVDConfig

    def prior(self, config: SparseVDConfig) -> LogUniformPrior:
        return LogUniformPrior(train_clip=config.log_alpha_threshold if config.train_clip else None)

    def before_finetune(self, network, config: SparseVDConfig, masks) -> list:
        # the survivors are fine-tuned (when asked) under a Gaussian prior, as every other method's are: the
        # log-uniform prior would keep pushing them towards zero
        fold_multipliers_(network, GaussianPrior(scale=config.prior_scale))
        return []

    def strategy(self, config: SparseVDConfig) -> SNRPruning:
        # log alpha = -2 log(|mu| / sigma), so log alpha <= t is SNR >= exp(-t / 2)
        return SNRPruning(threshold=math.exp(-config.log_alpha_threshold / 2))


__all__ = ["SparseVD", "SparseVDConfig"]
