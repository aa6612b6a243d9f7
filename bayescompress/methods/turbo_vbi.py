"""``turbo-vbi``: the three-layer hierarchical prior trained by Turbo-VBI (Xia, Tsang and Lau 2023; SPEC
sections 2 and 5).

Convert under the hierarchical prior (MRF support -> Gamma precision -> Gaussian weight), train by Turbo-VBI
(SGD on q(w); closed-form q(gamma), q(s) updates; loopy BP on each layer's support grid), drop every weight
whose posterior inclusion pi~ is below 1/2, and fine-tune the survivors by masked VI under a Gaussian prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bayescompress.inference import Callback, TurboCallback
from bayescompress.methods.base import VariationalConfig, VariationalMethod
from bayescompress.nn import fold_multipliers_
from bayescompress.priors import GaussianPrior, HierarchicalPrior
from bayescompress.priors.hierarchical import GRAPHS, SUPPORTS
from bayescompress.pruning import InclusionPruning
from bayescompress.settings import Choice, Integer, Real, setting

_PROBABILITY = Real(0.0, 1.0, low_open=True, high_open=True)


@dataclass(frozen=True, kw_only=True)
class TurboVBIConfig(VariationalConfig):
    """Settings of ``turbo-vbi``; the defaults are the LeNet-300-100 recipe (73x at 1.86 % error,
    docs/benchmarks.md)."""

    # the fine-tuning's prior acts only after the training
    after_training: ClassVar[frozenset[str]] = VariationalConfig.after_training | {"prior_scale"}

    epochs: int = VariationalConfig.override("epochs", 8)
    rho_lr: float | None = VariationalConfig.override("rho_lr", 1e-2)
    pi0: float = setting(0.0065, "the MRF's prior probability that a weight is active; smaller prunes more",
                         _PROBABILITY)
    mrf_p11: float = setting(0.7, "P(active | active neighbour) of the support MRF, along rows and columns",
                             _PROBABILITY)
    mrf_p01: float = setting(0.3, "P(active | inactive neighbour) of the support MRF, along rows and columns",
                             _PROBABILITY)
    mrf_graph: str = setting("grid", "the support's factor graph per layer", Choice(GRAPHS))
    mrf_support: str = setting("weight", "one support variable per weight, or per kernel slice (filter, input "
                               "channel) of a convolution, so whole filters and input channels go", Choice(SUPPORTS))
    active_shape: float = setting(1.0, "shape a of the active state's Gamma(a, b) precision", Real(0.0, low_open=True))
    active_rate: float | None = setting(None, "rate b of the active state's precision (none = the layer's "
                                        "pretrained weight variance)", Real(0.0, low_open=True, optional=True))
    inactive_shape: float = setting(1.0, "shape a_bar of the inactive state's precision", Real(0.0, low_open=True))
    inactive_rate: float | None = setting(None, "rate b_bar of the inactive state's precision (none = 1e-4 "
                                          "times the weight variance)", Real(0.0, low_open=True, optional=True))
    turbo_updates_per_epoch: int = setting(1, "Turbo-VBI iterations (module A + module B) per epoch", Integer(1))
    bp_damping: float = setting(0.5, "damping of loopy BP's messages", Real(0.0, 1.0, high_open=True))
    finetune_epochs: int = VariationalConfig.override("finetune_epochs", 30)
    finetune_lr: float = VariationalConfig.override("finetune_lr", 3e-3)


class TurboVBI(VariationalMethod):
    """Hierarchical prior, Turbo-VBI, inclusion pruning; see the module docstring."""

    name = "turbo-vbi"
    config_class = TurboVBIConfig
    presets = {"cnn": dict(epochs=4, pi0=0.004, finetune_epochs=20)}

    def prior(self, config: TurboVBIConfig) -> HierarchicalPrior:
        return HierarchicalPrior(
            active_shape=config.active_shape, active_rate=config.active_rate, inactive_shape=config.inactive_shape,
            inactive_rate=config.inactive_rate, pi0=config.pi0, row_p11=config.mrf_p11, row_p01=config.mrf_p01,
            column_p11=config.mrf_p11, column_p01=config.mrf_p01, graph=config.mrf_graph,
            support=config.mrf_support)

    def callbacks(self, network, config: TurboVBIConfig, context) -> list[Callback]:
        return [TurboCallback(config.turbo_updates_per_epoch, damping=config.bp_damping)]

    def strategy(self, config) -> InclusionPruning:
        return InclusionPruning(threshold=0.5)

    def before_finetune(self, network, config, masks) -> list[Callback]:
        fold_multipliers_(network, GaussianPrior(scale=config.prior_scale))  # no multipliers: a change of prior
        return []


__all__ = ["TurboVBI", "TurboVBIConfig"]
