"""Pretrain the reference networks on MNIST and report test accuracy against the targets.

    python benchmarks/pretrain_mnist.py [--data-dir ../shared/data/mnist] [--models lenet300 lenet5]

Writes the weights to benchmarks/results/<model>_mnist.safetensors (+ .json) — the starting points of the
compression benchmarks — and the table to benchmarks/results/pretrain_mnist.json.
"""

from __future__ import annotations

import argparse
import time

from _common import DEFAULT_MNIST, RESULTS, save_results

from bayescompress.workflows import pretrain

TARGETS = {"lenet300": 0.982, "lenet5": 0.991}
RECIPES = {"lenet300": {"epochs": 30, "lr": 1e-3}, "lenet5": {"epochs": 20, "lr": 1e-3}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--models", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = []
    for name in args.models:
        start = time.perf_counter()
        result = pretrain(name, "mnist", args.data_dir, batch_size=128, seed=args.seed, **RECIPES[name])
        seconds = time.perf_counter() - start
        result.save(RESULTS / f"{name}_mnist.safetensors", overwrite=True)  # this script regenerates them
        accuracy = result.metrics["accuracy"]
        rows.append({"model": name, **RECIPES[name], "test_accuracy": accuracy, "target": TARGETS[name],
                     "meets_target": accuracy >= TARGETS[name], "seconds": seconds})
        print(f"{name:<10} test accuracy {accuracy:.4f} (target >= {TARGETS[name]}) in {seconds:.0f} s", flush=True)
    print(f"{'model':<10}{'epochs':>8}{'accuracy':>10}{'target':>8}{'ok':>5}")
    for row in rows:
        print(f"{row['model']:<10}{row['epochs']:>8}{row['test_accuracy']:>10.4f}{row['target']:>8}"
              f"{'yes' if row['meets_target'] else 'NO':>5}")
    print("wrote", save_results("pretrain_mnist", {"command": "python benchmarks/pretrain_mnist.py", "rows": rows}))


if __name__ == "__main__":
    main()
