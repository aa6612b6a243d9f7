"""Folding BatchNorm into the layer before it, so a channel a prior switches off is exactly zero.

BatchNorm after a convolution maps a zero channel to its shift beta - gamma * mean / std, not to zero, so a
spike-and-slab gate or a pruned row cannot empty a conv-BN-ReLU channel while BatchNorm sits behind it. Folded
into the convolution (eval-mode statistics: w' = w * gamma / std, b' = (b - mean) * gamma / std + beta) the pair
computes the same function, the BatchNorm becomes ``nn.Identity``, and the channel's whole affine map lives in
one layer whose posterior and gates act on it. Only pairs where the layer's output goes to the BatchNorm and
nowhere else are folded (found on Torch-Pruning's traced graph), so no other reader of the pre-BN values changes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bayescompress.nn.layers import is_handled_layer
from bayescompress.nn.model import handled_layers, observe
from bayescompress.pruning.masks import replace_submodule

_FOLDABLE = {nn.Conv2d: nn.BatchNorm2d, nn.Linear: nn.BatchNorm1d}


def foldable_pairs(model: nn.Module, example_input: Tensor) -> list[tuple[str, str]]:
    """(layer, batchnorm) names of every Linear/Conv2d whose only consumer is a BatchNorm with running
    statistics over that layer's output units (a Linear's output must be (batch, features): BatchNorm1d on
    (batch, tokens, features) normalises the tokens), in module order."""
    from bayescompress.pruning.graph_export import dependency_graph  # here: graph_export imports the layers too

    names = {id(m): n for n, m in model.named_modules()}
    output_dims: dict[str, int] = {}
    observe(model, handled_layers(model), example_input[:1],
            lambda name, _inputs, output: output_dims.__setitem__(name, output.dim()))
    was_training = model.training
    model.eval()
    try:
        dg = dependency_graph(model, example_input)
    finally:
        model.train(was_training)
    pairs = []
    for name, layer in model.named_modules():
        node = dg.module2node.get(layer)
        if node is None or not is_handled_layer(layer) or len(node.outputs) != 1:
            continue
        bn = node.outputs[0].module
        per_unit = output_dims.get(name) == (4 if isinstance(layer, nn.Conv2d) else 2) \
            and getattr(bn, "num_features", None) == layer.weight.shape[0]
        if (type(bn) is _FOLDABLE.get(type(layer)) and per_unit and bn.track_running_stats
                and bn.running_mean is not None and len(node.outputs[0].inputs) == 1):
            pairs.append((name, names[id(bn)]))
    return pairs


@torch.no_grad()
def fold_batchnorm_(model: nn.Module, pairs: list[tuple[str, str]]) -> nn.Module:
    """Fold each (layer, batchnorm) pair of ``pairs`` (see :func:`foldable_pairs`) in place; returns ``model``.

    A bias-free layer gains a bias. The eval-mode function is unchanged.

    Example
    -------
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2), nn.ReLU()).eval()
    >>> x = torch.randn(2, 1, 5, 5)
    >>> before = net(x)
    >>> _ = fold_batchnorm_(net, foldable_pairs(net, x))
    >>> type(net[1]).__name__, bool(torch.allclose(net(x), before, atol=1e-6))
    ('Identity', True)
    """
    for layer_name, bn_name in pairs:
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        scale = torch.rsqrt(bn.running_var + bn.eps)
        shift = -bn.running_mean * scale
        if bn.affine:
            scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
        layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))
        bias = shift if layer.bias is None else layer.bias * scale + shift
        layer.bias = nn.Parameter(bias.to(layer.weight.dtype).clone())
        replace_submodule(model, bn_name, nn.Identity())
    return model
