"""``gaussian-snr``: self-compression by signal-to-noise ratio (Carannante et al. 2020; SPEC section 5).

Convert to a mean-field Bayesian network under a Gaussian prior N(0, s0^2), train it by VI, keep the weights
(or whole units) with the highest |mu|/sigma, fine-tune the survivors by masked VI under the same prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bayescompress.methods.base import VariationalConfig, VariationalMethod
from bayescompress.priors import GaussianPrior
from bayescompress.pruning import SNRPruning
from bayescompress.settings import Choice, Real, setting


@dataclass(frozen=True, kw_only=True)
class GaussianSNRConfig(VariationalConfig):
    """Settings of ``gaussian-snr``; the defaults are the LeNet-300-100 recipe (docs/benchmarks.md)."""

    # the pruning rule acts only after the training (prior_scale is the training's prior here)
    after_training: ClassVar[frozenset[str]] = (
        VariationalConfig.after_training | {"keep_fraction", "snr_threshold", "level"})

    epochs: int = VariationalConfig.override("epochs", 5)
    prior_scale: float = setting(0.5, "standard deviation s0 of the Gaussian prior (before pruning and in the "
                                 "fine-tuning)", Real(0.0, low_open=True))
    keep_fraction: float = setting(0.09, "fraction of the weights (of each layer's units, at level unit) kept",
                                   Real(0.0, 1.0, low_open=True, high_open=True))
    snr_threshold: float | None = setting(None, "keep SNR >= this instead of a fraction (none = keep_fraction)",
                                          Real(0.0, optional=True))
    level: str = setting("weight", "what is scored and kept: single weights, or whole units (neurons, filters)",
                         Choice(("weight", "unit")))
    finetune_epochs: int = VariationalConfig.override("finetune_epochs", 15)


class GaussianSNR(VariationalMethod):
    """Gaussian prior, VI, SNR pruning; see the module docstring."""

    name = "gaussian-snr"
    config_class = GaussianSNRConfig
    presets = {"cnn": dict(epochs=4, prior_scale=0.3, keep_fraction=0.05, finetune_epochs=6)}

    def prior(self, config: GaussianSNRConfig) -> GaussianPrior:
        return GaussianPrior(scale=config.prior_scale)

    def strategy(self, config: GaussianSNRConfig) -> SNRPruning:
        fraction = None if config.snr_threshold is not None else config.keep_fraction
        return SNRPruning(threshold=config.snr_threshold, keep_fraction=fraction, level=config.level)


__all__ = ["GaussianSNR", "GaussianSNRConfig"]
