"""Export of general graphs (residual blocks, concatenations) through Torch-Pruning's DependencyGraph.

Torch-Pruning knows which layers are coupled — a residual sum ties the output channels of every layer that
feeds it, BatchNorm follows its convolution — so removing a channel removes it everywhere at once. We feed it
our masks: a unit is removed when every layer that reads it (every in-channel consumer in its dependency
group) has all the corresponding weights pruned, so removing it cannot change the function. Constant folding
is left to the sequential path; the exported network is verified against the masked one on the example input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bayescompress.pruning.export import plain_layer_like
from bayescompress.pruning.masks import Masks, copy_network, current_weight, prunable_layers


def _may_mix_channels(module) -> bool:
    passes_through = (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm)  # (Linear/Conv as coupled producers)
    internal = type(module).__module__.startswith("torch_pruning")  # element-wise, reshape, concat nodes
    return isinstance(module, nn.Module) and not isinstance(module, passes_through) and not internal


@torch.no_grad()
def to_plain_network(model: nn.Module) -> nn.Module:
    """A deterministic copy of ``model``: every Linear/Conv2d becomes a plain layer at its posterior mean with
    its prune mask baked into the weight (no ``weight_rho``, no prune buffers)."""
    plain = copy_network(model)
    for name, layer in prunable_layers(plain):
        n_in = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
        fresh = plain_layer_like(layer, n_in, layer.weight.shape[0], bayesian=False, groups=getattr(layer, "groups", 1))
        fresh.weight.copy_(current_weight(layer))
        if layer.bias is not None:
            fresh.bias.copy_(layer.bias.detach())
        fresh.to(layer.weight.device)
        if name:
            parent, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent) if parent else plain, child, fresh)
        else:
            plain = fresh
    return plain


def _unread_units(dg, layer: nn.Module, out_fn) -> Tensor:
    """Per output unit of ``layer``: True when every layer reading it has all the corresponding weights zero.

    Readers are the Linear/Conv2d layers whose input channels the dependency group prunes; BatchNorm and
    Torch-Pruning's own element-wise/reshaping nodes pass channels through. Any other module in the group
    might mix channels, so then nothing is removed.
    """
    import torch_pruning as tp

    readers = {tp.prune_conv_in_channels, tp.prune_linear_in_channels}
    n = layer.weight.shape[0]
    group = dg.get_pruning_group(layer, out_fn, list(range(n)))
    read = torch.zeros(n, dtype=torch.bool)
    has_reader = torch.zeros(n, dtype=torch.bool)
    for item in group.items:
        module = item.dep.target.module
        if item.dep.handler in readers and isinstance(module, (nn.Linear, nn.Conv2d)):
            # idxs: the reader's input index; root_idxs: which unit of ``layer`` it carries
            columns, roots = torch.tensor(item.idxs), torch.tensor(item.root_idxs)
            nonzero = module.weight.detach().transpose(0, 1).flatten(1).ne(0).any(dim=1)[columns]
            read.index_put_((roots,), nonzero, accumulate=True)
            has_reader[roots] = True
        elif _may_mix_channels(module):
            return torch.zeros(n, dtype=torch.bool)
    return has_reader & ~read


def export_with_torch_pruning(model: nn.Module, masks: Masks, example_input: Tensor, atol: float = 1e-4) -> nn.Module:
    """A smaller deterministic copy of any ``model`` Torch-Pruning can trace, at the masked posterior mean.

    The last Linear/Conv2d layer (the output) keeps its units; a layer never loses its last unit.
    Raises ``RuntimeError`` if the result does not reproduce the masked network on ``example_input``.
    """
    import torch_pruning as tp

    masked = masks.apply_(copy_network(model))
    plain = to_plain_network(masked).eval()
    with torch.no_grad():
        reference = plain(example_input)
    dg = tp.DependencyGraph().build_dependency(plain, example_inputs=example_input)  # traces with autograd
    for _, layer in prunable_layers(plain)[:-1]:
        out_fn = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
        unread = _unread_units(dg, layer, out_fn)
        if bool(unread.all()):
            unread[int(current_weight(layer).flatten(1).abs().sum(dim=1).argmax())] = False
        idxs = torch.nonzero(unread).flatten().tolist()
        if idxs:
            group = dg.get_pruning_group(layer, out_fn, idxs)
            if dg.check_pruning_group(group):
                group.prune()
    with torch.no_grad():
        difference = float((plain(example_input) - reference).abs().max())
    if difference > atol:
        raise RuntimeError(
            f"the Torch-Pruning export changed the network's output by {difference:.3g} on the example input; "
            "the masks are still valid — apply them with Masks.apply_ instead of exporting"
        )
    return plain
