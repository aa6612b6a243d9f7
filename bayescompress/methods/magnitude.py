"""``magnitude``: the non-Bayesian baseline (Han et al. 2015): keep each layer's largest |w| of the pretrained
network and fine-tune the survivors deterministically."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bayescompress.methods.base import Method, MethodConfig
from bayescompress.nn.model import warn_unhandled
from bayescompress.pruning import MagnitudePruning
from bayescompress.settings import Choice, Real, setting


@dataclass(frozen=True, kw_only=True)
class MagnitudeConfig(MethodConfig):
    """Settings of ``magnitude``; the defaults are the LeNet-300-100 recipe."""

    # nothing is trained before pruning: every setting acts after
    after_training: ClassVar[frozenset[str]] = MethodConfig.after_training | {"keep_fraction", "scope"}

    keep_fraction: float = setting(0.09, "fraction of the weights kept",
                                   Real(0.0, 1.0, low_open=True, high_open=True))
    scope: str = setting("layer", "rank the weights per layer (each keeps keep_fraction) or over the whole network",
                         Choice(("layer", "global")))
    finetune_epochs: int = MethodConfig.override("finetune_epochs", 20)


class Magnitude(Method):
    """Magnitude pruning; see the module docstring."""

    name = "magnitude"
    config_class = MagnitudeConfig
    # LeNet-5: one ranking over the network, so the small first conv is not cut to 5 % like the large fc1
    presets = {"cnn": dict(keep_fraction=0.05, scope="global", finetune_epochs=10)}
    bayesian = False

    def prepare(self, network, config, context) -> None:
        warn_unhandled(network, stacklevel=5)  # the other methods warn when converting

    def train(self, network, config, context) -> list[dict]:
        return []  # prunes the pretrained weights directly

    def strategy(self, config: MagnitudeConfig) -> MagnitudePruning:
        return MagnitudePruning(config.keep_fraction, scope=config.scope)


__all__ = ["Magnitude", "MagnitudeConfig"]
