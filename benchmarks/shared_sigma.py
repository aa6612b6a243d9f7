"""What sharing sigma between the forward pass and the KL buys: the same epoch with and without it, one process.

    python benchmarks/shared_sigma.py [--data-dir ../shared/data/mnist] [--models lenet300 lenet5] [--repeats 3]
        [--max-batches B] [--threads N]

The Trainer opens ``bayescompress.nn.shared_sigma`` around each mini-batch's loss; "without" replaces that scope
by one that does nothing, so every layer computes softplus(rho) twice per step (forward and KL), as before the
change. Both variants and the deterministic network are timed in turns (best of ``--repeats`` after a warm-up
epoch each), so machine noise hits them alike; prints a table and writes ``results/shared_sigma.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import torch
from _common import DEFAULT_MNIST, save_results
from epoch_time import epoch_seconds

import bayescompress.inference.train as train_module
from bayescompress.data import make_loaders
from bayescompress.models import build_model
from bayescompress.nn import bayesianize_, set_estimator_, shared_sigma
from bayescompress.workflows import load_data_for


@contextlib.contextmanager
def _no_sharing(model):
    yield model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--estimators", nargs="+", default=["lrt", "shared"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        splits = load_data_for(name, "mnist", args.data_dir)
        loader, _, _ = make_loaders(splits, batch_size=128)
        batches = list(loader)[: args.max_batches]
        n_train = len(splits.train)
        torch.manual_seed(0)
        model, _ = build_model(name, splits.input_shape, splits.num_classes)
        deterministic = epoch_seconds(copy.deepcopy(model), batches, n_train, args.repeats)
        for estimator in args.estimators:
            seconds = {}
            for label, scope in (("without", _no_sharing), ("with", shared_sigma)):
                train_module.shared_sigma = scope
                net = set_estimator_(bayesianize_(copy.deepcopy(model)), estimator)
                seconds[label] = epoch_seconds(net, batches, n_train, args.repeats)
            train_module.shared_sigma = shared_sigma
            row = {"model": name, "estimator": estimator, "deterministic_s": deterministic,
                   "without_s": seconds["without"], "with_s": seconds["with"],
                   "ratio_without": seconds["without"] / deterministic, "ratio_with": seconds["with"] / deterministic,
                   "speedup": seconds["without"] / seconds["with"]}
            rows.append(row)
            print(f"{name:9s} {estimator:7s} deterministic {deterministic:7.3f} s   without {row['ratio_without']:.2f}x"
                  f"   with {row['ratio_with']:.2f}x   ({row['speedup']:.2f}x faster)", flush=True)
    path = save_results("shared_sigma", {"repeats": args.repeats, "max_batches": args.max_batches, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
