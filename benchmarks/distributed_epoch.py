"""Wall time of one VI training epoch of LeNet-5 on MNIST: one process against two under torchrun (gloo).

    python benchmarks/distributed_epoch.py [--epochs 2] [--batch-size 128] [--method gaussian-snr]

Runs the same training (the method's prior, LRT, global batch --batch-size) three ways on this machine's two
cores: one process with one thread, one process with two threads, and ``torchrun --nproc-per-node 2`` with one
thread per process, each rank on half of every batch. Times the training epochs only (no validation), after
one warm-up epoch. Table to stdout, JSON to results/distributed_epoch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from _common import DEFAULT_MNIST, save_results

from bayescompress import distributed, methods
from bayescompress.data import make_loaders
from bayescompress.inference import TrainConfig, fit
from bayescompress.models import build_model
from bayescompress.nn import PosteriorInit, bayesianize_
from bayescompress.workflows import load_data_for


def worker(args) -> None:
    """One measurement; under torchrun, one rank of it. Prints a JSON line (rank 0)."""
    distributed.init_from_environment("cpu")
    try:
        splits = load_data_for("lenet5", "mnist", args.data_dir)
        train, _, _ = make_loaders(splits, batch_size=args.batch_size, rank=distributed.rank(),
                                   world_size=distributed.world_size())
        method = methods.get(args.method)()
        model, _ = build_model("lenet5", splits.input_shape, splits.num_classes)
        bayesianize_(model, method.prior(method.configure(model)), init=PosteriorInit(rho=-6.0),
                     example_input=splits.train[:1][0])
        config = TrainConfig(epochs=1, quiet=True, eval_samples=0)
        fit(model, train, config=config)  # warm-up
        seconds = []
        for _ in range(args.epochs):
            start = time.perf_counter()
            fit(model, train, config=config)
            seconds.append(time.perf_counter() - start)
        if distributed.is_main():
            print(json.dumps({"epoch_s": min(seconds), "all_s": seconds, "processes": distributed.world_size(),
                              "threads": torch.get_num_threads()}))
    finally:
        distributed.shutdown()


def run(command: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per configuration (the minimum is kept)")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--method", default="gaussian-snr", choices=[m for m in methods.names() if m != "magnitude"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    here = [str(Path(__file__).resolve()), "--worker", "--data-dir", args.data_dir, "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--method", args.method]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    rows = {
        "1 process, 1 thread": run([sys.executable, *here], 1),
        "1 process, 2 threads": run([sys.executable, *here], 2),
        "2 processes (torchrun, gloo), 1 thread each": run([torchrun, "--standalone", "--nproc-per-node", "2", *here], 1),
    }
    base = rows["1 process, 1 thread"]["epoch_s"]
    print(f"LeNet-5 / MNIST, {args.method}, global batch {args.batch_size}: one training epoch")
    print(f"{'configuration':<46}{'epoch s':>10}{'vs 1x1':>9}")
    for name, row in rows.items():
        row["ratio_to_one_thread"] = row["epoch_s"] / base
        print(f"{name:<46}{row['epoch_s']:>10.2f}{row['ratio_to_one_thread']:>9.2f}")
    path = save_results("distributed_epoch", {"command": " ".join(["python", *sys.argv]), "method": args.method,
                                              "batch_size": args.batch_size, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
