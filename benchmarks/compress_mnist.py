"""Compress the pretrained reference networks on MNIST and check the issue's targets.

    python benchmarks/pretrain_mnist.py                     # once: writes the pretrained weights
    python benchmarks/compress_mnist.py [--models lenet300 lenet5] [--methods gaussian-snr magnitude]
    python benchmarks/compress_mnist.py --models lenet300 --methods ss-ghs --set epochs=14 --tag _try  # one-off recipe

Every method runs its default recipe (bayescompress.methods: the config's defaults for LeNet-300-100, the
method's "cnn" preset for LeNet-5), so these are the figures a user gets without setting anything; ``--set``
changes settings for one run. Each run's folder goes to benchmarks/results/runs/<model>-<method>/; the table
to benchmarks/results/compress_mnist.json.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from _common import DEFAULT_MNIST, RESULTS, parse_settings, save_results

from bayescompress import methods
from bayescompress.compress import PipelineConfig, compress
from bayescompress.data import make_loaders
from bayescompress.workflows import load_data_for, load_pretrained

# variants of a method's recipe, measured beside it: structured SNR pruning keeps 30 % of each hidden layer's
# neurons by group SNR
VARIANTS = {"gaussian-snr-unit": ("gaussian-snr", dict(level="unit", keep_fraction=0.3))}
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
                        help=f"{', '.join(methods.names())}, gaussian-snr-unit (SNR pruning of whole neurons), or "
                             f"{MATCHED} (after turbo-vbi: the same number of weights)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tag", default="", help="suffix of the results file, for runs split across processes")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="change recipe settings for this run, e.g. --set epochs=14 max_val_drop=0.01 "
                             "(the results file records every setting used); seed=N sets the seed")
    args = parser.parse_args()
    overrides = parse_settings(args.set)
    pipeline = PipelineConfig(seed=overrides.pop("seed", 0))
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
            base, settings = VARIANTS.get(method, (method.removesuffix("-matched"), {}))
            settings = {**settings, **overrides}
            if method == MATCHED:
                turbo = [r for r in rows if r["model"] == name and r["method"] == "turbo-vbi"]
                if not turbo:
                    sys.exit(f"{MATCHED} needs a turbo-vbi row of {name} earlier in the same run")
                settings = {"keep_fraction": 1 / turbo[-1]["compression_rate"], **overrides}
            start = time.perf_counter()
            result = compress(model, train, val, methods.get(base)(**settings), test_loader=test, pipeline=pipeline)
            seconds = time.perf_counter() - start
            result.save(RESULTS / "runs" / f"{name}-{method}")
            m = result.metrics
            row = {
                "model": name, "method": method, "settings": settings, "recipe": result.config["method"],
                "seed": pipeline.seed, "seconds": seconds,
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
