"""Keep masks of a network: one per weight tensor and one per layer's output units."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.utils.prune as prune
from torch import Tensor, nn

from bayescompress.io import read_safetensors_with_metadata, save_weights
from bayescompress.nn.model import handled_layers


# the safetensors header entry of the layers' names in network order (the file keeps its tensors sorted by name)
_ORDER_KEY = "layers"


def _natural_key(name: str) -> tuple:
    """Sort key of a qualified layer name comparing its numeric parts as numbers: "features.2" < "features.10"."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split("."))


def output_names(output_layer: str | Collection[str] | None, layers: Sequence[str]) -> frozenset[str]:
    """The output layers (whose units, the classes, are all kept) given as one name, several or None (the last of
    ``layers``); a name that is not one of ``layers`` is refused."""
    names = [layers[-1]] if output_layer is None else [output_layer] if isinstance(output_layer, str) \
        else list(output_layer)
    if not names:
        raise ValueError("output_layer names no layer; give one of the layers pruned, or several, or None")
    unknown = [name for name in names if name not in layers]
    if unknown:
        raise ValueError(f"output_layer {unknown[0]!r} is not one of the layers pruned ({', '.join(layers)})")
    return frozenset(names)


@dataclass
class Masks:
    """Weight-level and unit-level keep masks (bool), keyed by qualified layer name.

    ``weight[name]`` has the layer's weight shape; ``units[name]`` has one entry per output unit (neuron or
    filter). A layer missing from ``weight`` is kept whole.

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(3, 2))
    >>> masks = Masks({"0": torch.tensor([[True, False, True], [True, True, True]])}, {"0": torch.ones(2, dtype=torch.bool)})
    >>> _ = masks.apply_(net)
    >>> int((net[0].weight != 0).sum())
    5
    """

    weight: dict[str, Tensor]
    units: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weight = {name: m.detach().bool().cpu() for name, m in self.weight.items()}
        self.units = {name: m.detach().bool().cpu() for name, m in self.units.items()}
        for name, mask in self.units.items():
            if name in self.weight and mask.numel() != self.weight[name].shape[0]:
                raise ValueError(
                    f"unit mask of {name!r} has {mask.numel()} entries but the layer has "
                    f"{self.weight[name].shape[0]} output units"
                )

    def apply_(self, model: nn.Module, replace: bool = False) -> nn.Module:
        """Register the weight masks with ``torch.nn.utils.prune.custom_from_mask`` (buffers ``weight_mask``).

        Masks already registered are combined (logical and), as ``torch.nn.utils.prune`` does; with
        ``replace=True`` they are overwritten instead, so entries pruned before can grow back (their value is
        whatever ``weight_orig`` holds there: a strategy that regrows sets it, see
        :func:`reset_optimizer_state_` for the optimiser's moments).
        """
        modules = dict(model.named_modules())
        for name, mask in self.weight.items():
            if name not in modules:
                raise KeyError(f"the masks name layer {name!r}, which the model does not have")
            layer = modules[name]
            mask = mask.to(layer.weight.device, layer.weight.dtype)
            if replace and hasattr(layer, "weight_mask"):
                with torch.no_grad():
                    layer.weight_mask.copy_(mask)
                    layer.weight = layer.weight_orig * layer.weight_mask  # as prune's hook will at the next forward
            else:
                prune.custom_from_mask(layer, "weight", mask)
                # prune's first product records a graph, which the pre-hook replaces at each call; a layer the
                # forward never calls would keep it, and a KL reading its weight would backward through it twice
                with torch.no_grad():
                    layer.weight = layer.weight_orig * layer.weight_mask
        return model

    def kept_weights(self) -> int:
        """Weights the masks keep, over all layers."""
        return int(sum(int(m.sum()) for m in self.weight.values()))

    def total_weights(self) -> int:
        """Weights of the masked layers, kept or not."""
        return int(sum(m.numel() for m in self.weight.values()))

    def to_tensors(self) -> dict[str, Tensor]:
        """Flat ``{"weight/<layer>": uint8, "units/<layer>": uint8}`` mapping for a safetensors file."""
        tensors = {f"weight/{name}": m.to(torch.uint8) for name, m in self.weight.items()}
        tensors.update({f"units/{name}": m.to(torch.uint8) for name, m in self.units.items()})
        return tensors

    def save(self, path: str | os.PathLike) -> None:
        """Write the masks as a safetensors file (atomically), their layers' order in its header."""
        save_weights(self.to_tensors(), path, metadata={_ORDER_KEY: json.dumps(list(self.weight))})

    @classmethod
    def read(cls, path: str | os.PathLike, what: str) -> Masks:
        """The masks :meth:`save` wrote, layers in network order (``what`` names the file in errors)."""
        tensors, metadata = read_safetensors_with_metadata(path, what)
        order = metadata.get(_ORDER_KEY)
        return cls.from_tensors(tensors, json.loads(order) if order else None)

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], order: Sequence[str] | None = None) -> Masks:
        """Inverse of :meth:`to_tensors`, the layers in ``order`` (their network order).

        A safetensors file returns its tensors sorted by name, which puts layer "11" before "3"; without
        ``order`` (files written before it was recorded) the names are sorted with their numbers compared as
        numbers, the network order of numbered sequential layers.
        """
        weight, units = {}, {}
        for key, value in tensors.items():
            kind, _, name = key.partition("/")
            if kind not in ("weight", "units") or not name:
                raise ValueError(f"unexpected tensor {key!r} in a masks file (expected weight/<layer>, units/<layer>)")
            (weight if kind == "weight" else units)[name] = value.bool()
        position = {name: i for i, name in enumerate(order or ())}

        def in_order(masks: dict[str, Tensor]) -> dict[str, Tensor]:
            return dict(sorted(masks.items(), key=lambda item: (position.get(item[0], len(position)),
                                                                _natural_key(item[0]))))

        return cls(in_order(weight), in_order(units))


@torch.no_grad()
def reset_optimizer_state_(optimizer: torch.optim.Optimizer, parameter: Tensor, where: Tensor) -> None:
    """Zero the optimiser's per-entry state of ``parameter`` (Adam's moments, SGD's momentum: every state tensor
    of the parameter's shape) where ``where`` is True, so a weight that was pruned and grows back starts fresh
    instead of inheriting the moments of its previous life. Step counters are kept.

    Example
    -------
    >>> w = nn.Parameter(torch.ones(3))
    >>> opt = torch.optim.Adam([w]); w.grad = torch.ones(3); opt.step()
    >>> reset_optimizer_state_(opt, w, torch.tensor([True, False, False]))
    >>> opt.state[w]["exp_avg"][0].item(), opt.state[w]["exp_avg"][1].item() > 0
    (0.0, True)
    """
    state = optimizer.state.get(parameter, {})
    for value in state.values():
        if isinstance(value, Tensor) and value.shape == parameter.shape:
            value.masked_fill_(where.to(value.device), 0.0)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every ``nn.Linear`` / ``nn.Conv2d`` (Bayesian or not; exactly those types, and not tied
    to another module: :func:`~bayescompress.nn.model.handled_layers`), in module order."""
    return handled_layers(model)


def current_weight(layer: nn.Module) -> Tensor:
    """The layer's effective weight (posterior mean), with any registered prune mask applied."""
    mask = getattr(layer, "weight_mask", None)
    weight = getattr(layer, "weight_orig", layer.weight)
    return weight.detach() if mask is None else (weight * mask).detach()


def replace_submodule(root: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at the qualified ``name`` of ``root`` and return the root (``module`` itself for "")."""
    if not name:
        return module
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)
    return root


@torch.no_grad()
def copy_network(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on networks carrying ``torch.nn.utils.prune`` masks.

    prune keeps ``weight = weight_orig * weight_mask`` as a plain attribute; computed with autograd on, it is
    not a graph leaf and cannot be deep-copied. Recomputing it without autograd first is harmless: the next
    forward pass recomputes it anyway.
    """
    for module in model.modules():
        mask = getattr(module, "weight_mask", None)
        if mask is not None and hasattr(module, "weight_orig"):
            module.weight = module.weight_orig * mask
    return copy.deepcopy(model)
