"""What two changes to the Bayesian training step would buy, timed in turns with ours and the floors, one process.

    python benchmarks/step_variants.py [--data-dir ../shared/data/mnist] [--models lenet300 lenet5]
        [--repeats 3] [--threads N] [--max-batches B] [--out NAME]

Needs bayesian-torch's extra only because it reuses ``peer_epoch``'s floors and plain loop
(``pip install --no-deps -r benchmarks/requirements-peers.txt``). Rows, each an epoch over the
deterministic network's (Adam lr 1e-3, batch 128, loss = mean NLL + KL / N):

* ours (``lrt``, ``shared``) and the deterministic network through our Trainer;
* ``peer_epoch``'s LRT and shared floors (the sampling work alone: no softplus, no KL);
* log-sigma: a mean-field layer parameterised by s = log sigma, whose Gaussian KL (prior N(0, 1)) and
  variance exp(2 s) come from one hand-written function (no softplus, no log: the KL's -sum(log sigma) is
  -sum(s)), with LRT or one shared weight sample; through the plain loop, since its KL is its own;
* log-sigma with the LRT variance product op(x^2, sigma^2) in bfloat16 (inputs rounded to 8 bits of
  mantissa, so the sample's standard deviation is off by up to about 0.4 %, no longer exact).

Prototypes for the design note (docs/design.md, "A log-sigma parameterisation and a bfloat16 variance"),
not the package's layers. Each ratio is over the deterministic network timed through the same loop.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
import torch.nn.functional as F
from _common import DEFAULT_MNIST, save_results
from epoch_time import interleaved_best_seconds, timing_inputs, trainer_epoch
from peer_epoch import floor_network, plain_epoch
from torch import Tensor, nn

from bayescompress.nn import bayesianize_, set_estimator_
from bayescompress.nn.layers import _SampleOutput


class _VarianceAndKL(torch.autograd.Function):
    """(exp(2 s), sum KL(N(mu, exp(2 s)) || N(0, 1))) and their gradients, one read of mu and s each way."""

    @staticmethod
    def forward(ctx, mu: Tensor, log_sigma: Tensor) -> tuple[Tensor, Tensor]:
        variance = torch.exp(log_sigma * 2.0)
        second_moment = variance.sum() + torch.dot(mu.reshape(-1), mu.reshape(-1))
        ctx.save_for_backward(mu, variance)
        return variance, 0.5 * (second_moment - mu.numel()) - log_sigma.sum()

    @staticmethod
    def backward(ctx, grad_variance: Tensor, grad_kl: Tensor):
        mu, variance = ctx.saved_tensors
        # d/ds: grad_variance * 2 exp(2 s) + grad_kl * (exp(2 s) - 1)
        grad_log_sigma = (grad_variance * 2.0 + grad_kl).mul_(variance).sub_(grad_kl)
        return mu * grad_kl, grad_log_sigma


class LogSigmaLayer(nn.Module):
    """A Linear/Conv2d with a log-sigma posterior; forward returns the output and stores its KL."""

    def __init__(self, layer: nn.Linear | nn.Conv2d, estimator: str, bf16_variance: bool = False) -> None:
        super().__init__()
        self.layer, self.estimator, self.bf16_variance = layer, estimator, bf16_variance
        self.log_sigma = nn.Parameter(torch.full_like(layer.weight, -7.0))
        self.bias_log_sigma = nn.Parameter(torch.full_like(layer.bias, -7.0))
        self.kl = layer.weight.new_zeros(())

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, weight, bias)
        return F.linear(x, weight, bias)

    def forward(self, x: Tensor) -> Tensor:
        variance, kl = _VarianceAndKL.apply(self.layer.weight, self.log_sigma)
        bias_variance, bias_kl = _VarianceAndKL.apply(self.layer.bias, self.bias_log_sigma)
        self.kl = kl + bias_kl
        if self.estimator == "lrt":
            operands = (x * x, variance, bias_variance + 1e-8)
            if self.bf16_variance:
                out_variance = self._op(*(t.bfloat16() for t in operands)).float()
            else:
                out_variance = self._op(*operands)
            return _SampleOutput.apply(self._op(x, self.layer.weight, self.layer.bias), out_variance)
        weight = torch.addcmul(self.layer.weight, variance.sqrt(), torch.randn_like(variance))
        bias = torch.addcmul(self.layer.bias, bias_variance.sqrt(), torch.randn_like(bias_variance))
        return self._op(x, weight, bias)


class LogSigmaNet(nn.Module):
    """``model`` with every Linear/Conv2d a :class:`LogSigmaLayer`; returns (logits, KL summed)."""

    def __init__(self, model: nn.Module, estimator: str, bf16_variance: bool = False) -> None:
        super().__init__()
        self.model = model
        self.bayesian: list[LogSigmaLayer] = []
        self._replace(model, estimator, bf16_variance)

    def _replace(self, module: nn.Module, estimator: str, bf16_variance: bool) -> None:
        for name, child in module.named_children():
            if type(child) in (nn.Linear, nn.Conv2d):
                layer = LogSigmaLayer(child, estimator, bf16_variance)
                setattr(module, name, layer)
                self.bayesian.append(layer)
            else:
                self._replace(child, estimator, bf16_variance)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(x)
        return logits, torch.stack([layer.kl for layer in self.bayesian]).sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batches", type=int, default=None, help="truncate the epoch (quick checks)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", default="step_variants", help="results/<out>.json (default step_variants)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    rows = []
    for name in args.models:
        loader, n, det = timing_inputs(name, args.data_dir, args.max_batches)
        entries = {("deterministic", "Trainer"): trainer_epoch(copy.deepcopy(det), loader, n),
                   ("deterministic", "plain"): plain_epoch(copy.deepcopy(det), loader, n)}
        for estimator in ("lrt", "shared"):
            ours = set_estimator_(bayesianize_(copy.deepcopy(det)), estimator)
            entries[(f"ours {estimator}", "Trainer")] = trainer_epoch(ours, loader, n)
            entries[(f"{estimator} floor", "Trainer")] = trainer_epoch(floor_network(copy.deepcopy(det), estimator),
                                                                       loader, n)
            entries[(f"log-sigma {estimator}", "plain")] = plain_epoch(LogSigmaNet(copy.deepcopy(det), estimator),
                                                                      loader, n)
        entries[("log-sigma lrt, bf16 variance", "plain")] = plain_epoch(
            LogSigmaNet(copy.deepcopy(det), "lrt", bf16_variance=True), loader, n)
        seconds = interleaved_best_seconds(entries, args.repeats)
        for (network, loop), value in seconds.items():
            ratio = value / seconds[("deterministic", loop)]
            rows.append({"model": name, "network": network, "loop": loop, "epoch_s": value, "ratio": ratio})
            print(f"{name:<10}{network:<32}{loop:<8}{value:8.3f} s  ratio {ratio:5.2f}x", flush=True)
    save_results(args.out, {"command": ("python benchmarks/step_variants.py " + " ".join(sys.argv[1:])).strip(),
                                   "timing": "best of --repeats epochs after a warm-up, the networks timed in turns",
                                   "truncated_to_batches": args.max_batches, "rows": rows})


if __name__ == "__main__":
    main()
