"""Tests for bayescompress.metrics against hand-computed and independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bayescompress.metrics import (
    accuracy,
    brier,
    classification_metrics,
    size_counts,
    ece,
    nll,
)

# 4 samples, 3 classes, float64 so literals like 0.6 equal the bin edge 3/5.
# argmax = [0, 1, 2, 1]; labels = [0, 1, 0, 2] -> correct = [T, T, F, F].
HAND_PROBS = torch.tensor(
    [
        [0.70, 0.20, 0.10],
        [0.10, 0.60, 0.30],
        [0.30, 0.30, 0.40],
        [0.25, 0.50, 0.25],
    ],
    dtype=torch.float64,
)
HAND_LABELS = torch.tensor([0, 1, 0, 2])


def _dirichlet_case(seed: int, n: int = 1000, c: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Peaky random probabilities with labels drawn from them (so some are correct)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(c, 0.3), size=n)
    labels = np.array([rng.choice(c, p=row) for row in probs])
    return probs, labels


def _ece_reference(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Direct loop-based top-label ECE with right-closed bins (k/B, (k+1)/B]."""
    n = len(probs)
    conf = [max(row) for row in probs]
    correct = [int(np.argmax(row)) == int(y) for row, y in zip(probs, labels)]
    total = 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        members = [i for i in range(n) if lo < conf[i] <= hi or (k == 0 and conf[i] == 0.0)]
        if not members:
            continue
        acc_k = sum(correct[i] for i in members) / len(members)
        conf_k = sum(conf[i] for i in members) / len(members)
        total += len(members) / n * abs(acc_k - conf_k)
    return total


def _row_with_confidence(conf: float, n_classes: int = 40) -> list[float]:
    """A probability row whose max is exactly ``conf`` at class 0.

    With 40 classes the leftover mass per class stays below ``conf`` for every
    confidence used here (>= 0.5/15), so class 0 is the argmax.
    """
    rest = (1.0 - conf) / (n_classes - 1)
    return [conf] + [rest] * (n_classes - 1)


# --- hand-checked cases -----------------------------------------------------


def test_accuracy_hand_case() -> None:
    # correct = [T, T, F, F] -> 2/4
    assert accuracy(HAND_PROBS, HAND_LABELS) == pytest.approx(0.5)


def test_nll_hand_case() -> None:
    # -(ln 0.7 + ln 0.6 + ln 0.3 + ln 0.25) / 4
    # = (0.356675 + 0.510826 + 1.203973 + 1.386294) / 4 = 0.864442
    assert nll(HAND_PROBS, HAND_LABELS) == pytest.approx(0.8644419332876374, abs=1e-12)


def test_brier_hand_case() -> None:
    # row 0 (y=0): 0.3^2 + 0.2^2 + 0.1^2   = 0.14
    # row 1 (y=1): 0.1^2 + 0.4^2 + 0.3^2   = 0.26
    # row 2 (y=0): 0.7^2 + 0.3^2 + 0.4^2   = 0.74
    # row 3 (y=2): 0.25^2 + 0.5^2 + 0.75^2 = 0.875
    # mean = 2.015 / 4 = 0.50375
    assert brier(HAND_PROBS, HAND_LABELS) == pytest.approx(0.50375, abs=1e-12)


def test_ece_hand_case_default_bins() -> None:
    # conf = [0.7, 0.6, 0.4, 0.5] land in bins 10, 8, 5, 7 of 15 (all distinct),
    # so ECE = mean |correct - conf| = (0.3 + 0.4 + 0.4 + 0.5) / 4 = 0.4
    assert ece(HAND_PROBS, HAND_LABELS) == pytest.approx(0.4, abs=1e-12)


def test_ece_hand_case_shared_right_closed_bins() -> None:
    # 5 bins of width 0.2. conf 0.6 sits on the edge 3/5 -> bin (0.4, 0.6],
    # conf 0.4 on the edge 2/5 -> bin (0.2, 0.4].
    # bin (0.2, 0.4]: {0.4 wrong}             -> 1/4 * |0 - 0.4|    = 0.1
    # bin (0.4, 0.6]: {0.6 right, 0.5 wrong}  -> 2/4 * |0.5 - 0.55| = 0.025
    # bin (0.6, 0.8]: {0.7 right}             -> 1/4 * |1 - 0.7|    = 0.075
    # ECE = 0.2 (left-closed bins would give 0.4 instead)
    assert ece(HAND_PROBS, HAND_LABELS, n_bins=5) == pytest.approx(0.2, abs=1e-12)


# --- ECE against the loop reference -----------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n_bins", [1, 15])
def test_ece_matches_loop_reference_on_dirichlet(seed: int, n_bins: int) -> None:
    probs, labels = _dirichlet_case(seed)
    expected = _ece_reference(probs, labels, n_bins)
    got = ece(torch.from_numpy(probs), torch.from_numpy(labels), n_bins=n_bins)
    assert got == pytest.approx(expected, abs=1e-6)


def test_ece_confidence_one_goes_to_last_bin() -> None:
    # conf 1.0 (wrong) and conf 0.95 (right) share the last bin (14/15, 1]:
    # |0.5 - 0.975| = 0.475. A separate bin for 1.0 would give 0.5*1 + 0.5*0.05 = 0.525.
    probs = torch.tensor([_row_with_confidence(1.0), _row_with_confidence(0.95)], dtype=torch.float64)
    labels = torch.tensor([1, 0])
    assert ece(probs, labels) == pytest.approx(0.475, abs=1e-12)
    assert ece(probs, labels) == pytest.approx(_ece_reference(probs.numpy(), labels.numpy(), 15), abs=1e-12)


@pytest.mark.parametrize("k", range(1, 15))
def test_ece_confidence_on_edge_goes_to_lower_bin(k: int) -> None:
    # conf k/15 (right) must share bin k-1 with conf (k-0.5)/15 (wrong):
    #   ECE = |0.5 - (k - 0.25)/15|
    # whereas putting k/15 into bin k would give 0.5*(1 - k/15) + 0.5*(k - 0.5)/15.
    edge, inside = k / 15, (k - 0.5) / 15
    probs = torch.tensor([_row_with_confidence(edge), _row_with_confidence(inside)], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    expected = abs(0.5 - (edge + inside) / 2)
    assert ece(probs, labels) == pytest.approx(expected, abs=1e-12)
    assert ece(probs, labels) == pytest.approx(_ece_reference(probs.numpy(), labels.numpy(), 15), abs=1e-12)


def test_ece_zero_when_confident_and_correct() -> None:
    probs = torch.eye(5, dtype=torch.float64).repeat(3, 1)
    labels = torch.arange(5).repeat(3)
    assert ece(probs, labels) == 0.0


# --- NLL and Brier against numpy references ---------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nll_matches_numpy_reference(seed: int) -> None:
    probs, labels = _dirichlet_case(seed)
    expected = np.mean(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)))
    assert nll(torch.from_numpy(probs), torch.from_numpy(labels)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brier_matches_numpy_reference(seed: int) -> None:
    probs, labels = _dirichlet_case(seed)
    onehot = np.eye(probs.shape[1])[labels]
    expected = np.mean(np.sum((probs - onehot) ** 2, axis=1))
    assert brier(torch.from_numpy(probs), torch.from_numpy(labels)) == pytest.approx(expected, rel=1e-12)


def test_nll_zero_probability_on_true_class_is_finite() -> None:
    probs = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    value = nll(probs, torch.tensor([1]))
    assert math.isfinite(value)
    assert value == pytest.approx(-math.log(1e-12), rel=1e-12)  # 27.631021...


def test_classification_metrics_keys_and_values() -> None:
    metrics = classification_metrics(HAND_PROBS, HAND_LABELS)
    assert metrics == pytest.approx(
        {"accuracy": 0.5, "nll": 0.8644419332876374, "brier": 0.50375, "ece": 0.4}, abs=1e-12
    )


# --- validation -------------------------------------------------------------


def test_rejects_logits() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 3.0, -2.0]])
    with pytest.raises(ValueError, match="not logits"):
        accuracy(logits, torch.tensor([0, 1]))
    # Non-negative "logits" that do not sum to 1 are caught by the row-sum check.
    with pytest.raises(ValueError, match=r"sum to 1 \(got a row summing to 0.5\)"):
        nll(torch.tensor([[0.25, 0.25], [0.5, 0.5]]), torch.tensor([0, 1]))


def test_rejects_mismatched_n() -> None:
    with pytest.raises(ValueError, match="same number of samples; got 4 and 3"):
        brier(HAND_PROBS, HAND_LABELS[:3])


def test_rejects_1d_probs() -> None:
    with pytest.raises(ValueError, match=r"2-D \(N, C\).*got shape \(3,\)"):
        ece(torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("bad", [3, -1])
def test_rejects_label_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError, match=rf"labels must lie in \[0, 3\); got label {bad}"):
        accuracy(HAND_PROBS, torch.tensor([0, 1, 2, bad]))


@pytest.mark.parametrize("n_bins", [0, -3, 2.5])
def test_rejects_non_positive_integer_n_bins(n_bins: object) -> None:
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        ece(HAND_PROBS, HAND_LABELS, n_bins=n_bins)  # type: ignore[arg-type]


# --- parameter counting -----------------------------------------------------


def test_size_counts_linear() -> None:
    # 3*2 weights + 2 biases
    assert size_counts(nn.Linear(3, 2)) == {
        "params_total": 8, "params_nonzero": 8, "weights_total": 6, "weights_nonzero": 6}


def test_size_counts_count_a_shared_parameter_once() -> None:
    model = nn.Module()
    model.a = nn.Linear(3, 3)
    model.b = nn.Linear(3, 3)
    model.b.weight = model.a.weight  # tied: 9 shared weights + two 3-element biases
    assert size_counts(model)["params_total"] == 9 + 3 + 3


def test_size_counts_of_a_pruned_bayesian_layer_skip_rho_and_count_masked_zeros() -> None:
    import torch.nn.utils.prune as prune

    from bayescompress.nn import BayesLinear

    layer = BayesLinear(4, 3)
    keep = torch.ones(3, 4)
    keep[0] = 0
    prune.custom_from_mask(layer, "weight", keep)
    counts = size_counts(layer)
    assert counts["params_total"] == 15 and counts["weights_total"] == 12
    assert counts["weights_nonzero"] == int(torch.count_nonzero(layer.weight_orig[1:]))


def test_weights_of_layers_compress_leaves_dense_count_in_w_and_tables_and_scales_do_not() -> None:
    """|W| is every weight matrix or kernel: a network that keeps most of its weights in a Conv1d or a GRU it does
    not prune cannot report a high rate from its head alone (it did: 10.7x with 94 % of the parameters left)."""
    model = nn.Module()
    model.emb = nn.Embedding(7, 4)                      # a table: params only
    model.conv = nn.Conv1d(4, 5, 3)                     # 5*4*3 = 60
    model.norm = nn.LayerNorm([5, 2])                   # a 2-D scale: params only
    model.gru = nn.GRU(5, 2)                            # weight_ih 6x5, weight_hh 6x2 = 42
    model.attn = nn.MultiheadAttention(4, 2)            # in_proj 12x4 + out_proj 4x4 = 64
    model.head = nn.Bilinear(2, 3, 2)                   # 2*2*3 = 12
    with torch.no_grad():
        model.conv.weight[0] = 0
    counts = size_counts(model)
    assert counts["weights_total"] == 60 + 42 + 64 + 12
    assert counts["weights_nonzero"] == 60 - 12 + 42 + 64 + 12
    assert counts["params_total"] == sum(p.numel() for p in model.parameters())


def test_dense_macs_match_a_hand_count_for_lenet5() -> None:
    from bayescompress.metrics import dense_macs
    from bayescompress.models import lenet5

    # conv1 20*1*5*5 at 24x24, conv2 50*20*5*5 at 8x8, fc 800*500, fc 500*10
    expected = 20 * 25 * 24 * 24 + 50 * 20 * 25 * 8 * 8 + 800 * 500 + 500 * 10
    assert dense_macs(lenet5(), torch.randn(4, 1, 28, 28)) == expected == 2_293_000


class _Returns(nn.Module):
    """``module(x)`` (first output when it returns a tuple), for a counter that calls ``model(x)``."""

    def __init__(self, module: nn.Module, attention: bool = False) -> None:
        super().__init__()
        self.module, self.attention = module, attention

    def forward(self, x):
        if isinstance(self.module, nn.Bilinear):
            return self.module(x, x[..., :10])
        out = self.module(x, x, x) if self.attention else self.module(x)
        return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name, module, shape, expected", [
    # in_proj 32 -> 96, scores and values 2 * 8 * 8 * 32, out_proj, feed-forward 32 -> 64 -> 32, 8 tokens
    ("transformer layer", nn.TransformerEncoderLayer(32, nhead=4, dim_feedforward=64, batch_first=True),
     (1, 8, 32), 8 * 32 * 96 + 2 * 8 * 8 * 32 + 8 * 32 * 32 + 2 * 8 * 32 * 64),
    ("attention", nn.MultiheadAttention(32, 4, batch_first=True), (1, 8, 32),
     8 * 32 * 96 + 2 * 8 * 8 * 32 + 8 * 32 * 32),
    # two layers, two directions, 4 gates of 32: layer 1 reads 16 inputs, layer 2 the 64 of both directions
    ("lstm", nn.LSTM(16, 32, num_layers=2, bidirectional=True, batch_first=True), (1, 8, 16),
     8 * 2 * (16 * 128 + 32 * 128) + 8 * 2 * (64 * 128 + 32 * 128)),
    # x1 W x2: every (output, input 1, input 2) triple once, over 3 tokens
    ("bilinear", nn.Bilinear(12, 10, 16), (1, 3, 12), 3 * 16 * 12 * 10),
])
def test_dense_macs_count_fused_and_cpu_kernels_by_hand(name, module, shape, expected) -> None:
    """In eval mode under no_grad these layers run fused kernels (or oneDNN's) that torch's counter skips."""
    from bayescompress.metrics import dense_macs

    model = _Returns(module, attention=name == "attention").eval()
    with torch.no_grad():  # as the caller may be
        assert dense_macs(model, torch.randn(*shape)) == expected


def test_sparse_macs_count_a_linear_layer_once_per_token() -> None:
    from bayescompress.metrics import dense_macs, sparse_macs, weight_uses

    keep = torch.ones(5, 7, dtype=torch.bool)
    fc = nn.Linear(7, 5, bias=False)
    uses = weight_uses(fc, [("fc", fc)], torch.randn(1, 9, 7))
    assert uses == {"fc": 9}
    assert sparse_macs({"fc": keep}, uses) == 9 * 35 == dense_macs(fc, torch.randn(1, 9, 7))
    keep[0] = False
    assert sparse_macs({"fc": keep}, uses) == 9 * 28


def test_a_layer_called_twice_counts_its_weights_twice_as_the_dense_count_does() -> None:
    from bayescompress.metrics import dense_macs, sparse_macs, weight_uses

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(6, 6, bias=False)

        def forward(self, x):
            return self.shared(self.shared(x).relu())

    net = Tied()
    uses = weight_uses(net, [("shared", net.shared)], torch.randn(4, 6))
    assert uses == {"shared": 2}
    assert sparse_macs({"shared": torch.ones(6, 6, dtype=torch.bool)}, uses) == 72 == dense_macs(net, torch.randn(1, 6))


def test_latency_is_measured_for_every_model() -> None:
    from bayescompress.metrics import latency_seconds

    times, batch_size = latency_seconds({"a": nn.Linear(8, 4), "b": nn.Linear(8, 2)}, torch.randn(16, 8),
                                        repeats=3)
    assert batch_size == 16
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())


def test_latency_of_equal_networks_stays_equal_when_most_passes_are_interrupted() -> None:
    """Another process preempting a pass adds time to that pass only: the median of two equal networks' passes
    differed by 5x on a busy machine; each network's fastest pass does not."""
    import time

    from bayescompress.metrics import latency_seconds

    class Slept(nn.Module):
        def __init__(self, interrupted: set[int]) -> None:
            super().__init__()
            self.calls, self.interrupted = 0, interrupted

        def forward(self, x):
            self.calls += 1
            time.sleep(0.002 + (0.02 if self.calls in self.interrupted else 0.0))  # 0.02 s: another process ran
            return x

    # "a" interrupted on 8 of its 12 passes (warm-ups and rounds alike), "b" on none
    times, _ = latency_seconds({"a": Slept(set(range(1, 13)) - {5, 7, 9, 11}), "b": Slept(set())},
                               torch.randn(1, 4), repeats=8, budget_seconds=10.0)
    assert 0.7 < times["a"] / times["b"] < 1.4
