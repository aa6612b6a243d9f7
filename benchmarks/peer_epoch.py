"""Time one training epoch of our Bayesian layers against bayesian-torch 0.5.0's, same networks, one process.

    python benchmarks/peer_epoch.py [--data-dir ../shared/data/mnist] [--models lenet300 lenet5]
        [--repeats 3] [--threads N] [--max-batches B] [--out NAME]

bayesian-torch is a benchmark-only extra, installed without its dependencies (its metadata pulls in
torchvision, whose registry wheel is a CUDA build that breaks a CPU torch; the layers need only torch):

    pip install --no-deps -r benchmarks/requirements-peers.txt

Compared, on LeNet-300-100 and LeNet-5-Caffe over MNIST's training split (Adam lr 1e-3, batch 128,
loss = mean NLL + KL / N_train):

* ours: the deterministic network and ``bayesianize_`` of it with the estimators lrt, flipout and
  shared, each run by our Trainer (``epoch_time.trainer_epoch``) as epoch_time.py does.
  Ratio over the deterministic network timed the same way (Trainer).
* the LRT floor: every layer with LRT's two operations (op(x, mu) and op(x^2, |v|), v a free variance
  parameter) and its sample, Adam over both, and nothing else: no softplus, no KL. What any LRT
  implementation pays at least; the gap between it and ``lrt`` is our posterior and KL work.
* the shared floor, the same for one weight sample per mini-batch: op(x, mu + |s| * eps) with eps drawn
  fresh for every weight at every step, Adam over mu and s, no softplus, no KL.
* bayesian-torch: the same architectures built from ``LinearReparameterization`` /
  ``Conv2dReparameterization`` and ``LinearFlipout`` / ``Conv2dFlipout``, trained by the plain loop below
  (forward, NLL + KL/N, backward, Adam step). Ratio over the deterministic network timed through that
  same plain loop, so neither side is charged for the other's loop.

Every figure is the best of ``--repeats`` epochs after one untimed warm-up epoch, the networks timed in turns
(one epoch of each per round), so a slow spell of the machine falls on all of them alike. The two deterministic
rows (Trainer vs plain loop) show how much the loops themselves differ.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from importlib.metadata import version

import torch
import torch.nn.functional as F
from _common import DEFAULT_MNIST, save_results
from bayesian_torch.layers import (
    BaseVariationalLayer_,
    Conv2dFlipout,
    Conv2dReparameterization,
    LinearFlipout,
    LinearReparameterization,
)
from epoch_time import interleaved_best_seconds, timing_inputs, trainer_epoch
from torch import nn

from bayescompress.inference.train import _fused_adam_supported
from bayescompress.nn import ESTIMATORS, bayesianize_, set_estimator_
from bayescompress.nn.layers import _SampleOutput

PEER_LAYERS = {
    "reparam": (LinearReparameterization, Conv2dReparameterization),
    "flipout": (LinearFlipout, Conv2dFlipout),
}


class PeerNet(nn.Module):
    """A sequential network whose bayesian-torch layers return (output, kl); returns (logits, KL summed)."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kl = x.new_zeros(())
        for layer in self.layers:
            if isinstance(layer, BaseVariationalLayer_):
                x, layer_kl = layer(x)  # return_kl is a forward argument, True by default
                kl = kl + layer_kl
            else:
                x = layer(x)
        return x, kl


class FloorLayer(nn.Module):
    """A Linear/Conv2d with only an estimator's sampling work, the spread a free parameter kept positive by abs.

    ``lrt``: LRT's two operations, op(x, mu) and op(x^2, |v|), and its sample; ``shared``: one operation with
    the weights mu + |s| * eps, eps drawn for every weight at every step. No softplus, no KL.
    """

    def __init__(self, layer: nn.Linear | nn.Conv2d, estimator: str) -> None:
        super().__init__()
        self.layer = layer
        self.estimator = estimator
        self.spread = nn.Parameter(torch.full_like(layer.weight, 1e-4))
        self.bias_spread = nn.Parameter(torch.full_like(layer.bias, 1e-4))

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, weight, bias)
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.estimator == "lrt":
            variance = self._op(x * x, self.spread.abs(), self.bias_spread.abs() + 1e-8)
            return _SampleOutput.apply(self._op(x, self.layer.weight, self.layer.bias), variance)
        weight = torch.addcmul(self.layer.weight, self.spread.abs(), torch.randn_like(self.spread))
        bias = torch.addcmul(self.layer.bias, self.bias_spread.abs(), torch.randn_like(self.bias_spread))
        return self._op(x, weight, bias)


def floor_network(model: nn.Module, estimator: str) -> nn.Module:
    """``model`` with every Linear/Conv2d replaced by a :class:`FloorLayer`, in place."""
    for name, child in model.named_children():
        if type(child) in (nn.Linear, nn.Conv2d):
            setattr(model, name, FloorLayer(child, estimator))
        else:
            floor_network(child, estimator)
    return model


def peer_model(name: str, kind: str) -> PeerNet:
    """bayesian-torch's version of our ``build_model(name)`` (see bayescompress/models.py), default
    prior N(0, 1) (the same as our default GaussianPrior) and default posterior init."""
    linear, conv = PEER_LAYERS[kind]
    if name == "lenet300":
        return PeerNet(nn.Flatten(), linear(784, 300), nn.ReLU(), linear(300, 100), nn.ReLU(),
                       linear(100, 10))
    if name == "lenet5":
        return PeerNet(conv(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2), conv(20, 50, 5), nn.ReLU(),
                       nn.MaxPool2d(2), nn.Flatten(), linear(800, 500), nn.ReLU(), linear(500, 10))
    raise ValueError(f"no bayesian-torch version of {name!r}")


def plain_epoch(model: nn.Module, batches, n_train: int, kl_weight: float = 1.0) -> Callable[[], None]:
    """One epoch of a model outside our Trainer, as a call: the same step as the Trainer's (NLL +
    kl_weight * KL / N, backward, Adam step, a finiteness check and the loss read back)."""
    # the Trainer's rule: fused Adam where this torch has it (it matters: VI doubles the parameters)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=_fused_adam_supported(torch.device("cpu")))

    def epoch() -> None:
        model.train()
        for x, y in batches:
            out = model(x)
            if isinstance(out, tuple):
                logits, kl = out
            else:  # deterministic: a zero KL, as the Trainer adds
                logits, kl = out, out.new_zeros(())
            loss = F.cross_entropy(logits, y) + kl_weight * kl / n_train
            if not torch.isfinite(loss):  # the Trainer checks too; also catches a broken peer setup
                raise RuntimeError(f"non-finite loss {loss.item()} in {type(model).__name__}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()

    return epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batches", type=int, default=None,
                        help="truncate the epoch (quick checks)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: leave torch's choice)")
    parser.add_argument("--out", default="peer_epoch", help="results/<out>.json (default peer_epoch)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    rows = []

    def record(model: str, network: str, loop: str, seconds: float, baseline: float) -> None:
        rows.append({"model": model, "network": network, "loop": loop, "epoch_s": seconds,
                     "baseline_s": baseline, "ratio": seconds / baseline})
        print(f"{model:<10}{network:<26}{loop:<8}{seconds:8.3f} s  ratio {seconds / baseline:5.2f}x",
              flush=True)

    for name in args.models:
        loader, n_train, deterministic = timing_inputs(name, args.data_dir, args.max_batches)
        # (network, loop, epoch call); every entry is built first and then timed in turns
        entries = [("deterministic", "Trainer", trainer_epoch(copy.deepcopy(deterministic), loader, n_train))]
        for estimator in ESTIMATORS:
            bayesian = set_estimator_(bayesianize_(copy.deepcopy(deterministic)), estimator)
            entries.append((f"bayescompress {estimator}", "Trainer", trainer_epoch(bayesian, loader, n_train)))
        for estimator in ("lrt", "shared"):
            floor = floor_network(copy.deepcopy(deterministic), estimator)
            entries.append((f"{estimator} floor", "Trainer", trainer_epoch(floor, loader, n_train)))
        entries.append(("deterministic", "plain", plain_epoch(copy.deepcopy(deterministic), loader, n_train)))
        for kind in PEER_LAYERS:
            torch.manual_seed(0)
            entries.append((f"bayesian-torch {kind}", "plain", plain_epoch(peer_model(name, kind), loader, n_train)))
        seconds = interleaved_best_seconds({(network, loop): epoch for network, loop, epoch in entries},
                                           args.repeats)
        # ours over our deterministic net through the Trainer; the peers over it through the plain loop
        for (network, loop), value in seconds.items():
            record(name, network, loop, value, seconds[("deterministic", loop)])

    print(f"\n{'model':<10}{'network/estimator':<26}{'loop':<8}{'epoch s':>8}{'ratio':>8}")
    for r in rows:
        print(f"{r['model']:<10}{r['network']:<26}{r['loop']:<8}{r['epoch_s']:8.3f}"
              f"{r['ratio']:8.2f}")
    command = "python benchmarks/peer_epoch.py " + " ".join(sys.argv[1:])
    save_results(args.out, {
        "command": command.strip(),
        "bayesian_torch": version("bayesian-torch"),
        "timing": "best of --repeats epochs per network after a warm-up epoch, the networks timed in turns",
        "baselines": {"Trainer": "our deterministic net through our Trainer (epoch_time.trainer_epoch)",
                      "plain": "the same deterministic net timed by this script's plain loop"},
        "truncated_to_batches": args.max_batches,
        "rows": rows,
    })


if __name__ == "__main__":
    main()
