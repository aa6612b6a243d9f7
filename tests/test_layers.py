"""Bayesian layers: LRT statistics against explicit weight sampling, conversion, state_dict, prediction."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayescompress.io import load_state_dict_file, save_weights
from bayescompress.models import lenet5, mlp
from bayescompress.nn import (
    BayesConv2d,
    BayesianLayer,
    BayesLinear,
    PosteriorInit,
    bayesian_layers,
    bayesianize_,
    kl_divergence,
    layers,
    mc_sampling,
    predict,
    shared_sigma,
)
from bayescompress.priors import GaussianPrior


def _random_posterior_(layer: BayesianLayer) -> BayesianLayer:
    with torch.no_grad():
        layer.weight_rho.copy_(torch.randn_like(layer.weight_rho) * 0.5 - 1.0)
        layer.bias_rho.copy_(torch.randn_like(layer.bias_rho) * 0.5 - 1.0)
    return layer


def _explicit_samples(layer, x, n):
    """Outputs of ``layer`` under n explicit draws of (W, b) from the posterior, shape (n, *out)."""
    w = layer.weight.detach() + layer.weight_sigma.detach() * torch.randn(n, *layer.weight.shape)
    b = layer.bias.detach() + layer.bias_sigma.detach() * torch.randn(n, *layer.bias.shape)
    if isinstance(layer, nn.Conv2d):
        # one convolution with n * out channels evaluates every sampled kernel at once
        out = F.conv2d(x, w.reshape(-1, *w.shape[2:]), b.reshape(-1), layer.stride, layer.padding)
        return out.reshape(x.shape[0], n, -1, *out.shape[2:]).transpose(0, 1)
    return torch.einsum("ni,soi->sno", x, w) + b[:, None, :]


def _lrt_samples(layer, x, n):
    layer.train()
    with torch.no_grad():
        out = layer(x.repeat(n, *([1] * (x.dim() - 1))))
    return out.reshape(n, x.shape[0], *out.shape[1:])


@pytest.mark.parametrize(
    "make",
    [
        lambda: (BayesLinear(5, 3), torch.randn(4, 5)),
        lambda: (BayesConv2d(2, 3, 3, padding=1), torch.randn(2, 2, 4, 4)),
    ],
    ids=["linear", "conv"],
)
def test_lrt_mean_and_variance_match_explicit_weight_sampling(make):
    layer, x = make()
    _random_posterior_(layer)
    n = 40_000
    explicit = _explicit_samples(layer, x, n)
    lrt = _lrt_samples(layer, x, n)
    assert lrt.shape == explicit.shape
    std = explicit.std(0)
    # means agree within 5 standard errors of their difference; variances within 5 % (a variance's
    # standard error is ~0.7 % here)
    assert ((lrt.mean(0) - explicit.mean(0)).abs() <= 5 * std * (2 / n) ** 0.5).all()
    assert torch.allclose(lrt.var(0), explicit.var(0), rtol=0.05)
    # and both agree with the analytic moments
    with torch.no_grad():
        analytic_var = layer._op(x * x, layer.weight_sigma**2, layer.bias_sigma**2)
    assert torch.allclose(explicit.var(0), analytic_var, rtol=0.05)


def test_train_mode_samples_eval_mode_returns_posterior_mean():
    layer = _random_posterior_(BayesLinear(4, 3))
    x = torch.randn(6, 4)
    layer.train()
    assert not torch.equal(layer(x), layer(x))
    layer.eval()
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    with mc_sampling(layer):
        assert not torch.equal(layer(x), layer(x))
    assert not layer.mc_sample


class NestedBatchNormNet(nn.Module):
    """BatchNorm inside nested containers, a ModuleDict and a ModuleList."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
            nn.ModuleDict({"conv": nn.Conv2d(4, 6, 3, stride=2, bias=False), "bn": nn.BatchNorm2d(6)}),
        )
        self.head = nn.ModuleList([nn.Linear(6 * 3 * 3, 16), nn.BatchNorm1d(16), nn.Linear(16, 5)])

    def forward(self, x):
        x = self.features[0](x)
        x = F.relu(self.features[1]["bn"](self.features[1]["conv"](x)))
        x = x.flatten(1)
        x = F.relu(self.head[1](self.head[0](x)))
        return self.head[2](x)


def _pretrained_nested():
    net = NestedBatchNormNet()
    net.train()
    for _ in range(3):  # non-trivial running statistics
        net(torch.randn(16, 1, 7, 7) * 2 + 1)
    return net.eval(), torch.randn(10, 1, 7, 7)


@pytest.mark.parametrize(
    "make",
    [
        lambda: (mlp(64, (32, 16), 10).eval(), torch.randn(10, 1, 8, 8)),
        lambda: (lenet5().eval(), torch.randn(10, 1, 28, 28)),
        _pretrained_nested,
    ],
    ids=["mlp", "lenet5", "nested-batchnorm"],
)
def test_converted_network_computes_the_original_function_in_eval(make):
    original, x = make()
    expected = original(x)
    converted = bayesianize_(copy.deepcopy(original)).eval()
    assert (converted(x) - expected).abs().max().item() <= 1e-5
    n_linear_conv = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in original.modules())
    assert len(bayesian_layers(converted)) == n_linear_conv
    converted_modules = dict(converted.named_modules())
    for name, module in original.named_modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert type(converted_modules[name]) is type(module)


def test_conversion_keeps_the_parameter_objects_and_starts_with_small_sigma():
    net = mlp(8, (4,), 3)
    weight = net[1].weight
    bayesianize_(net, init=PosteriorInit(relative=1e-3, floor=1e-5))
    assert net[1].weight is weight
    expected_sigma = 1e-3 * weight.detach().abs() + 1e-5
    assert torch.allclose(net[1].weight_sigma, expected_sigma, rtol=1e-4)
    bayesianize_(fixed := mlp(8, (4,), 3), init=PosteriorInit(rho=-6.0))
    assert torch.allclose(fixed[1].weight_sigma, F.softplus(torch.tensor(-6.0)).expand(4, 8))


def test_state_dict_round_trips_through_safetensors(tmp_path):
    original, x = _pretrained_nested()
    source = bayesianize_(copy.deepcopy(original), GaussianPrior(scale=0.3))
    for _, layer in bayesian_layers(source):
        with torch.no_grad():
            layer.weight_rho.add_(torch.randn_like(layer.weight_rho))
    save_weights(source.state_dict(), tmp_path / "bnn.safetensors")

    target = bayesianize_(NestedBatchNormNet())
    target.load_state_dict(load_state_dict_file(tmp_path / "bnn.safetensors"))
    source.eval(), target.eval()
    assert torch.equal(source(x), target(x))
    assert torch.equal(kl_divergence(source), kl_divergence(target))
    torch.manual_seed(1)
    a = predict(source, x, samples=3)
    torch.manual_seed(1)
    assert torch.equal(a, predict(target, x, samples=3))


def test_predict_averages_probabilities_not_logits():
    net = bayesianize_(nn.Sequential(nn.Linear(3, 4)))
    _random_posterior_(net[0])
    x = torch.randn(5, 3)
    torch.manual_seed(7)
    probs = predict(net, x, samples=6)
    torch.manual_seed(7)
    net.eval()
    with mc_sampling(net), torch.no_grad():
        manual = torch.stack([torch.softmax(net(x), -1) for _ in range(6)]).mean(0)
    assert torch.allclose(probs, manual)
    assert not net.training
    assert torch.allclose(predict(net, x, samples=0), torch.softmax(net(x), -1))


def test_include_exclude_and_per_layer_prior_factory():
    net = mlp(8, (6, 4), 3)
    bayesianize_(net, lambda name, layer: GaussianPrior(scale=layer.in_features / 10), exclude=["5"])
    assert [name for name, _ in bayesian_layers(net)] == ["1", "3"]
    assert torch.isclose(net[3].prior.scale, torch.tensor(0.6))
    only = bayesianize_(mlp(8, (6,), 3), include=["3"])
    assert [name for name, _ in bayesian_layers(only)] == ["3"]


def test_a_model_without_linear_or_conv_layers_is_refused_naming_the_supported_types():
    with pytest.raises(ValueError, match=r"supported types: nn\.Linear, nn\.Conv2d"):
        bayesianize_(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))


@pytest.mark.parametrize("patterns", [dict(include=["nope*"]), dict(include=["3", "nope"]), dict(exclude=["typo"])])
def test_a_pattern_that_matches_no_layer_is_refused_naming_it(patterns):
    kind, (*_, bad) = next(iter(patterns.items()))
    message = rf"{kind} pattern '{re.escape(bad)}' matches none of the convertible layers \(1, 3\)"
    with pytest.raises(ValueError, match=message):
        bayesianize_(mlp(8, (6,), 3), **patterns)


def test_patterns_that_select_nothing_are_refused():
    with pytest.raises(ValueError, match="select none"):
        bayesianize_(mlp(8, (6,), 3), include=["3"], exclude=["*"])


def test_one_pattern_may_be_given_as_a_string():
    assert [name for name, _ in bayesian_layers(bayesianize_(mlp(8, (6,), 3), exclude="3"))] == ["1"]


def test_bad_posterior_init_names_the_field():
    with pytest.raises(ValueError, match="floor"):
        PosteriorInit(floor=0.0)
    with pytest.raises(ValueError, match="relative"):
        PosteriorInit(relative=-1.0)


def test_reset_sigma_restarts_from_the_current_means_and_respects_prune_masks():
    layer = BayesLinear(4, 3)
    with torch.no_grad():
        layer.weight.mul_(5.0)
        layer.weight_rho.fill_(1.0)
    torch.nn.utils.prune.custom_from_mask(layer, "weight", torch.ones(3, 4))
    init = PosteriorInit(relative=0.01, floor=1e-4)
    layer.reset_sigma_(init)
    assert torch.allclose(layer.weight_sigma, 0.01 * layer.weight_orig.abs() + 1e-4, rtol=1e-4)
    assert torch.allclose(layer.bias_sigma, 0.01 * layer.bias.abs() + 1e-4, rtol=1e-4)
    layer.reset_sigma_(PosteriorInit(rho=-6.0))
    assert torch.allclose(layer.weight_sigma, torch.full((3, 4), 0.00247568), rtol=1e-4)


def test_softplus_squared_gradient_matches_finite_differences():
    from bayescompress.nn.layers import _SoftplusSquared

    rho = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    keep = (torch.rand(4, 3) > 0.5).double()
    assert torch.autograd.gradcheck(lambda r: _SoftplusSquared.apply(r, None), (rho,))
    assert torch.autograd.gradcheck(lambda r: _SoftplusSquared.apply(r, keep), (rho,))
    assert torch.allclose(_SoftplusSquared.apply(rho, keep), F.softplus(rho) ** 2 * keep)


def test_softplus_is_torch_softplus_in_float64_to_two_ulps_with_the_sigmoid_as_gradient():
    # every regime: exp underflowing, 1 + exp(rho) rounding to 1, the usual sigmas, and past the linear threshold
    rho = torch.cat([torch.linspace(-80.0, 90.0, 20001), torch.tensor([-17.0, -16.6, -1e-3, 0.0, 19.99, 20.0, 20.01])])
    rho = rho.requires_grad_()
    sigma = layers.softplus(rho)
    reference = F.softplus(rho.detach().double())
    normal = reference > torch.finfo(torch.float32).tiny  # below it a float32 result has no relative precision
    relative = ((sigma.detach().double() - reference).abs() / reference)[normal]
    assert relative.max() <= 2 * torch.finfo(torch.float32).eps
    sigma.sum().backward()
    assert torch.allclose(rho.grad.double(), torch.sigmoid(rho.detach().double()), rtol=2e-7, atol=1e-30)
    double = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layers.softplus, (double,))


def test_sampled_output_is_the_plain_formula_with_the_same_noise_and_its_gradient_checks():
    from bayescompress.nn.layers import _SampleOutput

    mean = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    variance = (torch.rand(3, 5, dtype=torch.float64) + 0.1).requires_grad_()

    def seeded(m, v):
        torch.manual_seed(0)
        return _SampleOutput.apply(m * 1.0, v)  # it writes over its mean, which must be a fresh result

    torch.manual_seed(0)
    plain = mean + torch.sqrt(variance) * torch.randn_like(mean)
    assert torch.allclose(seeded(mean, variance), plain)
    assert torch.autograd.gradcheck(seeded, (mean, variance))


def test_a_layer_without_bias_samples_with_the_variance_floor_and_a_finite_gradient():
    layer = BayesLinear(4, 3, bias=False).train()
    torch.nn.utils.prune.custom_from_mask(layer, "weight", torch.zeros(3, 4))  # every variance exactly 0
    out = layer(torch.randn(5, 4))
    out.sum().backward()
    assert torch.isfinite(layer.weight_orig.grad).all() and torch.isfinite(layer.weight_rho.grad).all()
    assert (out.abs() < 1e-3).all() and (out != 0).any()  # only the floor's noise, std 1e-4


def _loss_and_grads(net, x, share):
    torch.manual_seed(1)  # the same noise in both passes
    net.zero_grad()
    if share:
        with shared_sigma(net):
            loss = net(x).pow(2).sum() + kl_divergence(net)
    else:
        loss = net(x).pow(2).sum() + kl_divergence(net)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("masked", [False, True])
def test_shared_sigma_gives_the_same_loss_and_gradients_with_one_softplus_per_rho(masked, monkeypatch):
    net = bayesianize_(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))).train()
    if masked:
        torch.nn.utils.prune.random_unstructured(net[0], "weight", amount=0.5)
    x = torch.randn(5, 2, 6, 6)
    plain_loss, plain = _loss_and_grads(net, x, share=False)
    calls = []
    softplus = layers.softplus
    monkeypatch.setattr(layers, "softplus", lambda t: calls.append(t) or softplus(t))
    shared_loss, shared = _loss_and_grads(net, x, share=True)
    assert torch.allclose(plain_loss, shared_loss, rtol=1e-6)
    for a, b in zip(plain, shared):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert len(calls) == 4  # weight and bias rho of two layers, once each, for the forward and the KL


def test_shared_sigma_never_serves_a_sigma_older_than_rho():
    layer = BayesLinear(3, 2).train()
    with shared_sigma(layer):
        before = layer.weight_sigma
        with torch.no_grad():
            layer.weight_rho.add_(1.0)
        assert torch.allclose(layer.weight_sigma, torch.nn.functional.softplus(layer.weight_rho))
        assert not torch.allclose(layer.weight_sigma, before)
    assert layer._sigma_memo is None
