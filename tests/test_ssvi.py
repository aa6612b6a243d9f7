"""SSVI: the folded-normal scores against Monte Carlo, the drop schedule, the sparse subspace's invariants, the
method end to end, and its bad inputs."""

import math

import pytest
import torch
from torch import nn

from bayescompress import PipelineConfig, compress
from bayescompress.inference import Callback, SparseSubspace, TrainConfig, fit
from bayescompress.inference.subspace import drop_fraction
from bayescompress.methods import SSVI, SSVIConfig
from bayescompress.nn import bayesianize_
from bayescompress.pruning.importance import folded_normal_mean, folded_normal_snr, removal_score


@pytest.mark.parametrize("mu, sigma", [(0.0, 1.0), (0.3, 0.2), (-1.5, 0.5), (2.0, 3.0)])
def test_folded_normal_mean_and_snr_match_monte_carlo(mu, sigma):
    torch.manual_seed(0)
    draws = torch.distributions.Normal(mu, sigma).sample((400_000,)).abs().double()
    mean, sd = draws.mean(), draws.std()
    mu_t, sigma_t = torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)
    assert float(folded_normal_mean(mu_t, sigma_t)) == pytest.approx(float(mean), rel=5e-3)
    assert float(folded_normal_snr(mu_t, sigma_t)) == pytest.approx(float(mean / sd), rel=1e-2)


def test_the_removal_scores_are_the_four_named_and_an_unknown_one_lists_them():
    layer = bayesianize_(nn.Sequential(nn.Linear(3, 2)))[0]
    mu, sigma = layer.weight.detach(), layer.weight_sigma.detach()
    torch.testing.assert_close(removal_score(layer, "magnitude"), mu.abs())
    torch.testing.assert_close(removal_score(layer, "snr"), mu.abs() / sigma)
    torch.testing.assert_close(removal_score(layer, "folded_mean"), folded_normal_mean(mu, sigma))
    with pytest.raises(ValueError, match="unknown removal score 'size'; valid ones: magnitude, snr, folded_mean, "
                                         "folded_snr"):
        removal_score(layer, "size")


def test_the_drop_fraction_follows_the_cosine_schedule():
    assert drop_fraction(0, 100, 0.3) == pytest.approx(0.3)
    assert drop_fraction(50, 100, 0.3) == pytest.approx(0.15)
    assert drop_fraction(100, 100, 0.3) == pytest.approx(0.0, abs=1e-12)
    assert drop_fraction(25, 100, 0.3) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))


class _Watch(Callback):
    """Records, after every step, each layer's mask and what an update did to the weights."""

    def __init__(self, subspace):
        self.subspace, self.records = subspace, []

    def on_after_backward(self, trainer):
        self._before = {name: (layer.weight_mask.clone(), layer.weight_orig.detach().clone(),
                               layer.weight_rho.detach().clone())
                        for name, layer in trainer.model.named_children() if hasattr(layer, "weight_mask")}
        self._updated = self.subspace._due(trainer.step)

    def on_batch_end(self, trainer, batch, loss):
        for name, layer in trainer.model.named_children():
            if not hasattr(layer, "weight_mask"):
                continue
            mask, weight, rho = self._before[name]
            state = trainer.optimizer.state.get(layer.weight_orig, {})
            self.records.append(dict(step=trainer.step, name=name, updated=self._updated, before=mask.bool(),
                                     after=layer.weight_mask.bool().clone(), weight_before=weight, rho_before=rho,
                                     weight=layer.weight_orig.detach().clone(), rho=layer.weight_rho.detach().clone(),
                                     exp_avg=state.get("exp_avg", torch.zeros_like(weight)).clone()))


@pytest.fixture(scope="module")
def subspace_run():
    torch.manual_seed(0)
    net = bayesianize_(nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)))
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    loader = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)]
    subspace = SparseSubspace(0.25, update_interval=3, alpha=0.5, end_fraction=0.75, initial="random")
    watch = _Watch(subspace)
    fit(net, loader, config=TrainConfig(epochs=4, lr=1e-2, quiet=True), callbacks=[watch, subspace], n_train=64)  # watch first: it sees the state before each update
    return net, subspace, watch.records, x


def test_the_density_is_exactly_constant_and_updates_come_every_delta_steps_before_t_end(subspace_run):
    net, subspace, records, _ = subspace_run
    for record in records:
        size = record["after"].numel()
        assert int(record["after"].sum()) == round(0.25 * size)
    total, end = 4 * 8, int(0.75 * 32)
    expected = [t for t in range(1, total) if t % 3 == 0 and t < end]
    assert sorted({r["step"] - 1 for r in records if r["updated"]}) == expected  # trainer.step counts after
    changed = [r for r in records if not torch.equal(r["before"], r["after"])]
    assert changed and all(r["updated"] for r in changed)  # the mask moves on update steps only
    assert subspace.updates == len({r["step"] for r in changed})  # late ones may replace nothing (floor)


def test_a_layer_density_replaces_the_density_of_that_layer_and_stays_constant():
    torch.manual_seed(0)
    net = bayesianize_(nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)))
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    loader = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)]
    subspace = SparseSubspace(0.25, update_interval=3, layer_density={"2": 0.5})
    history = fit(net, loader, config=TrainConfig(epochs=3, lr=1e-2, quiet=True), callbacks=[subspace], n_train=64)
    assert subspace.updates > 0
    assert int(net[0].weight_mask.sum()) == 40 and int(net[2].weight_mask.sum()) == 24  # 0.25 x 160, 0.5 x 48
    assert history[-1]["subspace/2/density"] == 0.5
    with pytest.raises(ValueError, match="layer_density names 'fc9'.*its layers are: 0, 2"):
        fit(net, loader, config=TrainConfig(epochs=1, quiet=True),
            callbacks=[SparseSubspace(0.25, update_interval=1, layer_density={"fc9": 0.1})], n_train=64)


def test_grown_weights_start_at_zero_with_the_survivors_mean_rho_and_fresh_state(subspace_run):
    _, _, records, _ = subspace_run
    updates = [r for r in records if r["updated"] and not torch.equal(r["before"], r["after"])]
    for r in updates:
        grown, dropped = r["after"] & ~r["before"], r["before"] & ~r["after"]
        assert int(grown.sum()) == int(dropped.sum()) > 0
        assert torch.all(r["weight"][grown] == 0)
        survivors = r["before"] & r["after"]
        torch.testing.assert_close(r["rho"][grown], r["rho_before"][survivors].mean().expand(int(grown.sum())))
        assert torch.all(r["exp_avg"][grown | dropped] == 0)  # fresh moments, none for dropped weights
        # the optimiser skipped the update step: the surviving weights did not move
        assert torch.equal(r["weight"][survivors], r["weight_before"][survivors])


def test_masked_weights_have_no_effect_on_the_output_the_variance_or_the_kl(subspace_run):
    net, _, _, x = subspace_run
    layer = net[0]
    masked = ~layer.weight_mask.bool()
    net.eval()
    before_mean, before_kl = net(x), layer.kl()
    variance_before = layer.weight_variance().clone()
    with torch.no_grad():
        layer.weight_orig[masked] += 5.0
        layer.weight_rho[masked] += 3.0
    torch.testing.assert_close(net(x), before_mean)
    torch.testing.assert_close(layer.weight_variance(), variance_before)
    torch.testing.assert_close(layer.kl(), before_kl)


@pytest.fixture(scope="module")
def digits():
    from bayescompress.data import load_dataset, make_loaders
    from bayescompress.workflows import pretrain

    net = pretrain("mlp", "digits", epochs=10, lr=3e-3, batch_size=64, hidden=(32,), quiet=True).model
    return net, make_loaders(load_dataset("digits"), batch_size=64)


def test_ssvi_compresses_to_its_density_and_trains_at_a_tenth_of_dense_vi(digits):
    net, (train, val, test) = digits
    result = compress(net, train, val, SSVI(epochs=6, update_interval=10, kl_warmup_epochs=3), test_loader=test,
                      pipeline=PipelineConfig(mc_samples=2, quiet=True, max_accuracy_loss=1.0))
    m = result.metrics
    assert m["compression_rate"] >= 10.0 * 0.99  # the subspace's density, or sparser once units without
    assert m["compression_rate"] < 20.0         # inputs or outputs are removed
    assert m["training_macs_ratio"] <= 0.15
    assert m["export_max_abs_diff"] <= 1e-4
    assert result.exported(next(iter(test))[0]).shape[1] == 10
    assert any(key.startswith("subspace/") for key in result.history[-1])


@pytest.mark.parametrize("dense_first_conv", [True, False])
def test_ssvi_leaves_the_first_convolution_dense_only_when_asked(dense_first_conv):
    from bayescompress.models import lenet5

    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    dataset = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16)
    method = SSVI(epochs=2, update_interval=2, kl_warmup_epochs=1, max_val_drop=None,
                  **({"dense_first_conv": True} if dense_first_conv else {}))  # off is the default
    result = compress(lenet5(), loader, loader, method,
                      pipeline=PipelineConfig(mc_samples=0, quiet=True, max_accuracy_loss=1.0, latency_budget=0.05))
    first, *rest = result.masks.weight.values()
    assert all(float(m.float().mean()) <= 0.1 + 1e-3 for m in rest)
    assert bool(first.all()) == dense_first_conv
    if not dense_first_conv:
        assert abs(float(first.float().mean()) - 0.1) <= 1e-3
    assert result.metrics["training_macs_ratio"] <= (0.2 if dense_first_conv else 0.1 + 1e-3)


@pytest.mark.parametrize("setting, value, message", [
    ("layer_density", "1=0", "layer_density\\[1\\]"), ("layer_density", "fc1", "layer=value pairs"),
    ("density", 0.0, "density must be in"), ("density", 1.5, "density must be in"),
    ("removal_score", "size", "removal_score must be one of 'magnitude', 'snr', 'folded_mean', 'folded_snr'"),
])
def test_bad_ssvi_settings_are_refused_on_construction(setting, value, message):
    with pytest.raises(ValueError, match=message):
        SSVIConfig(**{setting: value})


def test_an_update_interval_that_leaves_no_update_says_how_many_steps_the_run_has():
    net = bayesianize_(nn.Sequential(nn.Linear(4, 3)))
    loader = [(torch.randn(4, 4), torch.randint(0, 3, (4,)))] * 5
    with pytest.raises(ValueError, match="the run has 10 steps, updates come every 100 steps while t < "
                                         r"end_fraction \* 10 = 7"):
        fit(net, loader, config=TrainConfig(epochs=2, quiet=True), callbacks=[SparseSubspace(0.5)], n_train=20)


def test_a_density_that_leaves_a_layer_no_weight_names_the_layer():
    net = bayesianize_(nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 2)))
    loader = [(torch.randn(4, 40), torch.randint(0, 2, (4,)))] * 10
    with pytest.raises(ValueError, match="density 0.005 leaves layer '2' \\(60 weights\\) no weight"):
        fit(net, loader, config=TrainConfig(epochs=2, quiet=True),
            callbacks=[SparseSubspace(0.005, update_interval=2)], n_train=40)


def test_the_structured_subspace_keeps_whole_units_and_exports_a_smaller_dense_network(digits):
    net, (train, val, test) = digits
    result = compress(net, train, val, SSVI(epochs=6, update_interval=10, kl_warmup_epochs=3, density=0.25,
                                            structured=True, max_val_drop=None), test_loader=test,
                      pipeline=PipelineConfig(mc_samples=2, quiet=True, max_accuracy_loss=1.0))
    hidden = next(iter(result.masks.weight.values()))
    rows = hidden.flatten(1)
    assert torch.all(rows.all(dim=1) | ~rows.any(dim=1))  # whole units on or off
    assert int(rows.all(dim=1).sum()) == 8                  # a quarter of 32 units
    assert result.metrics["architecture"]["exported"] == [8, 10]
    assert result.exported[1].in_features == 64 and result.exported[1].out_features == 8
    density = [v for k, v in result.history[-1].items() if k.startswith("subspace/") and k.endswith("/density")]
    assert density == [pytest.approx(0.25)]  # the output layer stays whole


def test_unit_removal_scores_are_the_group_forms():
    layer = bayesianize_(nn.Sequential(nn.Linear(3, 2)))[0]
    mu, sigma = layer.weight.detach(), layer.weight_sigma.detach()
    torch.testing.assert_close(removal_score(layer, "magnitude", unit=True), mu.norm(dim=1))
    torch.testing.assert_close(removal_score(layer, "snr", unit=True), mu.norm(dim=1) / sigma.pow(2).sum(1).sqrt())
    mean = folded_normal_mean(mu, sigma)
    torch.testing.assert_close(removal_score(layer, "folded_snr", unit=True),
                               mean.sum(1) / (mu**2 + sigma**2 - mean**2).sum(1).sqrt())
