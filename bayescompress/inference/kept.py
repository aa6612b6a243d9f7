"""An observer of how much of the network a method is keeping, epoch by epoch (the training curves' fraction
kept)."""

from __future__ import annotations

import torch

from bayescompress.inference.train import Callback, Trainer
from bayescompress.nn.model import bayesian_layers


class KeptFraction(Callback):
    """Adds ``kept_fraction`` to every epoch record: the fraction of the Bayesian layers' weights that are
    unmasked and, where the prior has inclusion probabilities (per weight, unit or input), whose every one of
    them is at least 1/2. A prior without them (Gaussian, log-uniform) keeps everything its masks keep."""

    @torch.no_grad()
    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, float]) -> None:
        kept = total = 0
        for _, layer in bayesian_layers(trainer.model):
            on = torch.ones_like(layer.weight, dtype=torch.bool)
            if layer.weight_keep is not None:
                on &= layer.weight_keep.bool()
            inclusion = layer.prior.inclusion(layer)
            if inclusion.weight is not None:
                on &= inclusion.weight >= 0.5
            if inclusion.unit is not None:
                on &= (inclusion.unit >= 0.5).view(-1, *([1] * (on.dim() - 1)))
            if inclusion.input is not None:
                on &= (inclusion.input >= 0.5).view(1, -1, *([1] * (on.dim() - 2)))
            kept, total = kept + int(on.sum()), total + on.numel()
        if total:
            record["kept_fraction"] = kept / total
