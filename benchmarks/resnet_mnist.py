"""ResNet-20 (BatchNorm, residual sums) compressed end to end on MNIST at 32x32: how far structure goes.

There is no CIFAR-10 on this machine, so the general-graph path (BatchNorm folding, coupled residual groups,
constant channels) is measured on MNIST upsampled to 32x32 with a 1-channel resnet20. Pretrains it, then
compresses it with each method given, and records channels per layer, MACs, accuracy and calibration, and
the wall time. Each run folder goes to results/runs/resnet20-<method>/ (it is saved and loaded back to check
the rebuild); the table to results/resnet_mnist.json.

    python benchmarks/resnet_mnist.py [--methods ss-gl gaussian-snr] [--pretrain-epochs 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import DEFAULT_MNIST, RESULTS, save_results
from bayescompress import methods
from bayescompress.compress import PipelineConfig, compress
from bayescompress.data import make_loaders
from bayescompress.metrics import evaluate
from bayescompress.runs import load
from bayescompress.workflows import load_data_for, pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--methods", nargs="+", default=["ss-gl"])
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="VI epochs before pruning")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    pretrained = pretrain("resnet20", "mnist", args.data_dir, epochs=args.pretrain_epochs, lr=3e-3)
    pretrain_s = time.perf_counter() - start
    print(f"pretrained resnet20: test accuracy {pretrained.metrics['accuracy']:.4f} ({pretrain_s:.0f} s)")
    splits = load_data_for("resnet20", "mnist", args.data_dir)
    train, val, test = make_loaders(splits, batch_size=128)
    rows = []
    for method in args.methods:
        pipeline = PipelineConfig()
        start = time.perf_counter()
        configured = methods.get(method)(epochs=args.epochs, kl_warmup_epochs=1, finetune_epochs=args.finetune_epochs)
        result = compress(pretrained.model, train, val, configured, test_loader=test, pipeline=pipeline)
        seconds = time.perf_counter() - start
        folder = result.save(RESULTS / "runs" / f"resnet20-{method}", overwrite=True)
        run = load(folder, model=pretrained.model)
        reloaded = evaluate(run.posterior, test, samples=result.metrics["mc_samples"], seed=pipeline.seed)
        m = result.metrics
        rows.append({"method": method, "config": result.config, "wall_s": seconds,
                     "original": m["original"], "compressed": m["compressed"], "exported": m["exported"],
                     "compression_rate": m["compression_rate"], "macs": m["macs"], "macs_ratio": m["macs_ratio"],
                     "latency_ratio": m["latency_ratio"], "architecture": m["architecture"],
                     "export_max_abs_diff": m["export_max_abs_diff"],
                     "reloaded_metrics_equal": reloaded == m["compressed"]})
        print(result.report())
        print(f"{method}: {seconds:.0f} s; reloaded MC metrics equal: {reloaded == m['compressed']}")
    path = save_results("resnet_mnist", {"pretrain": {"epochs": args.pretrain_epochs, "seconds": pretrain_s,
                                                      "test": pretrained.metrics}, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
