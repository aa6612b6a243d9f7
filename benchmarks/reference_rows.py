"""Rows of the *old* pipeline (the if/elif ``compress`` of commit 63c93c5), the reference of
plugin_equivalence.py. It runs only inside a checkout of that commit:

    git worktree add /tmp/old 63c93c5 && cp benchmarks/reference_rows.py /tmp/old/benchmarks/
    cp benchmarks/results/lenet*_mnist.* /tmp/old/benchmarks/results/
    cd /tmp/old/benchmarks && PYTHONPATH=/tmp/old python reference_rows.py lenet300 \
        gaussian-snr,magnitude,turbo-vbi,ss-ghs,ss-gl OUT.json

One set of loaders serves the methods in the order given (as compress_mnist.py does), one torch thread.
"""

import json
import sys
import time

import torch

from _common import DEFAULT_MNIST, RESULTS
from compress_mnist import RECIPES  # the old script's recipes

from bayescompress.compress import CompressConfig, compress
from bayescompress.data import make_loaders
from bayescompress.workflows import load_data_for, load_pretrained

torch.set_num_threads(1)
name, names, out = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
model, _ = load_pretrained(RESULTS / f"{name}_mnist.safetensors")
train, val, test = make_loaders(load_data_for(name, "mnist", str(DEFAULT_MNIST)), batch_size=128)
rows = []
for method in names:
    recipe = {**RECIPES[(name, method)], "quiet": True}
    start = time.perf_counter()
    result = compress(model, train, val, method, test_loader=test, config=CompressConfig(**recipe))
    m = result.metrics
    rows.append(dict(model=name, method=method, recipe=recipe, seconds=time.perf_counter() - start,
                     original=m["original"]["accuracy"], compressed=m["compressed"]["accuracy"],
                     exported=m["exported"]["accuracy"], nll=m["compressed"]["nll"], rate=m["compression_rate"],
                     arch=m["architecture"]["exported"],
                     val=[(h.get("epoch"), h.get("val_accuracy")) for h in result.history]))
    print(json.dumps(rows[-1]), flush=True)
    with open(out, "w") as handle:
        json.dump(rows, handle, indent=1)
