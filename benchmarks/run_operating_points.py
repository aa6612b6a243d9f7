"""The operating points of MNIST run folders: each run's posterior (as its pruning found it) re-pruned at several
kept fractions, exported and measured on the test set without fine-tuning; a table and JSON.

    python benchmarks/run_operating_points.py results/runs/s13/l300-svd-* --model lenet300 \
        --keep 0.03 0.02 0.015 0.012 0.01 0.008 --out operating_points_s13_lenet300

The curve says what each posterior supports at each budget (``bayescompress.operating_points``); the run's own
masks, re-measured the same way, are the last row of each run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import DEFAULT_MNIST, save_results

from bayescompress.data import make_loaders
from bayescompress.operating_points import DEFAULT_KEEP_FRACTIONS, operating_points
from bayescompress.workflows import load_data_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--model", required=True, help="the reference model the runs compressed (its data)")
    parser.add_argument("--keep", nargs="+", type=float, default=list(DEFAULT_KEEP_FRACTIONS))
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--out", required=True, help="name of the JSON under benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, _, test = make_loaders(load_data_for(args.model, "mnist", args.data_dir), batch_size=256)
    rows = []
    print("| run | kept fraction | \\|W\\|/\\|W!=0\\| | error % (exported, no fine-tuning) | units |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        for point in operating_points(run, test, keep_fractions=args.keep, own=True):
            rows.append({"run": run.name, **point})
            fraction = "the run's masks" if point.get("own") else f"{point['keep_fraction']:g}"
            print(f"| {run.name} | {fraction} | {point['compression']:.1f}x | {100 * point['error']:.2f} | "
                  f"{point['units']} |")
    save_results(args.out, {"points": rows})


if __name__ == "__main__":
    main()
