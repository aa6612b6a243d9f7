"""How long the latency measurement of ``compress`` takes per network, against its budget.

For each reference network (MLP, LeNet-300-100, LeNet-5, ResNet-20 on 32x32) and the default
``latency_batch`` of 256, time one ``latency_seconds`` call on the original network paired with itself (as
``compress`` pairs the original with the export) at the default budget, and report the wall time of the whole
call, the batch actually timed and the median pass. Prints a table and writes results/latency_budget.json.

    python benchmarks/latency_budget.py [--budget 1.0] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from _common import RESULTS, machine
from bayescompress.io import write_json
from bayescompress.metrics import latency_seconds
from bayescompress.models import build_model

NETWORKS = {"mlp": (1, 8, 8), "lenet300": (1, 28, 28), "lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1.0, help="latency_budget in seconds (default 1.0)")
    parser.add_argument("--batch", type=int, default=256, help="latency_batch (default 256)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, shape in NETWORKS.items():
        model, _ = build_model(name, shape, 10)
        x = torch.randn(args.batch, *shape)
        start = time.perf_counter()
        times, batch_size = latency_seconds({"original": model, "exported": copy.deepcopy(model)}, x,
                                            budget_seconds=args.budget)
        rows.append({"network": name, "call_s": time.perf_counter() - start, "batch_size": batch_size,
                     "median_pass_s": times["original"], "budget_s": args.budget})
    print(f"{'network':<10}{'call (s)':>10}{'batch':>8}{'pass (s)':>12}")
    for row in rows:
        print(f"{row['network']:<10}{row['call_s']:>10.2f}{row['batch_size']:>8}{row['median_pass_s']:>12.5f}")
    path = write_json(RESULTS / "latency_budget.json", {"machine": machine(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
