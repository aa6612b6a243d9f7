"""Predictive-quality metrics and model-size accounting.

All classification metrics take ``probs``, a float tensor of shape ``(N, C)``
holding predictive probabilities (already averaged over posterior samples by
the caller, rows summing to 1), and ``labels``, an integer tensor of shape
``(N,)``. Each returns a Python ``float``. Ties in ``argmax`` resolve to the
lowest class index.
"""

from __future__ import annotations

import math
import numbers

import time
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from bayescompress._validation import check_positive_int
from bayescompress.data import as_batch
from bayescompress.nn.layers import BayesianLayer
from bayescompress.nn.model import observe, predict

__all__ = [
    "accuracy",
    "nll",
    "brier",
    "ece",
    "reliability",
    "classification_metrics",
    "evaluate",
    "size_counts",
    "dense_macs",
    "sparse_macs",
    "weight_uses",
    "latency_seconds",
]

# Floor applied before the log so a zero probability on the true class
# gives a large but finite NLL instead of inf.
_NLL_EPS = 1e-12
# Row sums of float32 softmax outputs drift from 1 by rounding; this is loose
# enough for that yet far too tight for logits to pass.
_ROW_SUM_TOL = 1e-3


def _validate(probs: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise if ``probs``/``labels`` are not a valid (N, C) / (N,) pair."""
    if not isinstance(probs, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(
            "probs and labels must be torch tensors; "
            f"got {type(probs).__name__} and {type(labels).__name__}"
        )
    if probs.dim() != 2:
        raise ValueError(
            "probs must be a 2-D (N, C) tensor of probabilities; "
            f"got shape {tuple(probs.shape)}"
        )
    if labels.dim() != 1:
        raise ValueError(
            f"labels must be a 1-D (N,) tensor; got shape {tuple(labels.shape)}"
        )
    n, c = probs.shape
    if labels.shape[0] != n:
        raise ValueError(
            f"probs and labels must have the same number of samples; "
            f"got {n} and {labels.shape[0]}"
        )
    if n < 1 or c < 1:
        raise ValueError(
            f"need at least one sample and one class; got probs of shape {(n, c)}"
        )
    if not probs.is_floating_point():
        raise ValueError(f"probs must be a floating-point tensor; got {probs.dtype}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor; got {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= c:
        bad = lo if lo < 0 else hi
        raise ValueError(f"labels must lie in [0, {c}); got label {bad}")
    if not torch.isfinite(probs).all():
        raise ValueError("probs must be finite; found NaN or inf")
    if (probs < 0).any():
        raise ValueError(
            f"probs must be non-negative (got minimum {float(probs.min()):g}); "
            "pass softmax probabilities, not logits"
        )
    row_sums = probs.sum(dim=1)
    worst = row_sums[(row_sums - 1).abs().argmax()]
    if abs(float(worst) - 1) > _ROW_SUM_TOL:
        raise ValueError(
            f"rows of probs must sum to 1 (got a row summing to {float(worst):g}); "
            "pass softmax probabilities, not logits"
        )


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose most probable class equals the label.

    Returns
    -------
    float
        Top-1 accuracy in ``[0, 1]``.

    Example
    -------
    >>> accuracy(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0]))
    0.5
    """
    _validate(probs, labels)
    return (probs.argmax(dim=1) == labels).double().mean().item()


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the labels, ``-log p[label]``.

    Probabilities are clamped below at ``1e-12``, so a zero probability on the
    true class contributes ``-log(1e-12) ≈ 27.63`` rather than ``inf``.

    Returns
    -------
    float
        Mean NLL in nats.

    Example
    -------
    >>> round(nll(torch.tensor([[0.5, 0.5]]), torch.tensor([1])), 4)
    0.6931
    """
    _validate(probs, labels)
    p_true = probs.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    # Accumulate in float64 so the mean over large N does not lose precision.
    return -p_true.double().clamp_min(_NLL_EPS).log().mean().item()


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multiclass Brier score, ``sum_c (p_c - onehot_c)^2`` averaged over samples.

    Returns
    -------
    float
        Brier score in ``[0, 2]``.

    Example
    -------
    >>> round(brier(torch.tensor([[0.8, 0.2]]), torch.tensor([0])), 4)
    0.08
    """
    _validate(probs, labels)
    p = probs.double()
    onehot = torch.zeros_like(p).scatter_(1, labels.long().unsqueeze(1), 1.0)
    return (p - onehot).pow(2).sum(dim=1).mean().item()


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width bins (L1).

    Confidence is the maximum probability and a sample is correct when its
    argmax equals the label. Bin ``k`` covers ``(k/B, (k+1)/B]``; confidence
    0 falls in the first bin and confidence 1 in the last. Then
    ``ECE = sum_k (n_k / N) * |acc_k - conf_k|``.

    Parameters
    ----------
    probs : torch.Tensor
        ``(N, C)`` predictive probabilities.
    labels : torch.Tensor
        ``(N,)`` integer class labels.
    n_bins : int, default 15
        Number of equal-width confidence bins ``B``; must be positive.

    Returns
    -------
    float
        ECE in ``[0, 1]``.

    Example
    -------
    Both samples fall in bin (0.5, 1], so ECE = |0.5 - 0.75|:

    >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    >>> round(ece(probs, torch.tensor([0, 1]), n_bins=2), 4)
    0.25
    """
    _, conf_sum, acc_sum = _confidence_bins(probs, labels, n_bins)
    # (n_k/N)|acc_k - conf_k| == |sum_acc_k - sum_conf_k| / N, which also
    # makes empty bins contribute 0 without dividing by n_k.
    return ((acc_sum - conf_sum).abs().sum() / probs.shape[0]).item()


def _confidence_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per equal-width confidence bin: the count, the sum of top-class confidences and of correct predictions
    (float64, on probs' device); the binning of :func:`ece` and :func:`reliability`."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    _validate(probs, labels)
    n_bins = int(n_bins)
    conf = probs.amax(dim=1)
    correct = (probs.argmax(dim=1) == labels).double()
    # Interior edges are built in probs' own dtype so a confidence equal to
    # k/B as stored in that dtype is compared against the same value.
    edges = torch.arange(1, n_bins, dtype=probs.dtype, device=probs.device) / n_bins
    # right=False gives edges[i-1] < conf <= edges[i]: right-closed bins, with
    # everything <= 1/B in bin 0 and everything > (B-1)/B in bin B-1.
    bins = torch.bucketize(conf, edges, right=False)
    count = torch.zeros(n_bins, dtype=torch.float64, device=probs.device).scatter_add_(0, bins, torch.ones_like(correct))
    conf_sum = torch.zeros_like(count).scatter_add_(0, bins, conf.double())
    acc_sum = torch.zeros_like(count).scatter_add_(0, bins, correct)
    return count, conf_sum, acc_sum


def reliability(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, list[float]]:
    """The reliability diagram's data, in the bins :func:`ece` uses: per bin its ``lower`` and ``upper`` edge,
    ``count``, mean ``confidence`` and ``accuracy`` (None for an empty bin).

    Example
    -------
    >>> bins = reliability(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0, 1]), n_bins=2)
    >>> bins["count"], bins["accuracy"]
    ([0, 2], [None, 0.5])
    """
    count, conf_sum, acc_sum = _confidence_bins(probs, labels, n_bins)
    counts = [int(c) for c in count.tolist()]

    def per_bin(sums: Tensor) -> list[float | None]:  # None, not NaN: the bins go into metrics.json
        return [None if n == 0 else v for n, v in zip(counts, (sums / count.clamp_min(1)).tolist())]

    return {"lower": [k / n_bins for k in range(n_bins)], "upper": [(k + 1) / n_bins for k in range(n_bins)],
            "count": counts, "confidence": per_bin(conf_sum), "accuracy": per_bin(acc_sum)}


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, NLL, Brier score and ECE (15 bins) in one dict.

    Returns
    -------
    dict[str, float]
        Keys ``"accuracy"``, ``"nll"``, ``"brier"``, ``"ece"``.

    Example
    -------
    >>> m = classification_metrics(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    >>> m["accuracy"], m["ece"]
    (1.0, 0.0)
    """
    return {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece": ece(probs, labels),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, samples: int = 10, device: str | torch.device = "cpu", seed: int | None = None,
    with_reliability: bool = False,
) -> dict:
    """Classification metrics of ``model`` on every (x, y) batch of ``loader``.

    Probabilities are averaged over ``samples`` posterior samples per input (0 = posterior mean), then
    accuracy, NLL, Brier and ECE are computed over the whole set. With ``seed`` the samples are drawn from
    that seed (the global random state is restored afterwards), so the same network and data give the same
    metrics. ``with_reliability`` adds ``"reliability"``: :func:`reliability`'s bins.

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(4, 3))
    >>> batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    >>> sorted(evaluate(net, batches, samples=0))
    ['accuracy', 'brier', 'ece', 'nll']
    """
    device = torch.device(device)
    probs, labels = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for item in loader:
            x, y = as_batch(item, "the loader")
            probs.append(predict(model, x.to(device), samples=samples).cpu())
            labels.append(y)
    if not probs:
        raise ValueError("cannot evaluate on an empty loader")
    probs, labels = torch.cat(probs), torch.cat(labels)
    metrics: dict = classification_metrics(probs, labels)
    if with_reliability:
        metrics["reliability"] = reliability(probs, labels)
    return metrics


def _effective_weight(layer: nn.Module) -> Tensor:
    """A layer's weight with its prune mask applied (the posterior mean for a Bayesian layer)."""
    mask = getattr(layer, "weight_mask", None)
    weight = getattr(layer, "weight_orig", layer.weight)
    return weight.detach() if mask is None else (weight * mask).detach()


def size_counts(model: nn.Module) -> dict[str, int]:
    """Sizes of the posterior-mean network ``model`` (variational scales ``*_rho`` are not counted).

    Returns ``params_total`` / ``params_nonzero`` (every parameter: weights, biases, BatchNorm, ...) and
    ``weights_total`` / ``weights_nonzero``, the |W| of compression rates: every weight matrix or kernel (a
    parameter of two or more dimensions: Linear and convolution weights, a recurrent layer's, attention's
    projections), pruned or not, but not embedding tables (the papers' convention), normalisation scales nor a
    prior's parameters.

    Example
    -------
    >>> size_counts(nn.Linear(3, 2))["params_total"]
    8
    """
    counts = dict.fromkeys(("params_total", "params_nonzero", "weights_total", "weights_nonzero"), 0)
    seen: set[int] = set()  # a parameter shared between modules counts once
    priors = {id(part) for layer in model.modules() if isinstance(layer, BayesianLayer)
              for part in layer.modules() if part is not layer}
    for module in model.modules():
        own = {name: t for name, t in module.named_parameters(recurse=False) if id(t) not in seen}
        seen.update(id(t) for t in own.values())
        tensors = [t.detach() for name, t in own.items()
                   if not name.endswith("_rho") and name not in ("weight", "weight_orig")]
        if "weight" in own or "weight_orig" in own:
            tensors.append(_effective_weight(module))
        for tensor in tensors:
            counts["params_total"] += tensor.numel()
            counts["params_nonzero"] += int(torch.count_nonzero(tensor))
            if tensor.dim() >= 2 and id(module) not in priors and not isinstance(module, _NOT_WEIGHTS):
                counts["weights_total"] += tensor.numel()
                counts["weights_nonzero"] += int(torch.count_nonzero(tensor))
    return counts


# tables looked up rather than multiplied, and normalisation scales (a LayerNorm over (C, H, W) has a 3-D one)
_NOT_WEIGHTS = (nn.Embedding, nn.EmbeddingBag, nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


def _attention_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU kernel of ``F.scaled_dot_product_attention`` (query, key, value: shapes (..., L, E),
    (..., S, E), (..., S, Ev)): the scores Q K^T and their product with V. torch's counter knows only the
    CUDA kernels."""
    *batch, length, embed = query
    return 2 * math.prod(batch) * length * key[-2] * (embed + value[-1])


def _mkldnn_rnn_layer_flops(inputs, weight_ih, weight_hh, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of one layer and direction of a CPU LSTM (oneDNN's kernel, which torch's counter does not know):
    every step multiplies the input by weight_ih and the hidden state by weight_hh."""
    steps = math.prod(inputs[:-1])  # (time, batch) in either order
    return 2 * steps * (weight_ih[0] * weight_ih[1] + weight_hh[0] * weight_hh[1])


def _trilinear_flops(i1, i2, i3, expand1, expand2, expand3, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten._trilinear`` (what ``nn.Bilinear`` runs): each input, given size-1 axes at its ``expand``
    dimensions, broadcast against the others; one multiply-accumulate per element of that broadcast shape
    (for x1 W x2: batch x out x in1 x in2)."""
    dims = len(i1) + len(expand1)

    def spread(shape, expand) -> list[int]:
        sizes = iter(shape)
        return [1 if dim in expand else next(sizes) for dim in range(dims)]

    return 2 * math.prod(max(sizes) for sizes in zip(spread(i1, expand1), spread(i2, expand2), spread(i3, expand3)))


# kernels torch.utils.flop_counter does not count, which a CPU forward pass of a user's network reaches
_EXTRA_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_cpu_flops,
    torch.ops.aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_flops,
    torch.ops.aten._trilinear: _trilinear_flops,
}


def dense_macs(model: nn.Module, example_input: Tensor) -> int:
    """Multiply-accumulates of one forward pass on one input, counted by ``torch.utils.flop_counter``
    (MACs = FLOPs / 2); masked weights still count, as a dense kernel computes them.

    Counted with autograd on and, for a floating-point input, the input requiring grad: in eval mode under
    ``no_grad``, ``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention`` take a fused kernel the counter
    cannot see into, and would count as zero. The CPU kernels of attention and LSTM, and ``nn.Bilinear``, are
    counted by their own formulas.
    """
    was_training = model.training
    model.eval()
    example = example_input[:1].detach()
    if example.is_floating_point():
        example = example.clone().requires_grad_()
    try:
        with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
            model(example)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def sparse_macs(weight_masks: Mapping[str, Tensor], uses: Mapping[str, int]) -> int:
    """MACs a sparse kernel would do in the masked layers: per layer, kept weights x the times each weight is
    used per input (``uses``, from :func:`weight_uses`). Operations without weights (attention's products) and
    layers that are not masked are not counted.
    """
    return sum(int(mask.sum()) * uses.get(name, 0) for name, mask in weight_masks.items())  # 0: never called


@torch.no_grad()
def weight_uses(model: nn.Module, layers, example: Tensor) -> dict[str, int]:
    """How many times each weight of each named layer in ``layers`` is used per input, from one eval-mode pass on
    the first item of ``example``: :func:`output_positions` summed over the layer's calls (a layer the forward
    calls twice, weight-tied, counts twice). Layers the pass does not call are left out."""
    layers = dict(layers)
    uses: dict[str, int] = {}

    def record(name, _inputs, out) -> None:
        uses[name] = uses.get(name, 0) + output_positions(layers[name], tuple(out.shape[1:]))

    observe(model, layers.items(), example[:1], record)
    return uses


def output_positions(layer: nn.Module, output_shape: tuple[int, ...]) -> int:
    """How many times each weight of ``layer`` is used per input: the output's spatial size for a convolution
    (``output_shape`` = (channels, H, W)), the product of the leading dimensions for a linear layer (1 for
    (features,), T for (T, features))."""
    return math.prod(output_shape[1:] if isinstance(layer, nn.Conv2d) else output_shape[:-1])


def training_macs_per_example(layers: Mapping[str, nn.Module], positions: Mapping[str, int], first: str,
                              dense: bool = False) -> int:
    """Analytic multiply-accumulates of one training example's forward and backward pass through ``layers``.

    Per layer, every kept weight is used once per output position in the forward pass, once for the weight
    gradient and once for the input gradient, except in ``first``, whose input is the data and needs none. A
    Bayesian layer (the local reparameterisation trick) makes two such passes, the mean and the variance.
    Masked weights (``weight_mask``) are not counted, as a sparse kernel would skip them. ``dense``: every
    weight kept and every layer Bayesian, i.e. dense VI on the same network.
    """
    total = 0
    for name, layer in layers.items():
        mask = getattr(layer, "weight_mask", None)
        kept = layer.weight.numel() if dense or mask is None else int(mask.count_nonzero())
        passes = 2 if dense or isinstance(layer, BayesianLayer) else 1
        total += passes * kept * positions[name] * (2 if name == first else 3)
    return total


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def latency_seconds(
    models: Mapping[str, nn.Module], x: Tensor, repeats: int = 20, budget_seconds: float = 1.0
) -> tuple[dict[str, float], int]:
    """Wall time of one eval-mode forward pass of each model on ``x``: the fastest of its rounds, within about
    ``budget_seconds`` per model.

    The models are timed interleaved, round by round, so a slow spell of the machine hits all of them alike,
    and each keeps its fastest pass: other processes only ever add time, and on a busy machine most passes are
    preempted (the median of 20 passes of two equal networks differed by 5x with two other processes on 2
    cores). The batch is halved until one pass of the slowest model, extrapolated from a
    batch of 8, fits a third of the budget, and the rounds (at most ``repeats``, at least one) fill the rest; CUDA
    is synchronised around every pass, so kernels are timed rather than their launches. Returns the seconds
    per model and the batch size used.

    Example
    -------
    >>> times, batch_size = latency_seconds({"a": nn.Linear(4, 2)}, torch.randn(8, 4), budget_seconds=0.05)
    >>> sorted(times), batch_size
    (['a'], 8)
    """
    check_positive_int("repeats", repeats)
    device = x.device

    def timed(model: nn.Module, batch: Tensor) -> float:
        _synchronize(device)
        start = time.perf_counter()
        model(batch)
        _synchronize(device)
        return time.perf_counter() - start

    for model in models.values():
        model.eval()
        timed(model, x[:1])  # warm-up
    # the cost per item on a small batch (an overestimate for large ones) sizes the batch without a full pass
    small = x[: min(8, x.shape[0])]
    per_item = max(timed(model, small) for model in models.values()) / small.shape[0]
    while per_item * x.shape[0] > budget_seconds / 3 and x.shape[0] > 1:
        x = x[: x.shape[0] // 2]
    slowest = max(timed(model, x) for model in models.values())  # warm-up at the size timed
    rounds = max(1, min(repeats, int(budget_seconds * 2 / 3 / max(slowest, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(timed(model, x))
    return {name: min(values) for name, values in times.items()}, int(x.shape[0])
