"""The KL's pull on each spike-and-slab gate against the data's, at the start of training from the pretrained nets.

    python benchmarks/gate_balance.py [--data-dir ../shared/data/mnist] [--models lenet300 lenet5] [--batches 32]

For each network, family (ss-gl, ss-ghs), slab-KL form (gated, mean-field) and starting inclusion g0, the
network is converted as the method converts it (init_rho -6, input gates on the first layer) and
``bayescompress.inference.gate_gradient_balance`` measures, per gated layer, the median over units of
|d (KL / N) / d theta| over the root-mean-square of d (mean NLL) / d theta across ``--batches`` training
batches of 128. Far above 1, Adam moves every gate of the layer by its learning rate towards "off" whatever
the data say (the gates fall together); near 1 the data decide. Prints a table and writes
``results/gate_balance.json``. No timing: it can run beside other jobs.
"""

from __future__ import annotations

import argparse
import copy

import torch
from _common import DEFAULT_MNIST, RESULTS, save_results

from bayescompress.data import make_loaders
from bayescompress.inference import gate_gradient_balance
from bayescompress.nn import PosteriorInit, bayesianize_
from bayescompress.priors import SpikeSlabGroupHorseshoe, SpikeSlabGroupLasso
from bayescompress.workflows import load_data_for, load_pretrained

FAMILIES = {"ss-gl": SpikeSlabGroupLasso, "ss-ghs": SpikeSlabGroupHorseshoe}
CASES = [("gated", 0.99), ("gated", 0.95), ("mean-field", 0.99), ("mean-field", 0.95)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--batches", type=int, default=32)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        model, _ = load_pretrained(RESULTS / f"{name}_mnist.safetensors")
        splits = load_data_for(name, "mnist", args.data_dir)
        train, _, _ = make_loaders(splits, batch_size=128)
        example = next(iter(train))[0][:1]
        for family, prior_class in FAMILIES.items():
            for slab_kl, init in CASES:
                torch.manual_seed(0)
                prior = prior_class(slab_kl=slab_kl, init_inclusion=init, input_gates=True)
                net = bayesianize_(copy.deepcopy(model), prior, init=PosteriorInit(rho=-6.0), example_input=example)
                ratios = gate_gradient_balance(net, train, n_train=len(splits.train), max_batches=args.batches)
                rows.append({"model": name, "family": family, "slab_kl": slab_kl, "init_inclusion": init,
                             "ratio": ratios})
                print(f"{name:9s} {family:7s} {slab_kl:10s} g0={init:.2f}  "
                      + "  ".join(f"{layer}: {ratio:9.2f}" for layer, ratio in ratios.items()), flush=True)
    path = save_results("gate_balance", {"batches": args.batches, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
