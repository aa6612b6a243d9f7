"""Export of general graphs (residual blocks, concatenations, attention) through Torch-Pruning's DependencyGraph.

Torch-Pruning knows which layers are coupled — a residual sum ties the output channels of every layer that
feeds it, BatchNorm follows its convolution — so removing a channel removes it everywhere at once. We feed it
our masks. A channel of a dependency group is removed when removing it cannot change the function:
- *unread*: every layer that reads it (every in-channel consumer in the group) has all the corresponding
  weights pruned; or
- *constant*: every layer that produces it (every out-channel member of the group) has its whole row pruned,
  so the channel carries a constant whatever the input (act(bias), 0 under a closed spike-and-slab gate with
  BatchNorm folded). The constant each reader sees is measured on the example input and folded into the
  reader's bias; a convolution with padding reads a constant non-uniformly at its border, so there only a
  zero constant (or unread weights) lets the channel go.
A group holding any other module that might mix channels (LayerNorm, attention, embeddings) is left whole.

The surgery is recorded as a :class:`GraphSurgery` (which layer's group lost which channels, in order), so a
run folder can replay it on a freshly built copy of the original architecture, and the same surgery applied to
a copy holding the posterior's rho gives the Bayesian export. The exported network is verified against the
masked one on the example input.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field

import torch
import torch.nn.utils.prune
from torch import Tensor, nn

from bayescompress.nn.layers import BAYESIAN_TYPES, BayesianLayer
from bayescompress.nn.model import observe, output_layers
from bayescompress.pruning.export import DETERMINISTIC_RHO, plain_layer_like
from bayescompress.pruning.masks import (
    Masks,
    copy_network,
    current_weight,
    output_names,
    prunable_layers,
    replace_submodule,
)


@dataclass(frozen=True)
class SurgeryStep:
    """One removal: ``layer``'s output group lost ``channels`` (in its numbering at that step), after the
    readers in ``new_bias`` were given a bias to receive folded constants."""

    layer: str
    channels: tuple[int, ...]
    new_bias: tuple[str, ...] = ()


@dataclass
class GraphSurgery:
    """The channels removed from a traced graph, step by step; replaying the steps in order is deterministic."""

    steps: list[SurgeryStep] = field(default_factory=list)

    def to_json(self) -> list[dict]:
        return [{"layer": s.layer, "channels": list(s.channels), "new_bias": list(s.new_bias)} for s in self.steps]

    @classmethod
    def from_json(cls, steps: list) -> GraphSurgery:
        try:
            return cls([SurgeryStep(str(s["layer"]), tuple(int(i) for i in s["channels"]),
                                    tuple(str(n) for n in s.get("new_bias", ()))) for s in steps])
        except (TypeError, ValueError, KeyError) as error:
            raise ValueError(f"not a graph-surgery record: {steps!r} ({error})") from error


def _may_mix_channels(module) -> bool:
    passes_through = (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm)  # (Linear/Conv as coupled producers)
    internal = type(module).__module__.startswith("torch_pruning")  # element-wise, reshape, concat nodes
    return isinstance(module, nn.Module) and not isinstance(module, passes_through) and not internal


@torch.no_grad()
def to_plain_network(model: nn.Module) -> nn.Module:
    """A deterministic copy of ``model``: every Linear/Conv2d becomes a plain layer at its posterior mean with
    its prune mask baked into the weight (no ``weight_rho``, no prune buffers)."""
    return _replace_layers(model, lambda layer: current_weight(layer),
                           lambda layer: None if layer.bias is None else layer.bias.detach())


@torch.no_grad()
def _replace_layers(model: nn.Module, weight_of, bias_of) -> nn.Module:
    """A copy of ``model`` whose Linear/Conv2d layers are fresh plain layers holding ``weight_of(layer)`` and
    ``bias_of(layer)``."""
    plain = copy_network(model)
    names: dict[int, list[str]] = {}  # a layer registered under several names stays one (tied) layer
    for name, module in plain.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    for _, layer in prunable_layers(plain):
        n_in = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
        fresh = plain_layer_like(layer, n_in, layer.weight.shape[0], bayesian=False, groups=getattr(layer, "groups", 1))
        fresh.weight.copy_(weight_of(layer))
        if layer.bias is not None:
            fresh.bias.copy_(bias_of(layer))
        fresh.to(layer.weight.device)
        for name in names[id(layer)]:
            plain = replace_submodule(plain, name, fresh)
    return plain


def dependency_graph(model: nn.Module, example_input: Tensor):
    """Torch-Pruning's DependencyGraph of ``model``, traced on ``example_input`` (with autograd, which tracing
    needs, even inside ``torch.no_grad``)."""
    import torch_pruning as tp

    with torch.enable_grad():  # verbose=False: its note on parameters outside layers (an LSTM's) does not apply,
        # since those layers are never pruned here
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)


def _out_fn(layer: nn.Module):
    import torch_pruning as tp

    return tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels


def _reader_inputs(model: nn.Module, example: Tensor) -> dict[int, Tensor]:
    """Per Linear/Conv2d (by id), its input on ``example`` as (channels, everything else)."""
    layers = dict(prunable_layers(model))
    seen: dict[int, Tensor] = {}

    def record(name, inputs, _output):
        x, module = inputs[0].detach(), layers[name]
        linear = isinstance(module, nn.Linear)
        seen[id(module)] = x.reshape(-1, x.shape[-1]).T if linear else x.transpose(0, 1).flatten(1)

    observe(model, layers.items(), example, record)
    return seen


@torch.no_grad()
def _removable_channels(dg, layer: nn.Module, inputs: dict[int, Tensor], keep: int | None = None,
                        constants: bool = True) -> tuple[Tensor, list]:
    """Per output channel of ``layer``, whether the module docstring's rules let it go (never channel
    ``keep``; only unread ones unless ``constants``), and the bias folds [(reader, delta)] that removing those
    channels needs."""
    import torch_pruning as tp

    readers = {tp.prune_conv_in_channels, tp.prune_linear_in_channels}
    producers = {tp.prune_conv_out_channels, tp.prune_linear_out_channels}
    n = layer.weight.shape[0]
    nothing = torch.zeros(n, dtype=torch.bool)
    group = dg.get_pruning_group(layer, _out_fn(layer), list(range(n)))
    read = torch.zeros(n, dtype=torch.bool)
    has_reader = torch.zeros(n, dtype=torch.bool)
    live_row = torch.zeros(n, dtype=torch.bool)  # some producer's row still has a weight
    unfoldable = torch.zeros(n, dtype=torch.bool)  # a reader sees a non-uniform or input-dependent value
    reads = []  # (reader, its weight's input columns, their root channels, which are read, the constant seen)
    for item in group.items:
        module = item.dep.target.module
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or getattr(module, "groups", 1) != 1:
            if _may_mix_channels(module) or isinstance(module, nn.Conv2d):
                return nothing, []
            continue
        idxs = torch.tensor(item.idxs, dtype=torch.long)
        roots = torch.tensor(item.root_idxs, dtype=torch.long)
        weight = module.weight.detach()
        if item.dep.handler in producers:
            live_row.index_put_((roots,), weight.flatten(1)[idxs].ne(0).any(dim=1).cpu(), accumulate=True)
        elif item.dep.handler in readers:
            nonzero = weight.transpose(0, 1).flatten(1).ne(0).any(dim=1)[idxs].cpu()
            read.index_put_((roots,), nonzero, accumulate=True)
            has_reader[roots] = True
            if id(module) not in inputs:  # not run on the example: nothing is known of what it reads
                unfoldable.index_put_((roots,), nonzero, accumulate=True)
                continue
            seen = inputs[id(module)][idxs].cpu()
            constant = seen[:, 0]
            uniform = (seen == constant[:, None]).all(dim=1)
            padded = isinstance(module, nn.Conv2d) and _padded(module)
            # a non-zero constant read through a padded convolution differs at the border
            unfoldable.index_put_((roots,), nonzero & (~uniform | (padded & constant.ne(0))), accumulate=True)
            reads.append((module, idxs, roots, nonzero, constant))
    removable = has_reader & (~read | (~live_row & ~unfoldable & constants))
    if keep is not None:
        removable[keep] = False
    folds = []
    for module, idxs, roots, nonzero, constant in reads:
        take = removable[roots] & nonzero & constant.ne(0)  # only read non-zero constants move into a bias
        if take.any():
            columns = module.weight.detach().transpose(0, 1)[idxs[take].to(module.weight.device)]
            per_column = columns.reshape(columns.shape[0], columns.shape[1], -1).sum(dim=2)  # (columns, out)
            folds.append((module, (per_column * constant[take].to(columns)[:, None]).sum(dim=0)))
    return removable, folds


def _padded(conv: nn.Conv2d) -> bool:
    return isinstance(conv.padding, str) or any(p != 0 for p in conv.padding)


def _fold_into_bias(module: nn.Module, delta: Tensor) -> None:
    if module.bias is None:
        _add_zero_bias(module)
    module.bias.data += delta


def _add_zero_bias(module: nn.Module) -> None:
    module.bias = nn.Parameter(module.weight.new_zeros(module.weight.shape[0]))


def _prune_step(plain: nn.Module, dg, name: str, layer: nn.Module, example_input: Tensor,
                constants: bool) -> SurgeryStep | None:
    """Remove ``layer``'s removable output channels from ``plain`` in place; the step, or None if none go."""
    inputs = _reader_inputs(plain, example_input)
    removable, folds = _removable_channels(dg, layer, inputs, constants=constants)
    if bool(removable.all()):  # keep the strongest channel; its constant stays where it is
        strongest = int(current_weight(layer).flatten(1).abs().sum(dim=1).argmax())
        removable, folds = _removable_channels(dg, layer, inputs, keep=strongest, constants=constants)
    idxs = torch.nonzero(removable).flatten().tolist()
    if not idxs:
        return None
    group = dg.get_pruning_group(layer, _out_fn(layer), idxs)
    if not dg.check_pruning_group(group):
        return None
    names = {id(m): n for n, m in plain.named_modules()}
    new_bias = tuple(names[id(module)] for module, _ in folds if module.bias is None)
    for module, delta in folds:
        _fold_into_bias(module, delta)
    group.prune()
    return SurgeryStep(name, tuple(idxs), new_bias)


@torch.no_grad()
def cpu_outputs(model: nn.Module, x: Tensor) -> Tensor:
    """``model``'s eval outputs on ``x`` computed by a float32 CPU copy: the same on every machine (no TF32)."""
    return copy.deepcopy(model).cpu().float().eval()(x.cpu())


def _close(output: Tensor, reference: Tensor, atol: float) -> bool:
    return output.shape == reference.shape and float((output - reference).abs().max()) <= atol * max(
        1.0, float(reference.abs().max()))


def plan_and_prune(
    plain: nn.Module, example_input: Tensor, output_layer: str | Collection[str] | None = None,
    constants: bool = True, atol: float = 1e-4,
) -> tuple[nn.Module, GraphSurgery]:
    """A copy of the plain network ``plain`` with every removable channel removed (see the module docstring),
    and the surgery. ``output_layer`` (one name or several) keeps its units (default: the layers whose outputs
    reach what ``plain`` returns on ``example_input``, :func:`~bayescompress.nn.output_layers`); a layer never
    loses its last unit; ``constants=False`` removes unread channels only.

    All steps are first made at once. If the result fails to run or to reproduce ``plain`` on
    ``example_input`` (Torch-Pruning can mis-couple a skip from the network input, or a reshape that shuffles
    channels), the steps are made one at a time on trial copies, and a step that breaks the network is left out
    with a warning naming its layer.
    """
    reference = cpu_outputs(plain, example_input)
    layers = [name for name, _ in prunable_layers(plain)]
    outputs = output_names(output_layer if output_layer is not None else output_layers(plain, example_input), layers)
    pruned, surgery = copy.deepcopy(plain), GraphSurgery()
    try:
        dg = dependency_graph(pruned, example_input)
        for name in layers:
            if name not in outputs:
                step = _prune_step(pruned, dg, name, pruned.get_submodule(name), example_input, constants)
                surgery.steps += [step] if step else []
        if _close(cpu_outputs(pruned, example_input), reference, atol):
            return pruned, surgery
    except Exception:  # noqa: BLE001 - a mis-coupled group fails with a shape error somewhere; retry step by step
        pass
    pruned, surgery, skipped = plain, GraphSurgery(), []
    for name in layers:
        if name in outputs:
            continue
        trial = copy.deepcopy(pruned)
        try:
            step = _prune_step(trial, dependency_graph(trial, example_input), name, trial.get_submodule(name),
                               example_input, constants)
            works = step is None or _close(cpu_outputs(trial, example_input), reference, atol)
        except Exception:  # noqa: BLE001 - whatever the failure, this step is left out
            works = False
        if not works:
            skipped.append(name)
        elif step is not None:
            pruned, surgery.steps = trial, surgery.steps + [step]
    if skipped:
        warnings.warn(f"channels of {', '.join(skipped)} were kept: removing them breaks the traced graph (a "
                      "skip from the network input, a reshape that moves channels, a layer left unconverted that "
                      "reads them such as a recurrent one, a tensor detached from the graph, or a layer the forward "
                      "pass never calls)", stacklevel=3)
    return pruned if surgery.steps else copy.deepcopy(plain), surgery


def replay_surgery_(plain: nn.Module, surgery: GraphSurgery, example_input: Tensor) -> nn.Module:
    """Apply a recorded surgery to a plain network of the same architecture (e.g. freshly built), in place.

    Only the structure is replayed; the values come from the weights loaded afterwards.
    """
    if not surgery.steps:  # nothing to replay, and no need for a graph that may not trace
        return plain

    dg = dependency_graph(plain, example_input)
    modules = dict(plain.named_modules())
    for step in surgery.steps:
        for name in (step.layer, *step.new_bias):
            if not isinstance(modules.get(name), (nn.Linear, nn.Conv2d)):
                raise ValueError(f"the recorded surgery names layer {name!r}, which this architecture does not "
                                 "have: it is not the one the run was saved from")
        for name in step.new_bias:
            if modules[name].bias is None:
                _add_zero_bias(modules[name])
        layer = modules[step.layer]
        if max(step.channels) >= layer.weight.shape[0]:
            raise ValueError(f"the recorded surgery removes channel {max(step.channels)} of layer {step.layer!r}, "
                             f"which has {layer.weight.shape[0]}: the architecture is not the one the run was "
                             "saved from")
        dg.get_pruning_group(layer, _out_fn(layer), list(step.channels)).prune()
    return plain


def export_with_torch_pruning(
    model: nn.Module, masks: Masks, example_input: Tensor, atol: float = 1e-4,
    output_layer: str | Collection[str] | None = None, constants: bool = True,
) -> tuple[nn.Module, GraphSurgery]:
    """A smaller deterministic copy of any ``model`` Torch-Pruning can trace, at the masked posterior mean, and
    the surgery that made it (:func:`plan_and_prune`).

    ``output_layer`` (one name or several) keeps its units (default: the layers feeding what the network
    returns); a layer never loses its last unit; ``constants=False`` removes unread channels only. Raises
    ``RuntimeError`` if the result does not reproduce the masked network on ``example_input`` (relative to the
    outputs' scale, in float32 on the CPU; use a few inputs: constants are recognised by being the same on all
    of them).
    """
    masked = masks.apply_(copy_network(model))
    plain = to_plain_network(masked).eval()
    exported, surgery = plan_and_prune(plain, example_input, output_layer, constants, atol)
    exported.eval()
    if not _close(cpu_outputs(exported, example_input), cpu_outputs(plain, example_input), atol):
        raise RuntimeError(
            "the Torch-Pruning export does not reproduce the masked network on the example input; the masks are "
            "still valid — apply them with Masks.apply_ instead of exporting"
        )
    return exported, surgery


@torch.no_grad()
def bayesian_export(
    model: nn.Module, exported: nn.Module, surgery: GraphSurgery, example_input: Tensor
) -> nn.Module:
    """The Bayesian counterpart of a Torch-Pruning export: ``exported``'s means with the posterior sigma (and
    the prior, and the masks inside kept units) of the Bayesian, masked ``model``.

    The same surgery is replayed on copies of ``model`` whose layers hold rho and the keep masks in place of
    the weights, which carries them through every coupled removal exactly as the means went.
    """
    layers = dict(prunable_layers(model))
    if not all(isinstance(layer, BayesianLayer) for layer in layers.values()):
        raise ValueError("a Bayesian export needs every Linear/Conv2d layer to be Bayesian; use bayesian=False")
    rho = replay_surgery_(_replace_layers(model, lambda l: l.weight_rho.detach(), lambda l: l.bias_rho.detach()).eval(),
                          surgery, example_input)
    keep = replay_surgery_(_replace_layers(model, _keep_mask, lambda l: torch.ones_like(l.bias)).eval(),
                           surgery, example_input)
    rho_layers, keep_layers = dict(prunable_layers(rho)), dict(prunable_layers(keep))
    kept = {name: layer.weight.bool() for name, layer in keep_layers.items()}
    result = convert_export_(copy.deepcopy(exported), lambda name: copy.deepcopy(layers[name].prior),
                             lambda name: None if bool(kept[name].all()) else kept[name])
    for name, bayesian in prunable_layers(result):
        bayesian.weight_rho.copy_(rho_layers[name].weight)
        if bayesian.bias is not None:
            if layers[name].bias is not None:
                bayesian.bias_rho.copy_(rho_layers[name].bias)
            else:  # a bias that only carries folded constants
                bayesian.bias_rho.fill_(DETERMINISTIC_RHO)
    return result


def convert_export_(model: nn.Module, prior_of, mask_of) -> nn.Module:
    """Turn every plain layer of an exported network into its Bayesian type in place, with the prior
    ``prior_of(name)`` and, where ``mask_of(name)`` is not None, that keep mask; returns ``model``. Sigma
    starts as on conversion, for the caller to set."""
    for name, layer in prunable_layers(model):
        bayesian = BAYESIAN_TYPES[type(layer)].convert_(layer, prior_of(name))
        mask = mask_of(name)
        if mask is not None:
            torch.nn.utils.prune.custom_from_mask(bayesian, "weight", mask.to(bayesian.weight))
    return model


def _keep_mask(layer: nn.Module) -> Tensor:
    return torch.ones_like(layer.weight) if layer.weight_keep is None else layer.weight_keep
