"""The plug-in pipeline against the pipeline it replaced (issue 12): the recipes recorded before the change,
run through ``compress`` with the same seed, must give the same figures.

    python benchmarks/plugin_equivalence.py --models lenet300 [--methods ...] --reference OLD.json

OLD.json holds rows of the same recipes run with the code before the change (commit 63c93c5; see
docs/benchmarks.md for how it was made). The table compares accuracy, compression and architecture row by
row; results/plugin_equivalence.json keeps both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from _common import DEFAULT_MNIST, RESULTS, save_results

from bayescompress import methods
from bayescompress.compress import PipelineConfig, compress
from bayescompress.data import make_loaders
from bayescompress.workflows import load_data_for, load_pretrained

# compress_mnist.py's RECIPES before the change (early stopping only where a recipe had it)
OLD_RECIPES = {
    ("lenet300", "gaussian-snr"): dict(epochs=5, prior_scale=0.5, init_rho=-6.0, keep_fraction=0.09,
                                       finetune_epochs=15, finetune_lr=1e-3, max_val_drop=None),
    ("lenet300", "magnitude"): dict(keep_fraction=0.09, finetune_epochs=20, finetune_lr=1e-3),
    ("lenet5", "gaussian-snr"): dict(epochs=4, prior_scale=0.3, init_rho=-6.0, keep_fraction=0.05,
                                     finetune_epochs=6, finetune_lr=1e-3, max_val_drop=None),
    ("lenet5", "magnitude"): dict(keep_fraction=0.05, scope="layer", finetune_epochs=10, finetune_lr=1e-3),
    ("lenet300", "ss-gl"): dict(epochs=12, kl_warmup_epochs=1, finetune_epochs=15, finetune_lr=1e-3,
                                max_val_drop=None),
    ("lenet300", "ss-ghs"): dict(epochs=14, kl_warmup_epochs=1, kl_weight=0.5, input_gate_lr=5e-3,
                                 max_val_drop=0.025, val_checks_per_epoch=2, finetune_epochs=15, finetune_lr=1e-3),
    ("lenet5", "ss-gl"): dict(epochs=10, kl_warmup_epochs=1, finetune_epochs=6, finetune_lr=1e-3, max_val_drop=None),
    ("lenet5", "ss-ghs"): dict(epochs=9, kl_warmup_epochs=1, kl_weight=1.0, input_gate_lr=None, max_val_drop=None,
                               finetune_epochs=6, finetune_lr=1e-3),
    ("lenet300", "turbo-vbi"): dict(epochs=8, pi0=0.01, finetune_epochs=15, finetune_lr=1e-3, max_val_drop=None),
    ("lenet5", "turbo-vbi"): dict(epochs=4, pi0=0.005, finetune_epochs=4, finetune_lr=1e-3, max_val_drop=None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--models", nargs="+", default=["lenet300"])
    parser.add_argument("--methods", nargs="+", default=list(methods.names()))
    parser.add_argument("--reference", required=True, help="rows of the old pipeline (JSON list)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reference = {(r["model"], r["method"]): r for r in json.loads(open(args.reference).read())}
    rows = []
    for name in args.models:
        model, _ = load_pretrained(RESULTS / f"{name}_mnist.safetensors")
        train, val, test = make_loaders(load_data_for(name, "mnist", args.data_dir), batch_size=128)
        # in the reference's order, on one set of loaders as there: the training loader's shuffle generator
        # advances with every epoch it serves, so a run depends on the runs before it
        for method in [r["method"] for r in reference.values() if r["model"] == name and r["method"] in args.methods]:
            start = time.perf_counter()
            result = compress(model, train, val, methods.get(method)(**OLD_RECIPES[name, method]), test_loader=test,
                              pipeline=PipelineConfig(quiet=True, max_accuracy_loss=1.0))
            m, old = result.metrics, reference[name, method]
            rows.append({"model": name, "method": method, "seconds": time.perf_counter() - start,
                         "compressed_accuracy": m["compressed"]["accuracy"], "exported_accuracy": m["exported"]["accuracy"],
                         "compressed_nll": m["compressed"]["nll"], "compression_rate": m["compression_rate"],
                         "architecture": m["architecture"]["exported"], "old": old,
                         "same": (m["compressed"]["accuracy"], m["exported"]["accuracy"], m["compressed"]["nll"],
                                  m["compression_rate"], m["architecture"]["exported"])
                         == (old["compressed"], old["exported"], old["nll"], old["rate"], old["arch"])})
            r = rows[-1]
            print(f"{name:<9}{method:<13} new {r['compressed_accuracy']:.4f} {r['compression_rate']:.2f}x "
                  f"{r['architecture']}  old {old['compressed']:.4f} {old['rate']:.2f}x {old['arch']}  "
                  f"same: {r['same']}", flush=True)
    command = "python benchmarks/plugin_equivalence.py " + " ".join(sys.argv[1:])
    save_results(f"plugin_equivalence{args.tag}", {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
