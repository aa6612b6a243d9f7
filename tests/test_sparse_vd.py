"""Sparse variational dropout: the KL approximation against a numerical integral, the log-alpha pruning rule, the
prior's masking, and the method end to end on digits."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from bayescompress import PipelineConfig, compress
from bayescompress.methods import SparseVD
from bayescompress.nn import BayesLinear
from bayescompress.nn.layers import inverse_softplus
from bayescompress.priors import LogUniformPrior
from bayescompress.priors.kl import kl_log_uniform


def exact_kl(log_alpha: float) -> float:
    """KL(N(theta, alpha theta^2) || log-uniform) = -1/2 log alpha + E log|eps|, eps ~ N(1, alpha), up to the
    constant that makes it vanish as alpha -> inf: (euler_gamma + log 2) / 2 = -E log|z|, z ~ N(0, 1)."""
    s = math.sqrt(math.exp(log_alpha))
    integrand = lambda z: math.log(abs(1.0 + s * z)) * stats.norm.pdf(z)  # noqa: E731
    root = -1.0 / s  # the integrable log singularity, an endpoint of both pieces
    expectation = (integrate.quad(integrand, -np.inf, root, limit=200)[0]
                   + integrate.quad(integrand, root, np.inf, limit=200)[0])
    return -0.5 * log_alpha + expectation + (np.euler_gamma + math.log(2.0)) / 2


def test_the_kl_approximation_matches_the_numerical_integral():
    log_alphas = np.linspace(-8.0, 8.0, 33)
    exact = np.array([exact_kl(a) for a in log_alphas])
    approx = kl_log_uniform(torch.tensor(log_alphas)).numpy()
    # Molchanov et al. report the fit as tight to about 0.01 nats
    assert np.abs(exact - approx).max() < 0.01
    assert np.all(np.diff(approx) < 0)  # more noise, less KL: the prior pushes alpha up


def layer_with(mu: torch.Tensor, sigma: torch.Tensor) -> BayesLinear:
    layer = BayesLinear(mu.shape[1], mu.shape[0], prior=LogUniformPrior())
    with torch.no_grad():
        layer.weight.copy_(mu)
        layer.weight_rho.copy_(inverse_softplus(sigma))
    return layer


def test_the_prior_kl_is_the_sum_over_unmasked_weights_of_the_approximation():
    mu = torch.tensor([[1.0, -0.5, 0.02], [0.3, 2.0, -1e-3]])
    sigma = torch.full_like(mu, 0.1)
    layer = layer_with(mu, sigma)
    log_alpha = (2 * torch.log(sigma / mu.abs())).clamp(-8, 8)
    assert torch.allclose(layer.kl(), kl_log_uniform(log_alpha).sum(), rtol=1e-5)
    keep = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    torch.nn.utils.prune.custom_from_mask(layer, "weight", keep)
    assert torch.allclose(layer.kl(), kl_log_uniform(log_alpha)[keep.bool()].sum(), rtol=1e-5)


def test_sparse_vd_prunes_exactly_the_weights_with_log_alpha_above_the_threshold():
    torch.manual_seed(0)
    mu = torch.randn(6, 8)
    log_alpha = torch.linspace(-4.0, 6.0, 48).reshape(6, 8)
    sigma = mu.abs() * torch.exp(log_alpha / 2)
    net = torch.nn.Sequential(layer_with(mu, sigma), torch.nn.ReLU(), layer_with(torch.randn(2, 6), torch.full((2, 6), 1e-3)))
    masks = SparseVD(log_alpha_threshold=2.0).strategy(SparseVD(log_alpha_threshold=2.0).configure(net)).masks(net, "2")
    assert torch.equal(masks.weight["0"].bool(), log_alpha <= 2.0)


def test_train_clip_zeroes_the_sampled_mean_of_the_noisy_weights_and_only_the_data_gradient_on_them():
    torch.manual_seed(0)
    mu = torch.randn(5, 8)
    log_alpha = torch.linspace(-4.0, 6.0, 40).reshape(5, 8)
    layer = layer_with(mu, mu.abs() * torch.exp(log_alpha / 2))
    layer.prior = LogUniformPrior(train_clip=3.0)
    noise = log_alpha > 3.0
    x = torch.randn(64, 8)
    layer.train()
    torch.manual_seed(1)
    out = layer(x)
    # the same noise, drawn again, on the output of an explicitly clipped mean: the pass differs only there
    torch.manual_seed(1)
    variance = (x * x) @ layer.weight_sigma.detach().T ** 2 + layer.bias_sigma.detach() ** 2 + 1e-8
    clipped = x @ torch.where(noise, 0.0, mu).T + layer.bias.detach()
    assert torch.allclose(out, clipped + variance.sqrt() * torch.randn_like(clipped), atol=1e-5)
    out.sum().backward()
    assert torch.all(layer.weight.grad[noise] == 0) and torch.all(layer.weight.grad[~noise] != 0)
    layer.zero_grad()
    layer.kl().backward()  # the KL still acts on every weight
    assert torch.all(layer.weight.grad != 0)
    layer.eval()  # the posterior-mean pass is the posterior mean
    assert torch.allclose(layer(x), x @ mu.T + layer.bias.detach(), atol=1e-5)


@pytest.mark.parametrize("settings, cut", [(dict(train_clip=True, log_alpha_threshold=2.5), 2.5),
                                           ({}, 3.0),  # the authors' recipe, the default
                                           (dict(train_clip=False), None)])
def test_sparse_vd_train_clip_cuts_at_its_pruning_threshold(settings, cut):
    method = SparseVD(**settings)
    assert method.prior(method.configure(torch.nn.Sequential(BayesLinear(4, 3)))).train_clip == cut


def test_a_train_clip_outside_the_log_alpha_clip_is_refused():
    with pytest.raises(ValueError, match="train_clip"):
        LogUniformPrior(log_alpha_clip=8.0, train_clip=9.0)


@pytest.mark.parametrize("setting, value", [("log_alpha_threshold", 9.0), ("init_rho", "x")])
def test_bad_sparse_vd_settings_are_refused_on_construction(setting, value):
    with pytest.raises(ValueError, match=setting):
        SparseVD(**{setting: value})


def test_sparse_vd_compresses_digits_and_keeps_its_accuracy():
    from bayescompress.data import load_dataset, make_loaders
    from bayescompress.workflows import pretrain

    net = pretrain("mlp", "digits", epochs=10, lr=3e-3, batch_size=64, hidden=(32,), quiet=True).model
    train, val, test = make_loaders(load_dataset("digits"), batch_size=64)
    result = compress(net, train, val, SparseVD(epochs=30, kl_warmup_epochs=5, lr=3e-3), test_loader=test,
                      pipeline=PipelineConfig(mc_samples=2, quiet=True))
    m = result.metrics
    assert m["compression_rate"] > 3.0
    assert m["accuracy_loss"]["compressed"] < 0.03
    assert m["export_max_abs_diff"] <= 1e-4
