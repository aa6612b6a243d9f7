"""A compression budget: the kept weights cut to a count by SNR across layers, in rounds with fine-tuning."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bayescompress import PipelineConfig, compress
from bayescompress.data import load_dataset, make_loaders
from bayescompress.methods import GaussianSNR
from bayescompress.nn import PosteriorInit, bayesian_layers, bayesianize_
from bayescompress.pruning import Masks, keep_top_weights
from bayescompress.pruning.importance import weight_snr
from bayescompress.workflows import pretrain


def _random_posterior() -> nn.Module:
    torch.manual_seed(0)
    net = bayesianize_(nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 4)),
                       init=PosteriorInit(rho=-3.0))
    with torch.no_grad():
        for _, layer in bayesian_layers(net):
            layer.weight_rho.add_(torch.randn_like(layer.weight_rho))
    return net


def test_keep_top_weights_keeps_exactly_the_highest_snr_weights_across_layers():
    net = _random_posterior()
    layers = bayesian_layers(net)
    start = Masks({name: torch.rand(layer.weight.shape) < 0.8 for name, layer in layers})
    count = 40
    masks = keep_top_weights(net, start, count, outputs="4")
    # brute force: every weight the start masks keep, by SNR, highest first
    ranked = sorted(((float(weight_snr(layer)[index]), name, index) for name, layer in layers
                     for index in map(tuple, start.weight[name].nonzero().tolist())), reverse=True)
    expected = {(name, index) for _, name, index in ranked[:count]}
    got = {(name, index) for name in masks.weight for index in map(tuple, masks.weight[name].nonzero().tolist())}
    assert got == expected
    for name, _ in layers:  # a unit is kept while any of its weights is; the classes always
        rows = masks.weight[name].any(dim=1)
        assert torch.equal(masks.units[name], torch.ones_like(rows) if name == "4" else rows)


def test_keep_top_weights_leaves_masks_within_the_count_alone():
    net = _random_posterior()
    start = Masks({name: torch.ones_like(layer.weight, dtype=torch.bool) for name, layer in bayesian_layers(net)})
    assert keep_top_weights(net, start, start.kept_weights(), outputs="4") is start


@pytest.fixture(scope="module")
def digits():
    model = pretrain("mlp", "digits", epochs=15, lr=3e-3, batch_size=64, hidden=(32,), quiet=True).model
    return model, make_loaders(load_dataset("digits"), batch_size=64)


def test_target_compression_cuts_in_geometric_rounds_to_the_budget(digits):
    model, (train, val, test) = digits
    pipeline = PipelineConfig(quiet=True, max_accuracy_loss=1.0)
    quick = dict(epochs=1, finetune_epochs=1, keep_fraction=0.3)
    plain = compress(copy.deepcopy(model), train, val, GaussianSNR(**quick), test_loader=test, pipeline=pipeline)
    target = 3 * plain.metrics["compression_rate"]
    result = compress(copy.deepcopy(model), train, val,
                      GaussianSNR(**quick, target_compression=target, compression_rounds=3),
                      test_loader=test, pipeline=pipeline)
    budget = result.metrics["pruning"]["compression_budget"]
    total = result.metrics["weights"]["total"]
    kept = [r["kept"] for r in budget["rounds"]]
    assert len(kept) == 3 and kept[-1] == int(total // target)
    # geometric from the strategy's count: each round removes about the same fraction
    fractions = [after / before for before, after in zip([budget["start_kept"], *kept], kept)]
    assert max(fractions) - min(fractions) < 0.02, fractions
    assert result.metrics["compression_rate"] >= target
    # each round fine-tuned one epoch, between the training before pruning and the final fine-tuning
    assert len(result.history) == len(plain.history) + 3
