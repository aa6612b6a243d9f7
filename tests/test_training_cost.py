"""The analytic training-MAC counter against a hand count, and its place in every run's metrics."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from bayescompress import PipelineConfig, compress
from bayescompress.inference import TrainConfig, TrainingCost, fit
from bayescompress.metrics import output_positions
from bayescompress.methods import GaussianSNR, Magnitude
from bayescompress.nn import bayesianize_


def test_one_step_of_a_two_layer_bayesian_mlp_matches_the_hand_count():
    torch.manual_seed(0)
    net = bayesianize_(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    first = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]])  # 7 of 12 kept
    second = torch.tensor([[1, 1, 0], [0, 1, 1]])                       # 4 of 6 kept
    prune.custom_from_mask(net[0], "weight", first)
    prune.custom_from_mask(net[2], "weight", second)
    x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
    cost = TrainingCost(x)
    fit(net, [(x, y)], config=TrainConfig(epochs=1, quiet=True), callbacks=[cost], n_train=5)
    # per example and pass: forward + weight gradient (+ input gradient, not for the first layer, whose input
    # is the data) over the kept weights; two passes (mean and variance) per Bayesian layer
    hand = 2 * (7 * 2) + 2 * (4 * 3)
    assert cost.macs == 5 * hand and cost.steps == 1
    assert cost.dense_vi_macs == 5 * (2 * (12 * 2) + 2 * (6 * 3))  # every weight, as dense VI
    assert cost.ratio == pytest.approx(52 / 84)


def test_a_deterministic_layer_makes_one_pass_and_a_conv_counts_output_positions():
    conv = nn.Conv2d(1, 2, 3)
    assert output_positions(conv, (2, 6, 6)) == 36
    assert output_positions(nn.Linear(8, 4), (4,)) == 1 and output_positions(nn.Linear(8, 4), (7, 4)) == 7
    net = nn.Sequential(conv, nn.Flatten(), nn.Linear(72, 3))
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
    cost = TrainingCost(x)
    fit(net, [(x, y), (x[:2], y[:2])], config=TrainConfig(epochs=1, quiet=True), callbacks=[cost], n_train=6)
    per_example = 18 * 36 * 2 + 216 * 1 * 3  # conv: forward + weight gradient; linear: all three
    assert cost.macs == 6 * per_example and cost.steps == 2  # the batch sizes 4 and 2, summed
    assert cost.dense_vi_macs == 2 * cost.macs


@pytest.fixture(scope="module")
def digits():
    from bayescompress.data import load_dataset, make_loaders
    from bayescompress.workflows import pretrain

    net = pretrain("mlp", "digits", epochs=5, lr=3e-3, batch_size=64, hidden=(16,), quiet=True).model
    return net, make_loaders(load_dataset("digits"), batch_size=64)


def test_every_run_reports_its_training_macs_beside_dense_vi(digits):
    net, (train, val, test) = digits
    quick = PipelineConfig(mc_samples=2, quiet=True, max_accuracy_loss=1.0)
    vi = compress(net, train, val, GaussianSNR(epochs=2, keep_fraction=0.25, finetune_epochs=1), pipeline=quick)
    steps = 3 * len(train)
    assert vi.metrics["training"]["steps"] == steps and vi.metrics["training"]["wall_s"] > 0
    # dense VI for 2 epochs, then 1 epoch of masked VI on a quarter of the weights (the first layer makes no
    # input gradient): the ratio lies between a quarter and one
    assert 0.25 < vi.metrics["training_macs_ratio"] < 1.0
    assert vi.metrics["training"]["macs"] == pytest.approx(vi.metrics["training_macs_ratio"]
                                                          * vi.metrics["training"]["dense_vi_macs"])
    plain = compress(net, train, val, Magnitude(keep_fraction=0.25, finetune_epochs=1), pipeline=quick)
    # one deterministic pass over about a quarter of the weights, against two dense ones
    assert plain.metrics["training"]["steps"] == len(train)
    assert plain.metrics["training_macs_ratio"] == pytest.approx(0.125, abs=0.02)
