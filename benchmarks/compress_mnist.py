"""Compress the pretrained reference networks on MNIST and check the issue's targets.

    python benchmarks/pretrain_mnist.py                     # once: writes the pretrained weights
    python benchmarks/compress_mnist.py [--models lenet300 lenet5] [--methods gaussian-snr magnitude]
    python benchmarks/compress_mnist.py --models lenet300 --methods ss-ghs --set epochs=14 --tag _try  # one-off recipe

Each run's folder goes to benchmarks/results/runs/<model>-<method>/; the table to
benchmarks/results/compress_mnist.json.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from _common import DEFAULT_MNIST, RESULTS, parse_settings, save_results

from bayescompress.compress import CompressConfig, compress
from bayescompress.data import make_loaders
from bayescompress.workflows import load_data_for, load_pretrained

# Recipes per (model, method); see docs/benchmarks.md for how they were chosen.
RECIPES = {
    ("lenet300", "gaussian-snr"): dict(epochs=5, prior_scale=0.5, init_rho=-6.0, keep_fraction=0.09,
                                       finetune_epochs=15, finetune_lr=1e-3),
    ("lenet300", "magnitude"): dict(keep_fraction=0.09, finetune_epochs=20, finetune_lr=1e-3),
    # structured: keep 30 % of each hidden layer's neurons by group SNR
    ("lenet300", "gaussian-snr-unit"): dict(epochs=5, prior_scale=0.5, init_rho=-6.0, level="unit",
                                            keep_fraction=0.3, finetune_epochs=15, finetune_lr=1e-3),
    ("lenet5", "gaussian-snr"): dict(epochs=4, prior_scale=0.3, init_rho=-6.0, keep_fraction=0.05,
                                     finetune_epochs=6, finetune_lr=1e-3),
    ("lenet5", "magnitude"): dict(keep_fraction=0.05, finetune_epochs=10, finetune_lr=1e-3),
    # spike-and-slab: one KL warm-up epoch while sigma widens (rho_lr), then the gates decide (prior_lr);
    # SS-GHS on LeNet-300-100 with a tempered KL (the full ELBO empties its first layer, see docs/benchmarks.md),
    # input gates at a faster rate (uninformative pixels go first, so first-layer units cost fewer slab terms),
    # and early stopping: at most 14 epochs, pruning the last state (2 checks per epoch) whose posterior-mean
    # validation accuracy is within 2.5 points of the start
    ("lenet300", "ss-gl"): dict(epochs=12, kl_warmup_epochs=1, finetune_epochs=15, finetune_lr=1e-3),
    ("lenet300", "ss-ghs"): dict(epochs=14, kl_warmup_epochs=1, kl_weight=0.5, input_gate_lr=5e-3,
                                 max_val_drop=0.025, val_checks_per_epoch=2, finetune_epochs=15,
                                 finetune_lr=1e-3),
    ("lenet5", "ss-gl"): dict(epochs=10, kl_warmup_epochs=1, finetune_epochs=6, finetune_lr=1e-3),
    ("lenet5", "ss-ghs"): dict(epochs=9, kl_warmup_epochs=1, finetune_epochs=6, finetune_lr=1e-3),
    # Turbo-VBI: pi0 sets the compression, the VI epochs how far the inactive weights are pulled to zero
    ("lenet300", "turbo-vbi"): dict(epochs=8, pi0=0.01, finetune_epochs=15, finetune_lr=1e-3),
    ("lenet5", "turbo-vbi"): dict(epochs=4, pi0=0.005, finetune_epochs=4, finetune_lr=1e-3),
}
# "gaussian-snr-matched": the gaussian-snr recipe keeping as many weights as the turbo-vbi row of the same
# network in the same run kept (so the two are compared at equal non-zero weights)
MATCHED = "gaussian-snr-matched"
TARGETS = {"lenet300": {"compression": 10.0, "max_accuracy_drop": 0.003},
           "ss-gl/ss-ghs": {"lenet300": {"compression": 10.0, "max_error": 0.019},
                            "lenet5": {"compression": 30.0, "max_error": 0.011}},
           "turbo-vbi": {"lenet300": {"compression": 30.0, "max_error": 0.019},
                         "lenet5": {"compression": 60.0, "max_error": 0.011}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--methods", nargs="+", default=["gaussian-snr", "magnitude"],
                        help="gaussian-snr, ss-gl, ss-ghs, turbo-vbi, magnitude, gaussian-snr-unit (SNR pruning of "
                             f"whole neurons), or {MATCHED} (after turbo-vbi: the same number of weights)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tag", default="", help="suffix of the results file, for runs split across processes")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override recipe fields for this run, e.g. --set epochs=14 max_val_drop=0.01 "
                             "(recorded in the results file's recipe)")
    args = parser.parse_args()
    overrides = parse_settings(args.set)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for name in args.models:
        weights = RESULTS / f"{name}_mnist.safetensors"
        if not weights.is_file():
            sys.exit(f"{weights} is missing: run python benchmarks/pretrain_mnist.py first")
        model, _ = load_pretrained(weights)
        splits = load_data_for(name, "mnist", args.data_dir)
        train, val, test = make_loaders(splits, batch_size=128)
        for method in args.methods:
            recipe = {**RECIPES.get((name, method), {}), **overrides}
            if method == MATCHED:
                turbo = [r for r in rows if r["model"] == name and r["method"] == "turbo-vbi"]
                if not turbo:
                    sys.exit(f"{MATCHED} needs a turbo-vbi row of {name} earlier in the same run")
                recipe = {**RECIPES[(name, "gaussian-snr")], "keep_fraction": 1 / turbo[-1]["compression_rate"],
                          **overrides}
            start = time.perf_counter()
            result = compress(model, train, val, method.removesuffix("-unit").removesuffix("-matched"),
                              test_loader=test, config=CompressConfig(**recipe))
            seconds = time.perf_counter() - start
            result.save(RESULTS / "runs" / f"{name}-{method}")
            m = result.metrics
            row = {
                "model": name, "method": method, "recipe": recipe, "seconds": seconds,
                "original_accuracy": m["original"]["accuracy"], "compressed_accuracy": m["compressed"]["accuracy"],
                "exported_accuracy": m["exported"]["accuracy"], "compressed_ece": m["compressed"]["ece"],
                "compressed_nll": m["compressed"]["nll"],
                "accuracy_drop": m["original"]["accuracy"] - m["compressed"]["accuracy"],
                "compression_rate": m["compression_rate"], "architecture": m["architecture"]["exported"],
                "macs_dense": m["macs"]["dense"], "macs_sparse": m["macs"]["sparse"],
                "macs_exported": m["macs"]["exported"], "macs_ratio": m["macs_ratio"],
                "latency_ratio": m["latency_ratio"], "export_max_abs_diff": m["export_max_abs_diff"],
            }
            kept = [r["early_stopping/kept_step"] for r in result.history if "early_stopping/kept_step" in r]
            if kept:  # early stopping: how far the training before pruning went (global step of the kept state)
                row["vi_steps_kept"] = kept[-1]
                row["vi_steps_per_epoch"] = len(train)
            rows.append(row)
            print(result.report(), flush=True)
    print(f"{'model':<9}{'method':<14}{'orig':>7}{'comp':>7}{'drop':>7}{'W/W!=0':>8}{'MACs r':>8}{'lat r':>7}"
          "  architecture")
    for r in rows:
        print(f"{r['model']:<9}{r['method']:<14}{r['original_accuracy']:>7.4f}{r['compressed_accuracy']:>7.4f}"
              f"{r['accuracy_drop']:>7.4f}{r['compression_rate']:>8.1f}{r['macs_ratio']:>8.3f}"
              f"{r['latency_ratio']:>7.3f}  {r['architecture']}")
    command = "python benchmarks/compress_mnist.py " + " ".join(sys.argv[1:])
    save_results(f"compress_mnist{args.tag}", {"command": command.strip(), "targets": TARGETS, "rows": rows})


if __name__ == "__main__":
    main()
