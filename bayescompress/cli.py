"""The ``bayescompress`` command line. Every command takes ``--quiet``; those that produce metrics take
``--json`` and then print the same JSON object as their last line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from bayescompress.data import DATASETS
from bayescompress.models import MODELS


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON on the last line")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayescompress", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    pre = commands.add_parser("pretrain", help="train a reference network deterministically")
    pre.add_argument("--model", choices=MODELS, required=True)
    pre.add_argument("--dataset", choices=DATASETS, default="digits")
    pre.add_argument("--data-dir", help="folder with the four IDX files (mnist, fashion-mnist)")
    pre.add_argument("--epochs", type=int, required=True)
    pre.add_argument("--lr", type=float, default=1e-3)
    pre.add_argument("--batch-size", type=int, default=128)
    pre.add_argument("--hidden", type=int, nargs="+", default=[100], help="mlp hidden widths (default 100)")
    pre.add_argument("--out", required=True, help="weights file, WEIGHTS.safetensors (WEIGHTS.json beside it)")
    _common(pre)

    demo = commands.add_parser("demo", help="pretrain, convert and VI-train a small MLP on digits")
    demo.add_argument("--out", help="folder to write the networks and metrics.json into")
    _common(demo)
    return parser


def _print_table(rows: dict[str, dict[str, float]]) -> None:
    columns = ("accuracy", "nll", "ece", "brier")
    print(f"{'network':<12}" + "".join(f"{c:>10}" for c in columns))
    for name, metrics in rows.items():
        print(f"{name:<12}" + "".join(f"{metrics[c]:>10.4f}" for c in columns))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from bayescompress import workflows  # imported late so --help answers without loading torch

    try:
        if args.command == "pretrain":
            result = workflows.pretrain(
                args.model, args.dataset, args.data_dir, epochs=args.epochs, lr=args.lr,
                batch_size=args.batch_size, hidden=args.hidden, seed=args.seed, quiet=args.quiet,
            )
            path = result.save(args.out)
            output = {"weights": str(path), **{f"test_{k}": v for k, v in result.metrics.items()}}
            if not args.quiet:
                _print_table({args.model: result.metrics})
                print(f"wrote {path} and {path.with_suffix('.json')}")
        else:
            output = workflows.demo(args.out, seed=args.seed, quiet=args.quiet)
            if not args.quiet:
                _print_table({"pretrained": output["pretrained"], "bayesian": output["bayesian"]})
                print(f"digits test set, Bayesian metrics from {output['mc_samples']} MC samples; "
                      f"{output['seconds']:.1f} s")
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"bayescompress {args.command}: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
