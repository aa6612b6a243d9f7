"""SSVI on MNIST against dense VI trained for the same epochs in the same run (issue 13).

    python benchmarks/ssvi_mnist.py [--models lenet300 lenet5] [--densities 0.1 0.05] [--starts pretrained scratch]
                                    [--epochs 20] [--structured | --only-structured] [--no-dense]
                                    [--set SETTING=VALUE ...] [--threads 1] [--tag _x]

Per model and start (the pretrained weights of pretrain_mnist.py, or a freshly initialised network with the
paper's setting: random subspace, SGD with momentum and a cosine schedule, prior N(0, 0.005^2)), one dense
VI run (SSVI at density 1: the same code path, no subspace) and one SSVI run per density, every other
setting at the ssvi default. Each is a fresh set of loaders with seed 0. Table to results/ssvi_mnist<tag>.json.
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
from bayescompress.models import build_model
from bayescompress.workflows import load_data_for, load_pretrained

# the paper's from-scratch setting (docs/ssvi.md)
SCRATCH = dict(initial_subspace="random", optimizer="sgd", lr=0.05, lr_schedule="cosine", prior_scale=0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--densities", nargs="+", type=float, default=[0.1, 0.05])
    parser.add_argument("--starts", nargs="+", default=["pretrained", "scratch"], choices=["pretrained", "scratch"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--structured", action="store_true", help="also the structured variant at each density")
    parser.add_argument("--only-structured", action="store_true", help="the structured variant only")
    parser.add_argument("--no-dense", action="store_true",
                        help="leave out the dense VI row (when it is in another results file of the same setting)")
    parser.add_argument("--set", nargs="+", default=[], metavar="SETTING=VALUE")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = parse_settings(args.set)
    command = "python benchmarks/ssvi_mnist.py " + " ".join(sys.argv[1:])
    rows = []
    for name in args.models:
        splits = load_data_for(name, "mnist", args.data_dir)
        for start in args.starts:
            if start == "pretrained":
                weights = RESULTS / f"{name}_mnist.safetensors"
                if not weights.is_file():
                    sys.exit(f"{weights} is missing: run python benchmarks/pretrain_mnist.py first")
                model, _ = load_pretrained(weights)
                base = {}
            else:
                torch.manual_seed(0)
                model, _ = build_model(name, splits.input_shape, splits.num_classes)
                base = dict(SCRATCH)
            variants = [] if args.no_dense else [(1.0, False)]
            variants += [] if args.only_structured else [(d, False) for d in args.densities]
            variants += [(d, True) for d in args.densities] if args.structured or args.only_structured else []
            for density, structured in variants:
                settings = {**base, "epochs": args.epochs, "kl_warmup_epochs": args.epochs // 2, "density": density,
                            "structured": structured, **overrides}
                train, val, test = make_loaders(splits, batch_size=128)
                begin = time.perf_counter()
                result = compress(model, train, val, methods.get("ssvi")(**settings), test_loader=test,
                                  pipeline=PipelineConfig(quiet=True, max_accuracy_loss=1.0))
                m = result.metrics
                rows.append({"model": name, "start": start, "density": density, "structured": structured,
                             "settings": settings,
                             "seconds": time.perf_counter() - begin, "accuracy": m["compressed"]["accuracy"],
                             "nll": m["compressed"]["nll"], "ece": m["compressed"]["ece"],
                             "exported_accuracy": m["exported"]["accuracy"], "compression_rate": m["compression_rate"],
                             "architecture": m["architecture"]["exported"], "macs_ratio": m["macs_ratio"],
                             "exported_macs": m["macs"]["exported"],
                             "latency_ratio": m["latency_ratio"], "training_macs": m["training"]["macs"],
                             "training_macs_ratio": m["training_macs_ratio"]})
                r = rows[-1]
                # after every row: a stopped run keeps the rows it finished
                save_results(f"ssvi_mnist{args.tag}", {"command": command.strip(), "rows": rows})
                print(f"{name:<9}{start:<11}d={density:<5}{' units' if structured else ''} acc {r['accuracy']:.4f} nll {r['nll']:.4f} ece "
                      f"{r['ece']:.4f} {r['compression_rate']:.1f}x train-MACs x{r['training_macs_ratio']:.3f} "
                      f"{r['seconds']:.0f} s", flush=True)
    print("wrote", save_results(f"ssvi_mnist{args.tag}", {"command": command.strip(), "rows": rows}))


if __name__ == "__main__":
    main()
