"""The ``bayescompress`` command line. Every command takes ``--quiet``; those that produce metrics take
``--json`` and then print the same JSON object as their last line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bayescompress.compress import METHODS, CompressConfig
from bayescompress.data import DATASETS
from bayescompress.models import MODELS
from bayescompress.priors.hierarchical import GRAPHS


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON on the last line")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu", help="where to run: cpu (default), cuda or cuda:N")


def _overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing run folder at --out (never a folder holding anything else)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayescompress", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    pre = commands.add_parser("pretrain", help="train a reference network deterministically")
    pre.add_argument("--model", choices=MODELS, required=True)
    pre.add_argument("--dataset", choices=DATASETS, default="digits")
    pre.add_argument("--data-dir", help="data folder: the four IDX files (mnist, fashion-mnist) or the CIFAR-10 binary batches (cifar10)")
    pre.add_argument("--epochs", type=int, required=True)
    pre.add_argument("--lr", type=float, default=1e-3)
    pre.add_argument("--batch-size", type=int, default=128)
    pre.add_argument("--hidden", type=int, nargs="+", default=[100], help="mlp hidden widths (default 100)")
    pre.add_argument("--out", required=True, help="weights file, WEIGHTS.safetensors (WEIGHTS.json beside it)")
    _common(pre)

    comp = commands.add_parser("compress", help="train, prune and export a pretrained network")
    comp.add_argument("--model", required=True,
                      help=f"one of {', '.join(MODELS)}, or package.module:factory for your own architecture")
    comp.add_argument("--weights", required=True, help="pretrained weights (.safetensors or a torch.save state_dict)")
    comp.add_argument("--dataset", choices=DATASETS, default="digits")
    comp.add_argument("--data-dir", help="data folder: the four IDX files (mnist, fashion-mnist) or the CIFAR-10 binary batches (cifar10)")
    comp.add_argument("--method", choices=METHODS, default="gaussian-snr")
    comp.add_argument("--epochs", type=int, required=True, help="VI epochs before pruning")
    comp.add_argument("--out", required=True, help="run folder to write (a new or empty folder)")
    _overwrite(comp)
    defaults = CompressConfig()
    comp.add_argument("--lr", type=float, default=defaults.lr)
    comp.add_argument("--prior-scale", type=float, default=defaults.prior_scale, help="Gaussian prior std s0")
    comp.add_argument("--init-rho", type=float, default=defaults.init_rho,
                      help=f"starting rho of every weight, sigma = softplus(rho) (default {defaults.init_rho})")
    comp.add_argument("--keep-fraction", type=float, default=defaults.keep_fraction,
                      help=f"fraction of weights kept (default {defaults.keep_fraction})")
    comp.add_argument("--snr-threshold", type=float, help="keep SNR >= this instead of a fraction")
    comp.add_argument("--level", choices=("weight", "unit"), default=defaults.level)
    comp.add_argument("--finetune-epochs", type=int, default=defaults.finetune_epochs)
    comp.add_argument("--finetune-lr", type=float, default=defaults.finetune_lr)
    comp.add_argument("--mc-samples", type=int, default=defaults.mc_samples)
    comp.add_argument("--kl-warmup-epochs", type=int, default=defaults.kl_warmup_epochs)
    comp.add_argument("--kl-weight", type=float, default=defaults.kl_weight,
                      help="KL weight before pruning, in (0, 1]; 1 = the ELBO (default)")
    spike_slab = comp.add_argument_group("spike-and-slab (ss-gl, ss-ghs)")
    spike_slab.add_argument("--prior-inclusion", type=float, default=defaults.prior_inclusion,
                            help=f"prior probability lambda that a unit is on (default {defaults.prior_inclusion})")
    spike_slab.add_argument("--temperature", type=float, default=defaults.temperature,
                            help=f"relaxed-Bernoulli temperature (default {defaults.temperature})")
    spike_slab.add_argument("--no-input-gates", dest="input_gates", action="store_false",
                            help="do not gate the input features")
    spike_slab.add_argument("--prior-lr", type=float, default=defaults.prior_lr,
                            help=f"learning rate of gate logits and log-scales (default {defaults.prior_lr})")
    spike_slab.add_argument("--rho-lr", type=float, default=defaults.rho_lr,
                            help=f"learning rate of the posterior rho (default {defaults.rho_lr}; turbo-vbi too)")
    spike_slab.add_argument("--input-gate-lr", type=float, default=defaults.input_gate_lr,
                            help="learning rate of the input gates' logits (default: --prior-lr)")
    spike_slab.add_argument("--max-val-drop", type=float, default=defaults.max_val_drop,
                            help="stop the training before pruning once the validation accuracy falls more than "
                                 "this below its start, and prune the last state within it (default: off)")
    spike_slab.add_argument("--val-checks-per-epoch", type=int, default=defaults.val_checks_per_epoch,
                            help=f"validation checks per epoch for --max-val-drop "
                                 f"(default {defaults.val_checks_per_epoch})")
    turbo = comp.add_argument_group("Turbo-VBI (turbo-vbi)")
    turbo.add_argument("--pi0", type=float, default=defaults.pi0,
                       help=f"MRF prior probability that a weight is active (default {defaults.pi0})")
    turbo.add_argument("--mrf-p11", type=float, default=defaults.mrf_p11,
                       help=f"P(active | active neighbour), rows and columns (default {defaults.mrf_p11})")
    turbo.add_argument("--mrf-p01", type=float, default=defaults.mrf_p01,
                       help=f"P(active | inactive neighbour), rows and columns (default {defaults.mrf_p01})")
    turbo.add_argument("--mrf-graph", choices=GRAPHS, default=defaults.mrf_graph,
                       help=f"the support's factor graph per layer (default {defaults.mrf_graph})")
    turbo.add_argument("--turbo-updates-per-epoch", type=int, default=defaults.turbo_updates_per_epoch,
                       help="turbo iterations (module A + module B) per epoch "
                            f"(default {defaults.turbo_updates_per_epoch})")
    comp.add_argument("--batch-size", type=int, default=128)
    _common(comp)

    plot = commands.add_parser("plot", help="draw a run folder's weight masks per layer (and, for Turbo-VBI runs, "
                                            "the inclusion probabilities in MASKS-inclusion.png)")
    plot.add_argument("run", help="run folder written by compress or demo")
    plot.add_argument("--out", help="image file (default: RUN/masks.png)")
    plot.add_argument("--quiet", action="store_true", help="print nothing")

    demo = commands.add_parser("demo", help="the whole pipeline on digits: pretrain, VI, prune, export")
    demo.add_argument("--out", help="run folder to write (a new or empty folder)")
    _overwrite(demo)
    _common(demo)
    return parser


def _run_output(result, folder, quiet: bool) -> dict:
    if not quiet:
        print(result.report())
        if folder is not None:
            print(f"wrote the run folder {folder}")
    return {"method": result.method, "out": None if folder is None else str(folder), **result.metrics}


def _print_table(rows: dict[str, dict[str, float]]) -> None:
    columns = ("accuracy", "nll", "ece", "brier")
    print(f"{'network':<12}" + "".join(f"{c:>10}" for c in columns))
    for name, metrics in rows.items():
        print(f"{name:<12}" + "".join(f"{metrics[c]:>10.4f}" for c in columns))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from bayescompress import workflows
    from bayescompress._validation import check_device
    from bayescompress.runs import check_run_destination

    try:
        if getattr(args, "device", None) is not None:  # before any work
            check_device("--device", args.device)
        if args.command in ("compress", "demo") and args.out is not None:
            check_run_destination(args.out, args.overwrite)
        if args.command == "pretrain":
            result = workflows.pretrain(
                args.model, args.dataset, args.data_dir, epochs=args.epochs, lr=args.lr,
                batch_size=args.batch_size, hidden=args.hidden, seed=args.seed, device=args.device,
                quiet=args.quiet,
            )
            path = result.save(args.out)
            output = {"weights": str(path), **{f"test_{k}": v for k, v in result.metrics.items()}}
            if not args.quiet:
                _print_table({args.model: result.metrics})
                print(f"wrote {path} and {path.with_suffix('.json')}")
        elif args.command == "plot":
            from matplotlib import pyplot

            from bayescompress import plot, runs

            masks, inclusion = runs.read_masks(args.run)  # no network is rebuilt: any run folder draws
            target = args.out or str(Path(args.run) / "masks.png")
            pyplot.close(plot.masks(masks, target))
            written = [target]
            if inclusion:  # Turbo-VBI runs: the posterior inclusion probabilities beside the masks
                written.append(str(Path(target).with_name(Path(target).stem + "-inclusion" + Path(target).suffix)))
                pyplot.close(plot.inclusion(inclusion, written[-1]))
            if not args.quiet:
                print("wrote " + " and ".join(written))
            return 0
        elif args.command == "compress":
            config = CompressConfig(
                epochs=args.epochs, lr=args.lr, prior_scale=args.prior_scale, init_rho=args.init_rho,
                keep_fraction=args.keep_fraction,
                snr_threshold=args.snr_threshold, level=args.level, finetune_epochs=args.finetune_epochs,
                finetune_lr=args.finetune_lr, mc_samples=args.mc_samples, kl_warmup_epochs=args.kl_warmup_epochs,
                kl_weight=args.kl_weight, prior_inclusion=args.prior_inclusion, temperature=args.temperature,
                input_gates=args.input_gates, pi0=args.pi0, mrf_p11=args.mrf_p11, mrf_p01=args.mrf_p01,
                mrf_graph=args.mrf_graph, turbo_updates_per_epoch=args.turbo_updates_per_epoch,
                prior_lr=args.prior_lr, rho_lr=args.rho_lr, input_gate_lr=args.input_gate_lr,
                max_val_drop=args.max_val_drop, val_checks_per_epoch=args.val_checks_per_epoch,
                seed=args.seed, device=args.device, quiet=args.quiet,
            )
            result = workflows.compress_files(args.model, args.weights, args.dataset, args.data_dir, args.method,
                                              config, batch_size=args.batch_size)
            output = _run_output(result, result.save(args.out, overwrite=args.overwrite), args.quiet)
        else:
            start = time.perf_counter()
            result = workflows.demo(args.out, seed=args.seed, quiet=args.quiet, overwrite=args.overwrite,
                                    device=args.device)
            output = _run_output(result, args.out, args.quiet)
            if not args.quiet:
                print(f"digits test split; compressed metrics from {result.metrics['mc_samples']} MC samples; "
                      f"{time.perf_counter() - start:.1f} s")
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"bayescompress {args.command}: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
