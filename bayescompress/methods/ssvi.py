"""``ssvi``: sparse-subspace variational inference (Li et al., ICLR 2024; SPEC section 4), sparse from the first
step.

Convert under a Gaussian prior, then train the posterior inside a sparse subspace of fixed density that moves
by drop-and-grow (:class:`~bayescompress.inference.SparseSubspace`): the KL is summed over the active weights
only and grows from 0 to ``kl_weight`` over ``kl_warmup_epochs``. The subspace the training ends in is the
pruning mask; an optional masked fine-tuning follows.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bayescompress.inference import Callback, SparseSubspace
from bayescompress.inference.subspace import GROWTH, INITIAL, check_updates_run
from bayescompress.methods.base import VariationalConfig, VariationalMethod
from bayescompress.nn.model import bayesian_layers, execution_order
from bayescompress.priors import GaussianPrior
from bayescompress.pruning import KeepMasks
from bayescompress.pruning.importance import REMOVAL_SCORES
from bayescompress.settings import Choice, Flag, Integer, PerLayer, Real, per_layer, setting


@dataclass(frozen=True, kw_only=True)
class SSVIConfig(VariationalConfig):
    """Settings of ``ssvi``; the defaults follow the authors' setting (docs/ssvi.md), started from the largest
    |w| of the pretrained network."""

    epochs: int = VariationalConfig.override("epochs", 20)
    prior_scale: float = setting(0.5, "standard deviation s0 of the Gaussian prior (the whole training; the paper "
                                 "uses 0.005 from scratch)", Real(0.0, low_open=True))
    density: float = setting(0.1, "fraction of each layer's weights in the subspace", Real(0.0, 1.0, low_open=True))
    layer_density: str = setting("", "per-layer densities replacing density for those layers, e.g. "
                                 "'1=0.05,3=0.2' (layer names as the model names them)",
                                 PerLayer(Real(0.0, 1.0, low_open=True)))
    update_interval: int = setting(100, "steps between subspace updates (Delta)", Integer(1))
    alpha: float = setting(0.3, "largest fraction of a layer's active weights one update replaces",
                           Real(0.0, 1.0))
    end_fraction: float = setting(0.75, "the subspace moves while t < end_fraction * (the run's steps)",
                                  Real(0.0, 1.0, low_open=True))
    removal_score: str = setting("folded_snr", "which active weights an update drops (the lowest)",
                                 Choice(REMOVAL_SCORES))
    growth: str = setting("gradient", "which inactive weights an update grows: the largest |dense gradient| of "
                          "the loss w.r.t. the mean, or random ones", Choice(GROWTH))
    initial_subspace: str = setting("magnitude", "the starting subspace: the largest |w| (from a pretrained "
                                    "network) or random (from scratch, the paper)", Choice(INITIAL))
    dense_first_conv: bool = setting(False, "leave the network's first convolution dense, as the paper does (off: "
                                     "on LeNet-5 a dense conv1 alone costs 0.08x of dense VI's training MACs, and "
                                     "sparse it loses nothing measured; docs/ssvi.md)", Flag())
    structured: bool = setting(False, "the subspace is whole units (neurons, filters) of every hidden layer, scored "
                               "by the group form of the criteria, so the result exports to a smaller dense "
                               "network (beyond the paper)", Flag())
    optimizer: str = setting("adam", "optimiser of the training (the paper: sgd with momentum and a cosine "
                             "schedule, from scratch)", Choice(("adam", "sgd")))
    momentum: float = setting(0.9, "SGD momentum (optimizer sgd)", Real(0.0, 1.0, high_open=True))
    kl_weight: float = VariationalConfig.override("kl_weight", 0.01)
    kl_warmup_epochs: int = VariationalConfig.override("kl_warmup_epochs", 10)
    finetune_epochs: int = VariationalConfig.override("finetune_epochs", 0)


class SSVI(VariationalMethod):
    """Sparse-subspace VI; see the module docstring."""

    name = "ssvi"
    config_class = SSVIConfig

    def prior(self, config: SSVIConfig) -> GaussianPrior:
        return GaussianPrior(scale=config.prior_scale)

    def callbacks(self, network, config: SSVIConfig, context) -> list[Callback]:
        layers = dict(bayesian_layers(network))
        convs = [name for name in execution_order(network, context.example) if isinstance(layers.get(name), nn.Conv2d)]
        dense = convs[:1] if config.dense_first_conv else []
        if config.structured:  # the output layers' units are the classes
            dense += context.outputs
        return [SparseSubspace(config.density, update_interval=config.update_interval, alpha=config.alpha,
                               end_fraction=config.end_fraction, score=config.removal_score, growth=config.growth,
                               initial=config.initial_subspace, structured=config.structured, dense_layers=dense,
                               seed=context.seed, layer_density=per_layer(config.layer_density, "layer_density"))]

    def check(self, model, config: SSVIConfig, example, steps_per_epoch: int | None) -> None:
        super().check(model, config, example, steps_per_epoch)
        if steps_per_epoch is not None:
            check_updates_run(config.update_interval, config.end_fraction, config.epochs * steps_per_epoch)

    def train_settings(self, config: SSVIConfig) -> dict:
        return {**super().train_settings(config), "optimizer": config.optimizer, "momentum": config.momentum}

    def strategy(self, config) -> KeepMasks:
        return KeepMasks()


__all__ = ["SSVI", "SSVIConfig"]
