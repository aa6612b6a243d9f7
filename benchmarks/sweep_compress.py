"""Compress one pretrained MNIST network with several settings of one method and print the per-epoch trace.

    python benchmarks/sweep_compress.py --model lenet300 --method turbo-vbi \
        --configs "pi0=0.01,epochs=8,finetune_epochs=10" "pi0=0.005,epochs=5,finetune_epochs=10"

Each ``--configs`` entry is a comma-separated list of the method's settings (unset ones keep the method's
recipe for the network); the results go to ``results/sweep_<model>_<method><tag>.json``. This is how the
recipes in compress_mnist.py were chosen (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import DEFAULT_MNIST, RESULTS, parse_settings, save_results

from bayescompress import methods
from bayescompress.compress import PipelineConfig, compress
from bayescompress.data import make_loaders
from bayescompress.workflows import load_data_for, load_pretrained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--model", choices=("lenet300", "lenet5"), required=True)
    parser.add_argument("--method", choices=methods.names(), required=True)
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    weights = RESULTS / f"{args.model}_mnist.safetensors"
    if not weights.is_file():
        sys.exit(f"{weights} is missing: run python benchmarks/pretrain_mnist.py first")
    model, _ = load_pretrained(weights)
    train, val, test = make_loaders(load_data_for(args.model, "mnist", args.data_dir), batch_size=128)
    rows = []
    for text in args.configs:
        settings = parse_settings(text.split(","))
        start = time.perf_counter()
        seed = settings.pop("seed", 0)
        result = compress(model, train, val, methods.get(args.method)(**settings), test_loader=test,
                          pipeline=PipelineConfig(seed=seed, quiet=True))
        m = result.metrics
        trace = [{k: v for k, v in record.items() if k.endswith("/active") or k == "val_accuracy"}
                 for record in result.history]
        rows.append({"settings": settings, "seed": seed, "config": result.config["method"], "seconds": time.perf_counter() - start,
                     "compressed_accuracy": m["compressed"]["accuracy"], "exported_accuracy": m["exported"]["accuracy"],
                     "error": 1 - m["compressed"]["accuracy"], "compression_rate": m["compression_rate"],
                     "architecture": m["architecture"]["exported"], "macs_ratio": m["macs_ratio"], "trace": trace})
        print(f"{text}: accuracy {m['compressed']['accuracy']:.4f} (exported {m['exported']['accuracy']:.4f}), "
              f"{m['compression_rate']:.1f}x, units {m['architecture']['exported']}, MACs ratio "
              f"{m['macs_ratio']:.3f}, {rows[-1]['seconds']:.0f} s", flush=True)
        for epoch, record in enumerate(trace, 1):
            print(f"    epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items()), flush=True)
    command = "python benchmarks/sweep_compress.py " + " ".join(sys.argv[1:])
    save_results(f"sweep_{args.model}_{args.method}{args.tag}", {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
