"""Turbo-VBI speed: module B's loopy BP on LeNet-300-100's weight grids, and a Turbo-VBI epoch against a plain
VI epoch, in one run.

    python benchmarks/turbo_speed.py [--data-dir ../shared/data/mnist] [--repeats 3]

Targets (issue 5): 50 BP iterations over the 266k-weight grids of LeNet-300-100 in <= 0.5 s on 2 cores; a
Turbo-VBI epoch (SGD under the hierarchical prior's expected KL, plus one turbo iteration: module A and
module B on every layer) <= 1.3x a plain VI epoch (Gaussian prior), same loop, same batches.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings

import torch
from _common import DEFAULT_MNIST, save_results
from epoch_time import epoch_seconds

from bayescompress.data import make_loaders
from bayescompress.inference import TurboCallback, belief_propagation
from bayescompress.models import build_model
from bayescompress.nn import bayesianize_
from bayescompress.priors import GaussianPrior, HierarchicalPrior
from bayescompress.workflows import load_data_for

BP_TARGET_S, EPOCH_TARGET = 0.5, 1.3


def bp_seconds(model, iterations: int, repeats: int) -> tuple[float, int]:
    """Best-of-``repeats`` time of ``iterations`` flooding iterations on every layer's grid (no early stop)."""
    turbo = bayesianize_(copy.deepcopy(model), HierarchicalPrior())
    layers = TurboCallback.turbo_layers(turbo)
    work = [(layer.prior.factor_graph(layer.prior.prior_logit.shape),
             layer.prior.inclusion_logit - layer.prior.prior_logit) for _, layer in layers]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for graph, evidence in work:
            _run_quietly(graph, evidence, iterations)
        best = min(best, time.perf_counter() - start)
    return best, sum(evidence.numel() for _, evidence in work)


def _run_quietly(graph, evidence, iterations):
    with warnings.catch_warnings():  # it is told never to converge, so that all iterations run
        warnings.simplefilter("ignore")
        return belief_propagation(graph, evidence, tol=1e-30, max_iter=iterations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--tag", default="", help="suffix of the results file")
    args = parser.parse_args()

    splits = load_data_for("lenet300", "mnist", args.data_dir)
    loader, _, _ = make_loaders(splits, batch_size=128)
    torch.manual_seed(0)
    model, _ = build_model("lenet300", splits.input_shape, splits.num_classes)
    bp, weights = bp_seconds(model, args.iterations, args.repeats)
    print(f"module B: {args.iterations} BP iterations over {weights:,} weights in {bp:.3f} s "
          f"(target <= {BP_TARGET_S} s)", flush=True)
    plain = epoch_seconds(bayesianize_(copy.deepcopy(model), GaussianPrior()), loader, len(splits.train),
                          args.repeats)
    turbo = epoch_seconds(bayesianize_(copy.deepcopy(model), HierarchicalPrior()), loader, len(splits.train),
                          args.repeats, callbacks=[TurboCallback()])
    print(f"epoch: plain VI {plain:.2f} s, Turbo-VBI {turbo:.2f} s, ratio {turbo / plain:.2f}x "
          f"(target <= {EPOCH_TARGET}x)", flush=True)
    command = "python benchmarks/turbo_speed.py " + " ".join(sys.argv[1:])
    save_results(f"turbo_speed{args.tag}", {
        "command": command.strip(), "bp": {"iterations": args.iterations, "weights": weights, "seconds": bp,
                                           "target_s": BP_TARGET_S},
        "epoch": {"model": "lenet300", "batch_size": 128, "plain_vi_s": plain, "turbo_vbi_s": turbo,
                  "ratio": turbo / plain, "target_ratio": EPOCH_TARGET},
    })


if __name__ == "__main__":
    main()
