"""The three training estimators (lrt, flipout, shared) against explicit weight sampling: every one gives each
pre-activation the posterior's marginal mean and variance; they differ only in how a batch's samples relate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal
from torch.nn.utils import prune

from bayescompress.nn import ESTIMATORS, BayesConv2d, BayesLinear, PosteriorInit, set_estimator_

SAMPLES = 6000


def _layer(kind: str):
    torch.manual_seed(0)
    layer = (BayesLinear(5, 3, init=PosteriorInit(rho=-1.0)) if kind == "linear" else
             BayesConv2d(2, 3, 3, init=PosteriorInit(rho=-1.0)))
    x = torch.randn(1, 5) if kind == "linear" else torch.randn(1, 2, 4, 4)
    return layer.train(), x


def _explicit(layer, x, n: int) -> torch.Tensor:
    """Outputs for n weights drawn from the posterior one by one with torch.distributions (the reference)."""
    weights = Normal(layer.weight.detach(), layer.weight_sigma.detach()).sample((n,))
    biases = Normal(layer.bias.detach(), layer.bias_sigma.detach()).sample((n,))
    if isinstance(layer, BayesLinear):
        return torch.einsum("ni,noi->no", x.expand(n, -1), weights) + biases
    return torch.cat([F.conv2d(x, w, b) for w, b in zip(weights, biases)])


def _passes(layer, x, estimator: str, n: int) -> torch.Tensor:
    set_estimator_(nn.Sequential(layer), estimator)
    with torch.no_grad():
        if estimator == "lrt":  # independent per example: one pass
            return layer(x.expand(n, *x.shape[1:]))
        # one weight perturbation per pass (flipout's examples share it, only their signs differ): n passes
        return torch.cat([layer(x) for _ in range(n)])


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_estimator_has_the_marginals_of_explicit_weight_sampling(kind, estimator):
    layer, x = _layer(kind)
    torch.manual_seed(1)
    reference = _explicit(layer, x, SAMPLES)
    torch.manual_seed(2)
    sampled = _passes(layer, x, estimator, SAMPLES)
    scale = reference.std(0)
    # standard errors: mean sigma / sqrt(n), variance about var * sqrt(2 / n) per sample set; 5 of them
    assert ((sampled.mean(0) - reference.mean(0)).abs() / scale).max() < 5 * (2 / SAMPLES) ** 0.5
    assert ((sampled.var(0) / reference.var(0)) - 1).abs().max() < 5 * (4 / SAMPLES) ** 0.5


def test_shared_gives_one_weight_sample_to_the_batch_and_the_others_do_not():
    layer, x = _layer("linear")
    twins = x.expand(2, -1)
    for estimator in ESTIMATORS:
        set_estimator_(nn.Sequential(layer), estimator)
        with torch.no_grad():
            out = layer(twins)
        assert torch.equal(out[0], out[1]) == (estimator == "shared"), estimator


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_pruned_weights_stay_zero_in_every_sample(estimator):
    layer, x = _layer("linear")
    mask = torch.ones_like(layer.weight)
    mask[:, 2] = 0  # input 2 is cut from every unit
    prune.custom_from_mask(layer, "weight", mask)
    set_estimator_(nn.Sequential(layer), estimator)
    changed = x.clone()
    changed[0, 2] += 10.0
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    assert torch.allclose(layer(changed), out, atol=1e-6)


def test_an_unknown_estimator_lists_the_known_ones():
    layer, _ = _layer("linear")
    with pytest.raises(ValueError, match="lrt, flipout, shared"):
        layer.set_estimator_("reinforce")


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gradients_flow_to_means_and_rho(estimator):
    layer, x = _layer("conv")
    set_estimator_(nn.Sequential(layer), estimator)
    layer(x.expand(4, -1, -1, -1)).pow(2).sum().backward()
    assert layer.weight.grad.abs().sum() > 0 and layer.weight_rho.grad.abs().sum() > 0
