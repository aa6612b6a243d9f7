"""SSVI's sparse subspace (Li et al., ICLR 2024; SPEC section 4): the posterior lives on a fixed fraction of the
weights for the whole of training, and the subspace moves by drop-and-grow.

Every layer keeps exactly ``round(density * size)`` of its weights (mean and rho share the layer's mask,
``weight_mask``). Every ``update_interval`` steps while ``t < T_end = end_fraction * T``, each layer drops the
``floor(n_active * f_t)`` active weights with the lowest removal score, ``f_t = alpha / 2 (1 + cos(pi t /
T_end))``, and grows as many among the weights inactive before the update: the largest |dense gradient of
the loss with respect to the mean| on that mini-batch (``growth="gradient"``), or drawn at random. A grown
weight starts at mu = 0 with the mean rho of the layer's surviving weights and fresh optimiser state, and the
optimiser does not step on an update iteration. The optimiser state of grown and dropped weights is zeroed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.nn.utils import prune

from bayescompress import distributed
from bayescompress._validation import check_choice, check_in_range, check_non_negative_int, check_positive_int
from bayescompress.inference.train import Callback, Trainer
from bayescompress.nn.model import bayesian_layers
from bayescompress.pruning.importance import REMOVAL_SCORES, removal_score
from bayescompress.pruning.masks import reset_optimizer_state_

GROWTH = ("gradient", "random")
INITIAL = ("random", "magnitude")


def drop_fraction(step: int, end: int, alpha: float) -> float:
    """f_t = alpha / 2 (1 + cos(pi t / T_end)): the fraction of a layer's active weights replaced at step t."""
    return alpha / 2 * (1 + math.cos(math.pi * step / end))


def check_updates_run(update_interval: int, end_fraction: float, total_steps: int) -> int:
    """The step before which subspace updates run, end_fraction * total_steps; refuses settings under which
    none would."""
    end = int(end_fraction * total_steps)
    if update_interval >= end:
        raise ValueError(
            f"no subspace update would run: the run has {total_steps} steps, updates come every {update_interval} "
            f"steps while t < end_fraction * {total_steps} = {end}; lower update_interval, raise end_fraction, or "
            "train more epochs")
    return end


class SparseSubspace(Callback):
    """Keeps every Bayesian layer's weights in a sparse subspace of fixed density and moves it (module docstring).

    Parameters
    ----------
    density: fraction of each layer's weights in the subspace, in (0, 1].
    layer_density: per layer name, a density that replaces ``density`` for that layer (e.g. a smaller one for
        the large first layer of an MLP).
    update_interval: steps between subspace updates (Delta, >= 1).
    alpha: the largest fraction of active weights one update replaces, in [0, 1].
    end_fraction: updates run while t < end_fraction * T (T = the run's steps), in (0, 1].
    score: removal score, one of ``REMOVAL_SCORES`` (default the folded-normal SNR).
    growth: ``"gradient"`` or ``"random"``.
    initial: the starting subspace: ``"random"`` (the paper, from scratch) or ``"magnitude"`` (the largest |mu|:
        the natural start from a pretrained network).
    structured: the subspace is a set of whole output units (neurons, filters) per layer instead of single
        weights, scored by the group form of the same criteria (``removal_score(..., unit=True)``, growth by the
        norm of a unit's dense gradient), so the result exports to a smaller dense network.
    dense_layers: names of layers left dense (SSVI keeps the first convolution whole; the structured
        subspace leaves the output layer, whose units are the classes, to the method).
    seed: seeds the random choices (initial subspace, random growth).

    After training: ``updates`` (how many replaced any weight) and, per epoch record, ``subspace/<layer>/density`` and
    ``subspace/<layer>/replaced`` (weights replaced in that epoch).
    """

    def __init__(self, density: float, *, update_interval: int = 100, alpha: float = 0.3, end_fraction: float = 0.75,
                 score: str = "folded_snr", growth: str = "gradient", initial: str = "random",
                 structured: bool = False, dense_layers: Sequence[str] = (), seed: int = 0,
                 layer_density: Mapping[str, float] | None = None) -> None:
        check_in_range("density", density, 0.0, 1.0, low_inclusive=False)
        self.layer_density = dict(layer_density or {})
        for name, value in self.layer_density.items():
            check_in_range(f"layer_density[{name!r}]", value, 0.0, 1.0, low_inclusive=False)
        check_positive_int("update_interval", update_interval)
        check_in_range("alpha", alpha, 0.0, 1.0)
        check_in_range("end_fraction", end_fraction, 0.0, 1.0, low_inclusive=False)
        check_choice("score", score, REMOVAL_SCORES)
        check_choice("growth", growth, GROWTH)
        check_choice("initial", initial, INITIAL)
        check_non_negative_int("seed", seed)
        self.density, self.update_interval, self.alpha, self.end_fraction = density, update_interval, alpha, end_fraction
        self.score, self.growth, self.initial, self.dense_layers = score, growth, initial, set(dense_layers)
        self.structured = bool(structured)
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = 0
        self._hooks: list = []
        self._replaced: dict[str, int] = {}

    def _layers(self, trainer: Trainer):
        return [(name, layer) for name, layer in bayesian_layers(trainer.model) if name not in self.dense_layers]

    def _due(self, step: int) -> bool:
        return step > 0 and step % self.update_interval == 0 and step < self._end

    @torch.no_grad()
    def on_train_begin(self, trainer: Trainer) -> None:
        self._end = check_updates_run(self.update_interval, self.end_fraction, trainer.total_steps)
        layers = self._layers(trainer)
        if not layers:
            raise ValueError("SparseSubspace found no Bayesian layer outside dense_layers; convert the model with "
                             "bayescompress.bayesianize_ first")
        unknown = sorted(set(self.layer_density) - {name for name, _ in layers})
        if unknown:
            raise ValueError(f"layer_density names {', '.join(map(repr, unknown))}, not a sparse Bayesian layer of "
                             f"this network; its layers are: {', '.join(name for name, _ in layers)}")
        for name, layer in layers:
            weight = getattr(layer, "weight_orig", layer.weight)
            groups = weight.shape[0] if self.structured else weight.numel()
            density = self.layer_density.get(name, self.density)
            keep = round(density * groups)
            if keep < 1:
                what = f"{groups} units" if self.structured else f"{groups} weights"
                raise ValueError(f"density {density} leaves layer {name!r} ({what}) no "
                                 f"{'unit' if self.structured else 'weight'}; raise density to at least "
                                 f"{1 / groups:.2g}")
            ranking = (removal_score(layer, "magnitude", unit=self.structured).flatten()
                       if self.initial == "magnitude" else torch.rand(groups, generator=self.generator).to(weight.device))
            active = torch.zeros(groups, dtype=torch.bool, device=weight.device)
            active[ranking.topk(keep).indices] = True
            _set_mask_(layer, self._weight_mask(active, weight).to(weight.dtype))
            self._replaced[name] = 0
        self._trainer = trainer
        self._hooks = [layer.register_forward_hook(self._retain_weight_grad) for _, layer in layers]

    def _retain_weight_grad(self, layer, inputs, output) -> None:
        # the masked weight of this step's forward pass; its gradient is the dense gradient w.r.t. the mean
        if self.growth == "gradient" and layer.training and self._due(self._trainer.step):
            layer.weight.retain_grad()

    @torch.no_grad()
    def on_after_backward(self, trainer: Trainer) -> None:
        if not self._due(trainer.step):
            return
        fraction = drop_fraction(trainer.step, self._end, self.alpha)
        replaced = 0
        for name, layer in self._layers(trainer):
            count = self._update_(trainer, layer, fraction)
            self._replaced[name] += count
            replaced += count
        if replaced:  # at density 1 (dense VI) nothing moves and nothing is skipped
            self.updates += 1
            trainer.skip_step = True

    def _weight_mask(self, groups: Tensor, weight: Tensor) -> Tensor:
        """A weight-shaped mask from one entry per group (a unit's row, or a single weight)."""
        if self.structured:
            return groups.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight).clone()
        return groups.view_as(weight)

    def _update_(self, trainer: Trainer, layer, fraction: float) -> int:
        weight = layer.weight_orig
        mask = layer.weight_mask.bool()
        active = mask.flatten(1).any(dim=1) if self.structured else mask.flatten()
        count = min(math.floor(int(active.sum()) * fraction), int((~active).sum()))
        if count == 0:
            return 0
        keep_score = removal_score(layer, self.score, unit=self.structured).flatten().masked_fill(~active, math.inf)
        dropped = keep_score.topk(count, largest=False).indices
        if self.growth == "gradient":
            if layer.weight.grad is None:
                raise RuntimeError("the dense gradient of a layer's mean was not kept for the subspace update; "
                                   "SparseSubspace must see the forward pass of the update step")
            # each rank's gradient is of its share of the batch: all-reduced, it is the whole batch's
            gradient = distributed.average_(layer.weight.grad.clone())
            grow_score = gradient.flatten(1).norm(dim=1) if self.structured else gradient.abs().flatten()
        else:
            grow_score = torch.rand(active.shape, generator=self.generator).to(active.device)
        grown = grow_score.masked_fill(active, -math.inf).topk(count).indices
        new = active.clone()
        new[dropped], new[grown] = False, True
        new = distributed.broadcast_(new.to(torch.uint8)).bool()  # one mask for every rank, rank 0's
        new_mask, grown_mask = self._weight_mask(new, weight), self._weight_mask(new & ~active, weight)
        layer.weight_rho[grown_mask] = layer.weight_rho[mask & new_mask].mean()
        weight[grown_mask] = 0.0
        # fresh moments for grown weights; none for dropped ones, whose momentum would keep moving them
        for parameter in (weight, layer.weight_rho):
            reset_optimizer_state_(trainer.optimizer, parameter, grown_mask | (mask & ~new_mask))
        layer.weight_mask.copy_(new_mask.to(layer.weight_mask.dtype))
        return count

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, float]) -> None:
        for name, layer in self._layers(trainer):
            record[f"subspace/{name}/density"] = float(layer.weight_mask.mean())
            record[f"subspace/{name}/replaced"] = float(self._replaced.get(name, 0))
            self._replaced[name] = 0

    def state_dict(self) -> dict:  # the masks are the layers' buffers, in the model's state
        return {"generator": self.generator.get_state(), "updates": self.updates, "replaced": dict(self._replaced)}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.updates, self._replaced = state["updates"], dict(state["replaced"])

    def on_train_end(self, trainer: Trainer) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def _set_mask_(layer, mask: Tensor) -> None:
    """Put ``mask`` on ``layer.weight`` as its prune mask (replacing one already there)."""
    if hasattr(layer, "weight_mask"):
        layer.weight_mask.copy_(mask)
    else:
        prune.custom_from_mask(layer, "weight", mask)


__all__ = ["GROWTH", "INITIAL", "SparseSubspace", "drop_fraction"]
