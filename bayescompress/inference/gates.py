"""Callbacks around spike-and-slab gates during training: a monitor of the units kept, and silent pruned units
while fine-tuning. The gates themselves (relaxed-Bernoulli samples, point values) are the prior's mathematics
and live with it in :mod:`bayescompress.priors.spike_slab`."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from bayescompress.inference.train import Callback, Trainer
from bayescompress.nn.model import bayesian_layers

# rho of a silenced bias: sigma = softplus(-14) ~ 8e-7, so sampled networks see (almost exactly) 0 too
_SILENT_RHO = -14.0


class GateMonitor(Callback):
    """Adds ``units/<layer>`` (units with inclusion probability >= 1/2), and ``inputs/<layer>`` where the
    inputs are gated, to every epoch record, and warns
    once per hidden layer whose every unit has been switched off: the output would no longer depend on the
    input there.
    """

    def __init__(self) -> None:
        self._warned: set[str] = set()

    @torch.no_grad()
    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, float]) -> None:
        layers = bayesian_layers(trainer.model)
        for index, (name, layer) in enumerate(layers):
            inclusion = layer.prior.inclusion(layer)
            if inclusion.unit is None:
                continue
            alive = int((inclusion.unit >= 0.5).sum())
            record[f"units/{name}"] = alive
            if inclusion.input is not None:
                record[f"inputs/{name}"] = int((inclusion.input >= 0.5).sum())
            if alive == 0 and index < len(layers) - 1 and name not in self._warned:
                self._warned.add(name)
                warnings.warn(
                    f"every unit of hidden layer {name!r} has inclusion probability < 0.5 after epoch {epoch + 1}; "
                    "pruning would cut the network there. Raise prior_inclusion or train fewer epochs.",
                    stacklevel=2,
                )

    def state_dict(self) -> dict:
        return {"warned": sorted(self._warned)}

    def load_state_dict(self, state: dict) -> None:
        self._warned = set(state["warned"])


class SilentUnits(Callback):
    """Keeps the units a gate switched off silent while the network is fine-tuned under its masks.

    A spike-and-slab gate multiplies the whole unit, bias included, so after folding (bias times 0) a pruned
    unit outputs act(0). The weight masks hold its incoming weights at 0, but not its bias: left to train, the
    bias would turn the unit into a constant that the next layer then has to read. This pins those biases at
    exactly 0 (mean, and a negligible sigma) by zeroing their gradients.

    ``units`` maps layer names to unit keep masks (``Masks.units``).
    """

    def __init__(self, model: torch.nn.Module, units: dict[str, Tensor]) -> None:
        self._off = []
        for name, layer in bayesian_layers(model):
            if layer.bias is None or name not in units or units[name].all():
                continue
            off = ~units[name].to(layer.bias.device)
            with torch.no_grad():
                layer.bias[off] = 0.0
                layer.bias_rho[off] = _SILENT_RHO
            self._off.append((layer, off))

    def on_after_backward(self, trainer: Trainer) -> None:
        for layer, off in self._off:
            for param in (layer.bias, layer.bias_rho):
                if param.grad is not None:
                    param.grad[off] = 0.0
