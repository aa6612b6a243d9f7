"""One markdown row per run folder, and the rows as JSON, so runs made from the command line are recorded.

    python benchmarks/run_rows.py results/runs/s11/lenet5-* --out runs_s11_lenet5

Reads each folder's metrics.json (written by ``bayescompress compress --out``; run folders themselves are not in
git) and prints: error of the compressed network (MC) and of the export, |W|/|W!=0|, exported units and MACs,
the settings that differ from the method's recipe, and, where the run had a compute budget, its rounds.
The JSON keeps those numbers, every setting of the run and its ``pruning`` record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import save_results

from bayescompress import methods
from bayescompress.models import build_model


def recipe(method: str, model: str) -> dict:
    """The settings the method runs with on ``model`` when given none."""
    network, _ = build_model(model, (1, 28, 28), 10)
    return dict(vars(methods.get(method)().configure(network)))


def row(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    source = json.loads((folder / "architecture.json").read_text())["source"]
    settings = metrics["config"]["method"]
    model = source["architecture"]["model"]
    defaults = recipe(metrics["method"], model)
    changed = {k: v for k, v in settings.items() if k in defaults and defaults[k] != v}
    return {
        "run": folder.name, "method": metrics["method"], "model": model, "changed": changed,
        "error": 1 - metrics["compressed"]["accuracy"], "exported_error": 1 - metrics["exported"]["accuracy"],
        "compression": metrics["compression_rate"], "units": metrics["architecture"]["exported"],
        "exported_macs": metrics["macs"]["exported"], "training_s": metrics["training"]["wall_s"],
        "seed": metrics["config"]["pipeline"]["seed"], "settings": settings, "pruning": metrics.get("pruning", {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", required=True, help="name of the JSON file in benchmarks/results/")
    args = parser.parse_args()
    rows = [row(folder) for folder in args.runs if (folder / "metrics.json").is_file()]
    print("| run | method | settings changed | error % (MC) | error % (exported) | \\|W\\|/\\|W!=0\\| | exported units "
          "| exported MACs |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        changed = ", ".join(f"{k}={v}" for k, v in r["changed"].items()) or "recipe"
        print(f"| {r['run']} | {r['method']} | {changed} | {100 * r['error']:.2f} | {100 * r['exported_error']:.2f} "
              f"| {r['compression']:.1f}x | {r['units']} | {r['exported_macs']:,} |")
    save_results(args.out, {"runs": rows})


if __name__ == "__main__":
    main()
