"""Time one training epoch of the Bayesian network (per estimator) against the deterministic one, same run.

    python benchmarks/epoch_time.py [--data-dir ../shared/data/mnist] [--repeats 3] [--estimators lrt flipout shared]

Both run through the same training loop (Adam, batch 128) on MNIST's training split; the Bayesian network is
the deterministic one converted by ``bayesianize_``. The figure is the ratio of the best-of-``repeats``
epoch times; the target is <= 2.0x (LRT does two passes per layer, which is the floor).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable, Hashable

import torch
from _common import DEFAULT_MNIST, save_results

from bayescompress.data import make_loaders
from bayescompress.inference import Trainer, TrainConfig
from bayescompress.models import build_model
from bayescompress.nn import ESTIMATORS, bayesianize_, set_estimator_
from bayescompress.workflows import load_data_for

TARGET = 2.0


def timing_inputs(name: str, data_dir: str, max_batches: int | None, batch_size: int = 128):
    """What a timing script times on: MNIST's training batches for ``name`` (truncated to ``max_batches``), the
    training-set size N and the deterministic reference network, built from seed 0."""
    splits = load_data_for(name, "mnist", data_dir)
    loader, _, _ = make_loaders(splits, batch_size=batch_size)
    if max_batches:
        loader = list(loader)[:max_batches]
    torch.manual_seed(0)
    deterministic, _ = build_model(name, splits.input_shape, splits.num_classes)
    return loader, len(splits.train), deterministic


def trainer_epoch(model, batches, n_train: int, callbacks=()) -> Callable[[], object]:
    """One epoch of our Trainer over ``batches`` (callbacks included), as a call."""
    trainer = Trainer(model, batches, config=TrainConfig(epochs=1, quiet=True), callbacks=callbacks,
                      n_train=n_train)
    for callback in callbacks:
        callback.on_train_begin(trainer)
    return trainer._train_epoch


def epoch_seconds(model, batches, n_train: int, repeats: int, callbacks=()) -> float:
    """Best of ``repeats`` timed epochs (callbacks included), after one untimed warm-up epoch."""
    return best_epoch_seconds(trainer_epoch(model, batches, n_train, callbacks), repeats)


def best_epoch_seconds(run_epoch, repeats: int) -> float:
    """Best of ``repeats`` timed calls of ``run_epoch`` after one untimed warm-up call."""
    return interleaved_best_seconds({"epoch": run_epoch}, repeats)["epoch"]


def interleaved_best_seconds(epochs: dict[Hashable, Callable[[], object]], repeats: int) -> dict[Hashable, float]:
    """Best of ``repeats`` timed calls of every entry after one untimed warm-up call each, the calls taken in
    turns (one of each per round) so that a slow spell of the machine falls on every entry alike instead of on
    whichever ran then."""
    for run_epoch in epochs.values():
        run_epoch()
    best = dict.fromkeys(epochs, float("inf"))
    for _ in range(repeats):
        for name, run_epoch in epochs.items():
            start = time.perf_counter()
            run_epoch()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--max-batches", type=int, default=None, help="truncate the epoch (quick checks)")
    parser.add_argument("--estimators", nargs="+", default=["lrt"], choices=ESTIMATORS)
    args = parser.parse_args()

    rows = []
    for name in args.models:
        splits = load_data_for(name, "mnist", args.data_dir)
        for batch_size in args.batch_sizes:
            loader, _, _ = make_loaders(splits, batch_size=batch_size)
            if args.max_batches:
                loader = list(loader)[: args.max_batches]
            torch.manual_seed(0)
            deterministic, _ = build_model(name, splits.input_shape, splits.num_classes)
            det = epoch_seconds(deterministic, loader, len(splits.train), args.repeats)
            for estimator in args.estimators:
                bayesian = set_estimator_(bayesianize_(copy.deepcopy(deterministic)), estimator)
                bay = epoch_seconds(bayesian, loader, len(splits.train), args.repeats)
                rows.append({"model": name, "batch_size": batch_size, "estimator": estimator, "deterministic_s": det,
                             "bayesian_s": bay, "ratio": bay / det})
                print(f"{name:<10} batch {batch_size:<5} deterministic {det:7.2f} s  {estimator:<8}{bay:7.2f} s  "
                      f"ratio {bay / det:5.2f}x", flush=True)
    print(f"{'model':<10}{'batch':>6}{'estimator':>10}{'det s':>9}{'bayes s':>9}{'ratio':>7}")
    for r in rows:
        print(f"{r['model']:<10}{r['batch_size']:>6}{r['estimator']:>10}{r['deterministic_s']:>9.2f}"
              f"{r['bayesian_s']:>9.2f}{r['ratio']:>7.2f}")
    command = "python benchmarks/epoch_time.py " + " ".join(sys.argv[1:])
    save_results("epoch_time", {"command": command.strip(), "target_ratio": TARGET, "rows": rows})


if __name__ == "__main__":
    main()
