"""Callbacks around spike-and-slab gates during training: a monitor of the units kept, and silent pruned units
while fine-tuning. The gates themselves (relaxed-Bernoulli samples, point values) are the prior's mathematics
and live with it in :mod:`bayescompress.priors.spike_slab`."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayescompress._validation import check_positive_int
from bayescompress.data import as_batch
from bayescompress.inference.train import Callback, Trainer
from bayescompress.nn.model import bayesian_layers, kl_divergence

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


def gate_gradient_balance(model: nn.Module, batches: Iterable, n_train: int, kl_weight: float = 1.0,
                          max_batches: int = 8) -> dict[str, float]:
    """How much the KL outweighs the data on each layer's unit gates: per gated layer, the median over units of
    |d (kl_weight * KL / N) / d theta_j| over the root-mean-square of d (mean NLL) / d theta_j across batches.

    Adam divides each logit's step by its gradient's root-mean-square, so where this ratio is far above 1 the
    KL's constant pull sets every step and a layer's gates fall together at the learning rate, whatever the
    data say; near 1 the data's answer (a unit needed or not) can win. Measured with sampled gates (train mode)
    on up to ``max_batches`` batches; the model's parameters and gradients are left as they were.

    Example
    -------
    >>> from bayescompress.nn import bayesianize_
    >>> from bayescompress.priors import SpikeSlabGroupLasso
    >>> net = bayesianize_(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), SpikeSlabGroupLasso())
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> sorted(gate_gradient_balance(net, [(x, y)], n_train=64))
    ['0']
    """
    check_positive_int("n_train", n_train)
    check_positive_int("max_batches", max_batches)
    gated = [(name, layer) for name, layer in bayesian_layers(model)
             if getattr(layer.prior, "gate_logit", None) is not None]
    if not gated:
        raise ValueError(f"{type(model).__name__} has no gated layer: convert it under a spike-and-slab prior")
    logits = [layer.prior.gate_logit for _, layer in gated]
    device = logits[0].device
    was_training = model.training
    model.train()
    try:
        kl = kl_divergence(model) * (kl_weight / n_train)
        kl_grads = torch.autograd.grad(kl, logits, allow_unused=True)
        squares = [torch.zeros_like(t) for t in logits]
        seen = 0
        for item in batches:
            if seen == max_batches:
                break
            x, y = as_batch(item, "the batches")
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            for total, grad in zip(squares, torch.autograd.grad(loss, logits, allow_unused=True)):
                if grad is not None:
                    total += grad.pow(2)
            seen += 1
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("batches is empty: pass a loader with at least one batch")
    return {
        name: float((torch.zeros_like(total) if grad is None else grad.abs()).div((total / seen).sqrt()).median())
        for (name, _), grad, total in zip(gated, kl_grads, squares)
    }
