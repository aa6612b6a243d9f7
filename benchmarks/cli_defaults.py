"""Every method's default recipe, run from the command line as a new user would, against issue 12's targets.

    python benchmarks/pretrain_mnist.py          # once: writes the pretrained weights
    python benchmarks/cli_defaults.py [--models lenet300 lenet5] [--methods ...] [--jobs 2]

Each run is ``bayescompress compress --model M --weights W --dataset mnist --data-dir D --method X --out RUN``
and nothing else (every other setting at its default), in a subprocess with one torch thread; ``--jobs 2``
runs two side by side. Run folders go to results/runs/cli-<model>-<method>/, the table to
results/cli_defaults.json. Targets: within 1.0 point of the pretrained accuracy on lenet300 and 0.5 on
lenet5, at |W|/|W!=0| >= 10x / 20x (ss-gl: 5x / 10x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import DEFAULT_MNIST, RESULTS, save_results

from bayescompress import methods

MAX_DROP = {"lenet300": 0.010, "lenet5": 0.005}
MIN_RATE = {"lenet300": 10.0, "lenet5": 20.0}
MIN_RATE_SS_GL = {"lenet300": 5.0, "lenet5": 10.0}


def command(model: str, method: str, data_dir: str) -> list[str]:
    return ["bayescompress", "compress", "--model", model, "--weights", str(RESULTS / f"{model}_mnist.safetensors"),
            "--dataset", "mnist", "--data-dir", data_dir, "--method", method,
            "--out", str(RESULTS / "runs" / f"cli-{model}-{method}")]


def run(model: str, method: str, data_dir: str) -> dict:
    folder = RESULTS / "runs" / f"cli-{model}-{method}"
    if folder.exists():  # a run folder of an earlier call: the CLI never overwrites without --overwrite
        sys.exit(f"{folder} exists: remove it first (or pick other --models / --methods)")
    start = time.perf_counter()
    # the installed console script is `bayescompress`; the same entry point through this interpreter
    argv = [sys.executable, "-m", "bayescompress.cli"] + command(model, method, data_dir)[1:] + ["--quiet", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{model} {method} failed:\n{done.stderr}")
    m = json.loads(done.stdout.strip().splitlines()[-1])
    drop = m["original"]["accuracy"] - m["compressed"]["accuracy"]
    min_rate = (MIN_RATE_SS_GL if method == "ss-gl" else MIN_RATE)[model]
    config = json.loads((folder / "metrics.json").read_text())["config"]["method"]
    return {"model": model, "method": method, "command": " ".join(command(model, method, data_dir)),
            "seconds": seconds, "original_accuracy": m["original"]["accuracy"],
            "compressed_accuracy": m["compressed"]["accuracy"], "exported_accuracy": m["exported"]["accuracy"],
            "accuracy_drop": drop, "compressed_error": 1 - m["compressed"]["accuracy"],
            "compression_rate": m["compression_rate"], "architecture": m["architecture"]["exported"],
            "macs_ratio": m["macs_ratio"], "recipe": config, "warned": m["accuracy_loss"]["exceeded"],
            "meets_target": drop <= MAX_DROP[model] and m["compression_rate"] >= min_rate,
            "target": {"max_drop": MAX_DROP[model], "min_rate": min_rate}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--methods", nargs="+", default=list(methods.names()))
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (one torch thread each)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    for model in args.models:
        if not (RESULTS / f"{model}_mnist.safetensors").is_file():
            sys.exit(f"{RESULTS / f'{model}_mnist.safetensors'} is missing: run python benchmarks/pretrain_mnist.py")
    jobs = [(model, method) for model in args.models for method in args.methods]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: run(*job, str(Path(args.data_dir))), jobs))
    print(f"{'model':<9}{'method':<14}{'orig %':>8}{'comp %':>8}{'drop':>7}{'W/W!=0':>8}{'time s':>8}  ok  architecture")
    for r in rows:
        print(f"{r['model']:<9}{r['method']:<14}{100 * r['original_accuracy']:>8.2f}{100 * r['compressed_accuracy']:>8.2f}"
              f"{100 * r['accuracy_drop']:>7.2f}{r['compression_rate']:>8.1f}{r['seconds']:>8.0f}  "
              f"{'yes' if r['meets_target'] else 'NO ':<4}{r['architecture']}")
    command_line = "python benchmarks/cli_defaults.py " + " ".join(sys.argv[1:])
    print("wrote", save_results(f"cli_defaults{args.tag}", {"command": command_line.strip(), "rows": rows}))


if __name__ == "__main__":
    main()
