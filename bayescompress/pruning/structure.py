"""Structure propagation on sequential networks (SPEC section 5).

From weight masks to removable units, across consecutive layers:
- a unit whose incoming weights are all pruned outputs a constant, act(bias); that constant's effect on the
  next layer is folded into the next layer's bias and the unit goes;
- a unit whose outgoing weights are all pruned goes;
- removing units can make units of neighbouring layers removable, so both rules run to a fixed point.

The conv -> flatten -> linear step is handled by viewing the consumer's weight as (out, producer units, rest):
``rest`` is the kernel for conv -> conv, the spatial positions of one channel for conv -> flatten -> linear,
and 1 for linear -> linear.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayescompress.nn.layers import user_hooks
from bayescompress.nn.model import handled_layers, observe
from bayescompress.pruning.masks import Masks, current_weight

# Modules that act on each channel separately (so a constant channel stays constant and independent of the
# others) and may sit between two prunable layers in the built-in sequential path.
CHANNELWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
    nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.Identity,
)


class SelectInputs(nn.Module):
    """Keeps the input features (or channels, ``dim=1`` of an image batch) the first layer still reads.

    The export puts it in front of the first layer when whole input columns are pruned (pixels nobody reads):
    the exported network takes the original input and gathers what it needs, at no multiply-accumulate cost.
    """

    def __init__(self, index: Tensor, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("index", index.long())

    @property
    def features(self) -> int:
        return self.index.numel()

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(self.dim, self.index)

    def extra_repr(self) -> str:
        return f"features={self.features}, dim={self.dim}"


class UnsupportedGraphError(ValueError):
    """The network is not a sequential chain the built-in structural path can handle."""


# what the pruning API's user can do instead (a budget's cost model says its own)
GRAPH_EXPORT_HINT = ("the masks are still available, and bayescompress.pruning.export_with_torch_pruning exports "
                     "general graphs")


@dataclass
class Chain:
    """A sequential network as ``prefix`` modules, then per prunable layer the layer and what follows it."""

    prefix: list[nn.Module]
    names: list[str]
    layers: list[nn.Module]
    after: list[list[nn.Module]]


def _leaves(module: nn.Module, prefix: str = ""):
    if isinstance(module, nn.Sequential):
        # _modules, not named_children(): that skips a module met before, and a chain may hold one twice
        for name, child in module._modules.items():
            yield from _leaves(child, f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix, module


def sequential_chain(model: nn.Module) -> Chain:
    """Read ``model`` (nested ``nn.Sequential`` allowed) as a chain of Linear/Conv2d and channel-wise ops."""
    if not isinstance(model, nn.Sequential):
        raise UnsupportedGraphError(
            f"{type(model).__name__} is not an nn.Sequential: the built-in structural export handles sequential "
            "MLPs and CNNs")
    chain = Chain([], [], [], [])
    seen: dict[int, str] = {}
    handled = {id(layer) for _, layer in handled_layers(model)}
    for name, leaf in _leaves(model):
        # a module met twice: fine for a shared ReLU, not for a layer (its units would be removed once)
        if seen.setdefault(id(leaf), name) != name and next(leaf.parameters(), None) is not None:
            raise UnsupportedGraphError(f"module {name!r} is {seen[id(leaf)]!r} again (one module used twice in the "
                                        "chain): the built-in export removes a unit once per layer")
        if isinstance(leaf, (nn.Linear, nn.Conv2d)):
            if id(leaf) not in handled:  # a subclass, or tied to another module: left whole, so not a chain layer
                raise UnsupportedGraphError(f"layer {name!r} is kept whole (a {type(leaf).__name__} subclass, or "
                                            "sharing its weight with another module); the built-in export needs "
                                            "every layer of the chain pruned")
            if user_hooks(leaf):  # rebuilt layers would need them, and a saved run could not record them
                raise UnsupportedGraphError(f"layer {name!r} has forward hooks of its own, which the built-in "
                                            "export does not rebuild")
            if isinstance(leaf, nn.Conv2d) and leaf.groups != 1:
                raise UnsupportedGraphError(
                    f"layer {name!r} is a grouped convolution (groups={leaf.groups}), which the built-in export "
                    "does not handle")
            chain.names.append(name)
            chain.layers.append(leaf)
            chain.after.append([])
        elif isinstance(leaf, CHANNELWISE) or (isinstance(leaf, SelectInputs) and not chain.layers):
            (chain.after[-1] if chain.layers else chain.prefix).append(leaf)
        else:
            raise UnsupportedGraphError(
                f"module {name!r} ({type(leaf).__name__}) is not supported by the built-in structural export "
                f"(supported between layers: {', '.join(t.__name__ for t in CHANNELWISE)})")
    if not chain.layers:
        raise UnsupportedGraphError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer")
    return chain


def _run(modules: list[nn.Module], x: Tensor) -> Tensor:
    for module in modules:
        x = module(x)
    return x


def linear_op(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """The layer's operation without bias, with the given weight (shared by Linear and Conv2d)."""
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d._conv_forward(layer, x, weight, None)
    return F.linear(x, weight)


@dataclass
class Structure:
    """Result of :func:`propagate`: final masks and the bias corrections of folded constants."""

    masks: Masks
    bias_correction: dict[str, Tensor]


@torch.no_grad()
def layer_output_shapes(model: nn.Module, layers, example: Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of each named layer in ``layers`` on the first item of ``example``."""
    shapes: dict[str, tuple[int, ...]] = {}
    observe(model, layers, example[:1], lambda name, _inputs, out: shapes.__setitem__(name, tuple(out.shape[1:])))
    return shapes


def chain_output_shapes(model: nn.Module, chain: Chain, example: Tensor) -> dict[str, tuple[int, ...]]:
    """:func:`layer_output_shapes` of the chain's layers, checked: a Linear layer applied per token or position
    (its output more than (batch, units)) is read right only in a chain of such layers alike (whose constant
    units are kept rather than folded); one whose output is flattened with its tokens, or that reads a
    convolution's maps, is refused with :class:`UnsupportedGraphError` (the built-in export reads the units of
    what a layer reads on dimension 1), and the graph export takes over."""
    shapes = layer_output_shapes(model, zip(chain.names, chain.layers), example)
    ranks = {len(shape) for shape in shapes.values()}
    for name, layer in zip(chain.names, chain.layers):
        if isinstance(layer, nn.Linear) and len(shapes[name]) > 1 and len(ranks) > 1:
            raise UnsupportedGraphError(
                f"layer {name!r} is applied along the last dimension of its input (per token or position, output "
                f"{tuple(shapes[name])} per example) in a chain whose other layers are not; the built-in export "
                "reads a layer's units on dimension 1")
    return shapes


@torch.no_grad()
def propagate(model: nn.Module, masks: Masks, example_input: Tensor) -> Structure:
    """Find every removable unit of a sequential ``model`` under ``masks`` (see the module docstring).

    ``example_input`` is one batch (only its first item is used) to learn the spatial sizes.
    Returns the final masks (incoming weights of units nothing reads are dropped too) and, per layer,
    the bias correction that carries the folded constants of removed units of the layer before it.
    """
    was_training = model.training
    model.eval()  # the modules between layers fold constants as the deployed network runs them (Dropout off)
    try:
        return _propagate(sequential_chain(model), model, masks, example_input)
    except UnsupportedGraphError as error:
        raise UnsupportedGraphError(f"{error}; {GRAPH_EXPORT_HINT}") from None
    finally:
        model.train(was_training)


def _propagate(chain: Chain, model: nn.Module, masks: Masks, example_input: Tensor) -> Structure:
    shapes = chain_output_shapes(model, chain, example_input)
    names, layers = chain.names, chain.layers
    weight_keep = []
    for name, layer in zip(names, layers):
        keep = masks.weight.get(name, torch.ones_like(layer.weight, dtype=torch.bool)).to(layer.weight.device)
        if name in masks.units:  # a unit the strategy dropped loses its incoming weights; its bias stays
            keep = keep & masks.units[name].to(keep.device).view(-1, *([1] * (keep.dim() - 1)))
        weight_keep.append(keep)
    weights = [current_weight(l) * k for l, k in zip(layers, weight_keep)]
    biases = [l.bias.detach() if l.bias is not None else l.weight.new_zeros(l.weight.shape[0]) for l in layers]
    # every unit starts alive: one without incoming weights still outputs act(bias), which must be folded
    units = [torch.ones(k.shape[0], dtype=torch.bool, device=k.device) for k in weight_keep]
    unused = [torch.zeros_like(u) for u in units]  # removed because nothing reads them
    silent = [torch.zeros_like(u) for u in units]  # folded units whose constant output is exactly 0
    correction = [torch.zeros_like(b) for b in biases]

    def incoming(i: int) -> Tensor:
        """Weight keep mask of layer i restricted to inputs that still exist, viewed (out, in units, rest)."""
        keep = weight_keep[i].reshape(weight_keep[i].shape[0], -1)
        if i == 0:
            return keep.reshape(keep.shape[0], keep.shape[1], 1)
        grouped = keep.reshape(keep.shape[0], units[i - 1].numel(), -1)
        return grouped & units[i - 1].view(1, -1, 1)

    changed = True
    while changed:
        changed = False
        for i in range(len(layers) - 1):
            consumer = incoming(i + 1) & units[i + 1].view(-1, 1, 1)
            dead_out = ~consumer.any(dim=2).any(dim=0)
            dead_in = ~incoming(i).flatten(1).any(dim=1)
            fold = units[i] & dead_in & ~dead_out
            remove = units[i] & (dead_out | fold)
            if not remove.any():
                continue
            if bool(remove.sum() == units[i].sum()):
                remove = _keep_best_unit(names[i], remove, weights[i], units[i])
                fold &= remove
            if fold.any():
                folded = _fold_constants(chain, i, fold, biases, correction, weights, shapes)
                if folded is None:
                    remove &= ~fold  # not foldable exactly: those units stay
                else:
                    silent[i] |= folded
            if remove.any():
                units[i] &= ~remove
                unused[i] |= remove & dead_out
                changed = True

    # Incoming weights of unused units can go without changing the function, and so can the outgoing
    # weights of folded units whose constant is 0 (e.g. ReLU of a zero pre-activation); the outgoing weights
    # of other folded units cannot (the masked network still computes the constant through them).
    final_weight = {n: k & ~d.view(-1, *([1] * (k.dim() - 1))) for n, k, d in zip(names, weight_keep, unused)}
    for i in range(len(layers) - 1):
        keep = final_weight[names[i + 1]]
        grouped = keep.reshape(keep.shape[0], units[i].numel(), -1) & ~silent[i].view(1, -1, 1)
        final_weight[names[i + 1]] = grouped.reshape(keep.shape)
    return Structure(
        Masks({n: w.cpu() for n, w in final_weight.items()}, {n: u.cpu() for n, u in zip(names, units)}),
        {n: c.cpu() for n, c in zip(names, correction)},
    )


def _fold_constants(chain: Chain, i: int, fold: Tensor, biases, correction, weights, shapes) -> Tensor | None:
    """Add the effect of the constant units ``fold`` of layer i to layer i+1's bias correction.

    The constant pre-activation is bias + correction; it is pushed through the channel-wise modules after
    layer i and through layer i+1's (masked) weights. Returns the folded units whose constant output is
    exactly 0, or None, folding nothing, when the result is not spatially constant (a padded convolution
    sees the zero border), so those units are kept instead.
    """
    if isinstance(chain.layers[i], nn.Linear) and len(shapes[chain.names[i]]) > 1:
        return None  # a per-token layer's units are on the last dimension: kept, not folded
    constant = (biases[i] + correction[i]) * fold
    spatial = shapes[chain.names[i]][1:]
    z = constant.view(1, -1, *([1] * len(spatial))).expand(1, -1, *spatial).contiguous()
    u = _run(chain.after[i], z)
    # channel-wise modules keep channels independent; zero the channels not being folded (act(0) may be != 0)
    u = (u.reshape(1, fold.numel(), -1) * fold.view(1, -1, 1)).reshape(u.shape)
    delta = linear_op(chain.layers[i + 1], u, weights[i + 1])
    flat = delta.reshape(delta.shape[1], -1)
    if not torch.allclose(flat, flat[:, :1].expand_as(flat), rtol=1e-5, atol=1e-6):
        return None
    correction[i + 1] += flat[:, 0]
    return fold & (u.reshape(fold.numel(), -1) == 0).all(dim=1)


def _keep_best_unit(name: str, remove: Tensor, weight: Tensor, alive: Tensor) -> Tensor:
    """``remove`` minus the alive unit with the largest incoming weights (L1)."""
    strength = weight.flatten(1).abs().sum(dim=1).masked_fill(~alive, -1.0)
    best = int(strength.argmax())
    warnings.warn(
        f"pruning would remove every unit of layer {name!r}; keeping its strongest unit ({best}) so the exported "
        "network stays valid",
        stacklevel=3,
    )
    remove = remove.clone()
    remove[best] = False
    return remove
