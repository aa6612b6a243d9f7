"""One markdown table of `bayescompress compare` results beside the published numbers (issue 14).

    python benchmarks/compare_table.py results/runs/compare-lenet300 results/runs/compare-lenet5 [--out NAME]

Reads each folder's comparison.json (written by ``bayescompress compare``; the folder name after
``compare-`` names the network) and prints, per network, every method's error, compression, exported MACs and
units as mean ± std over its seeds, followed by the published anchors of that network (SPEC), marked as such.
Also writes the rows to results/NAME.json (default compare_table).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import save_results

from bayescompress.plot import PUBLISHED


def _cell(entry: dict, scale: float = 1.0, style: str = "{:.2f}") -> str:
    text = style.format(entry["mean"] * scale)
    return text + (" ± " + style.format(entry["std"] * scale) if len(entry["values"]) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", default="compare_table", help="results/OUT.json")
    args = parser.parse_args()
    lines = ["| network | method | seeds | error % | NLL | ECE | \\|W\\|/\\|W≠0\\| | exported MACs | units kept | source |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for folder in args.folders:
        network = folder.name.removeprefix("compare-")
        record = json.loads((folder / "comparison.json").read_text())
        for row in record["rows"]:
            error = {**row["accuracy"], "mean": 1 - row["accuracy"]["mean"]}
            lines.append(f"| {network} | {row['method']} | {len(row['seeds'])} | {_cell(error, 100)} | "
                         f"{_cell(row['nll'], 1, '{:.3f}')} | {_cell(row['ece'], 1, '{:.4f}')} | "
                         f"{_cell(row['compression'], 1, '{:.1f}')}x | {_cell(row['exported_macs'], 1, '{:,.0f}')} | "
                         f"{row['units']} | measured |")
            rows.append({"network": network, **row})
        for anchor in PUBLISHED.get(network, []):
            macs = f"{anchor['exported_macs']:,}" if anchor.get("exported_macs") else ""
            lines.append(f"| {network} | {anchor['label']} | | {100 * anchor['error']:.2f} | | | "
                         f"{anchor['compression']:.0f}x | {macs} | | published |")
    print("\n".join(lines))
    print("wrote", save_results(args.out, {"folders": [str(f) for f in args.folders], "rows": rows,
                                                  "published": PUBLISHED}))


if __name__ == "__main__":
    main()
