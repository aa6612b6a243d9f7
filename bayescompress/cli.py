"""The ``bayescompress`` command line. Every command takes ``--quiet``; those that produce metrics take
``--json`` and then print the same JSON object as their last line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from bayescompress import methods
from bayescompress.compare import DEFAULT_METHODS
from bayescompress.compress import AccuracyLossWarning, PipelineConfig
from bayescompress.data import DATASETS
from bayescompress.methods.base import unknown_setting_message
from bayescompress.models import MODELS
from bayescompress.settings import Flag, Integer, Real, SettingInfo, describe, show

# pipeline settings the commands share through _common rather than per-method flags
_COMMON = ("seed", "device", "quiet")


def _common(parser: argparse.ArgumentParser, seed: bool = True, seed_default: int | None = 0,
            seed_help: str = "random seed (default 0)") -> None:
    """--quiet, --json, --device and (unless the command takes --seeds) --seed."""
    parser.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON on the last line")
    if seed:
        parser.add_argument("--seed", type=int, default=seed_default, help=seed_help)
    parser.add_argument("--device", default="cpu", help="where to run: cpu (default), cuda or cuda:N")


def _overwrite(parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup,
               what: str = "an existing run folder at --out (never a folder holding anything else)") -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def _add_setting(group, info: SettingInfo, cnn_default, words: Callable[[str], str]) -> None:
    """One flag per setting, from its declaration, its help in the shell's ``words`` (:func:`_flag_words`); absent
    unless given, so the method's preset decides."""
    default = f"default {show(info.default)}" + (f", CNN {show(cnn_default)}" if cnn_default != info.default else "")
    flag = "--" + info.name.replace("_", "-")
    help_text = f"{words(info.help)} [{info.allowed.describe()}; {default}]".replace("%", "%%")
    if isinstance(info.allowed, Flag):
        group.add_argument(flag, dest=info.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=help_text)
    else:
        metavar = {Real: "X", Integer: "N"}.get(type(info.allowed))
        group.add_argument(flag, dest=info.name, type=_flag_parser(info), default=argparse.SUPPRESS,
                           metavar=metavar, choices=getattr(info.allowed, "options", None), help=help_text)


def _flag_parser(info: SettingInfo):
    """``info.parse`` and the setting's range check, with argparse told what the flag takes (it would say "invalid
    parse value", and a value out of range would be named later by the setting's Python name)."""
    def parse(text: str):
        try:
            value = info.parse(text)
            info.allowed.check(info.name, value)
            return value
        except (ValueError, KeyError):
            raise argparse.ArgumentTypeError(f"expected {info.allowed.describe()}; got {text!r}") from None
    return parse


# counts (epochs, batch size, widths): refused by argparse, before any file is read
_WHOLE = _flag_parser(SettingInfo("count", 1, "", Integer(1)))

_DATA_DIR_HELP = ("data folder: the four IDX files (mnist, fashion-mnist), the CIFAR-10 binary batches (cifar10), or "
                  "train.npz and test.npz (and val.npz) of your own arrays, each np.savez(path, x=inputs, y=labels) "
                  "(npz)")


def _network_and_data(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The pretrained network and the data of compress and compare (required unless the command resumes)."""
    parser.add_argument("--model", required=required,
                        help=f"one of {', '.join(MODELS)}; or, for your own architecture, package.module:factory "
                             "or path/to/file.py:factory (a function building it with no arguments)")
    parser.add_argument("--weights", required=required,
                        help="pretrained weights (.safetensors or a torch.save state_dict)")
    parser.add_argument("--dataset", choices=DATASETS, help="the data to compress on (default: the data set a "
                        "reference network's weights were pretrained on, from their .json record, else digits)")
    parser.add_argument("--data-dir", help=_DATA_DIR_HELP)


def _pipeline(parser: argparse.ArgumentParser, title: str, words: Callable[[str], str] | None = None) -> None:
    """The pipeline settings' flags (seed, device and quiet aside) and the batch size."""
    group = parser.add_argument_group(title)
    words = words or _flag_words(PipelineConfig.names())
    for info in describe(PipelineConfig):
        if info.name not in _COMMON:
            _add_setting(group, info, info.default, words)
    parser.add_argument("--batch-size", type=_WHOLE, default=128,
                        help="examples per training step (default 128; under torchrun the global batch, shared among "
                             "the processes)")


def _method_in(argv: Sequence[str]) -> str:
    """The --method given to compress, so its settings' flags can be added before parsing."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default="gaussian-snr")
    return pre.parse_known_args(argv)[0].method


def _parser(method: str = "gaussian-snr") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayescompress", description=" ".join(__doc__.split()).replace("``", ""))
    commands = parser.add_subparsers(dest="command", required=True)

    pre = commands.add_parser("pretrain", help="train a reference network deterministically")
    pre.add_argument("--model", choices=MODELS, required=True)
    pre.add_argument("--dataset", choices=DATASETS, default="digits")
    pre.add_argument("--data-dir", help=_DATA_DIR_HELP)
    pre.add_argument("--epochs", type=_WHOLE, required=True)
    pre.add_argument("--lr", type=_flag_parser(SettingInfo("lr", 1e-3, "", Real(0.0, 10.0, low_open=True))),
                     default=1e-3)
    pre.add_argument("--batch-size", type=_WHOLE, default=128, help="examples per training step (default 128)")
    pre.add_argument("--hidden", type=_WHOLE, nargs="+", help="mlp hidden widths (default 100); the mlp only")
    pre.add_argument("--out", required=True, help="weights file, WEIGHTS.safetensors (WEIGHTS.json beside it)")
    _overwrite(pre, "an existing weights file at --out and the .json beside it")
    _common(pre)

    comp = commands.add_parser("compress", help="train, prune and export a pretrained network")
    comp.add_argument("--resume", metavar="RUN", help="continue the interrupted run in the run folder RUN from its "
                                                      "checkpoint, with the settings it was started with")
    _network_and_data(comp, required=False)
    comp.add_argument("--from-run", metavar="RUN", help="start from the trained posterior of the finished run RUN "
                      "(its trained.safetensors) instead of training: only the pruning, budgets and fine-tuning run, "
                      "with RUN's method and settings except the pruning and fine-tuning settings given here; "
                      "--model/--weights must be the network RUN compressed")
    comp.add_argument("--method", choices=methods.names(), default="gaussian-snr",
                      help="the compression method (default gaussian-snr); --method M --help lists M's settings")
    comp.add_argument("--out", help="run folder to write (a new or empty folder); it holds the run's checkpoint "
                                    "while it trains")
    _overwrite(comp)
    words = None
    if method in methods.names():
        method_class = methods.get(method)
        words = _flag_words({*method_class.config_class.names(), *PipelineConfig.names(), "batch_size"})
        group = comp.add_argument_group(
            f"settings of {method}", "Every setting defaults to the method's benchmarked recipe; where the CNN "
            "recipe (networks with a Conv2d) differs, the help says so.")
        cnn = method_class.presets.get("cnn", {})
        # the training before pruning and the method's own settings first, the fine-tuning's last
        for info in sorted(describe(method_class.config_class), key=lambda info: info.name.startswith("finetune_")):
            _add_setting(group, info, cnn.get(info.name, info.default), words)
    _pipeline(comp, "pipeline settings (every method)", words)
    _common(comp, seed_default=None, seed_help="random seed (default 0; with --from-run, the run's)")

    cmp = commands.add_parser("compare", help="several methods on one pretrained network, over seeds: a table")
    _network_and_data(cmp)
    cmp.add_argument("--methods", type=_comma_list, default=list(DEFAULT_METHODS),
                     help=f"comma-separated methods, each at its recipe (default: {','.join(DEFAULT_METHODS)})")
    cmp.add_argument("--seeds", type=_seed_list, default=[0], help="comma-separated seeds (default 0)")
    cmp.add_argument("--set", nargs="+", action="extend", default=[], metavar="METHOD.SETTING=VALUE", dest="settings",
                     help="change one method's setting, e.g. ssvi.density=0.05, or every compared method's with "
                          "all., e.g. all.target_macs=20000 (the same compute budget for all; a METHOD. change "
                          "wins over an all. one)")
    cmp.add_argument("--out", required=True, help="comparison folder: OUT/<method>/seed<k> run folders and "
                                                   "OUT/comparison.md, .csv, .json")
    keep_or_replace = cmp.add_mutually_exclusive_group()
    keep_or_replace.add_argument("--resume", action="store_true",
                                 help="keep the runs already in --out and run the rest")
    _overwrite(keep_or_replace, "the runs of these methods and seeds already in --out (never anything compare did "
                                "not write)")
    cmp.add_argument("--anchors", help="JSON file of published points for the Pareto figure, a list of "
                                       '{"label", "compression", "error"} (default: the published results of '
                                       "lenet300 / lenet5 on MNIST)")
    _pipeline(cmp, "pipeline settings (every run)")
    _common(cmp, seed=False)

    plot = commands.add_parser("plot", help="draw every figure of a run folder (masks, units kept, scores, "
                                            "reliability, training curves, filters, pixels) into RUN/plots")
    plot.add_argument("run", help="run folder written by compress, compare or demo; or a comparison folder "
                                  "(compare, demo): its Pareto figure")
    plot.add_argument("--out", help="folder for the figures (default: RUN/plots, redrawn in place)")
    _overwrite(plot, "figures of the same names in --out")
    plot.add_argument("--quiet", action="store_true", help="print nothing")

    demo = commands.add_parser("demo", help="on digits: pretrain, then compare weight-level and structured "
                                            "(whole-neuron) compression, with figures")
    demo.add_argument("--out", help="folder for the comparison: tables, pareto.png and a run folder per method")
    _overwrite(demo)
    _common(demo)
    return parser


def _comma_list(text: str) -> list[str]:
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):  # "0,,1" or "a,": a typo, not a shorter list
        raise argparse.ArgumentTypeError(f"an empty item in {text!r}; give comma-separated items, e.g. a,b")
    return parts


def _seed_list(text: str) -> list[int]:
    try:
        return [int(part) for part in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are comma-separated integers, e.g. 0,1,2; got {text!r}") from None


def _compare_methods(names: list[str], settings: list[str]) -> list:
    """The methods of ``compare``, each with the ``METHOD.SETTING=VALUE`` changes given for it (``all.`` for
    every method; a method's own change wins)."""
    unknown = [name for name in names if name not in methods.names()]
    if unknown:
        raise ValueError(f"unknown method {', '.join(unknown)} in --methods; the methods are: "
                         f"{', '.join(methods.names())}")
    changes: dict[str, dict] = {name: {} for name in names}
    requested: list[tuple[str, str, str]] = []  # (the --set item, a method, the setting)
    for item in settings:
        target, sep, text = item.partition("=")
        method, dot, name = target.partition(".")
        if not sep or not dot:
            raise ValueError(f"--set takes METHOD.SETTING=VALUE, e.g. ssvi.density=0.05; got {item!r}")
        if method != "all" and method not in changes:
            raise ValueError(f"--set {item}: {method} is not one of the compared methods ({', '.join(names)}), "
                             "nor all")
        if (twice := next((earlier for earlier, _, _ in requested if earlier.partition("=")[0].replace("-", "_")
                           == target.replace("-", "_")), None)) is not None:
            raise ValueError(f"--set gives {target} twice ({twice} and {item}); give each setting once")
        requested += [(item, each, name) for each in (names if method == "all" else [method])]
    for item, method, name in sorted(requested, key=lambda entry: not entry[0].startswith("all.")):
        changes[method][name.replace("-", "_")] = _parsed_setting(item, method, name)
    chosen = []
    for name in names:
        try:
            chosen.append(methods.get(name)(**changes[name]))
        except ValueError as error:  # a value of the right type out of the method's range
            raise ValueError(f"--set for {name}: {error}") from None
    return chosen


def _parsed_setting(item: str, method: str, name: str):
    """The value of ``--set item`` as ``method``'s setting ``name``, or an error naming what is wrong."""
    config_class = methods.get(method).config_class
    infos = {info.name: info for info in describe(config_class)}
    key, text = name.replace("-", "_"), item.partition("=")[2]
    if key not in infos:
        raise ValueError(f"--set {item}: " + unknown_setting_message(key, method, config_class))
    try:
        return infos[key].parse(text)
    except (ValueError, KeyError):
        raise ValueError(f"--set {item}: {key} must be {infos[key].allowed.describe()} for {method}; "
                         f"got {text!r}") from None


def _read_anchors(path: str) -> list[dict]:
    """Published points from a JSON file: a list of {"label", "compression", "error"} (error as a fraction)."""
    if not Path(path).is_file():
        raise ValueError(f"--anchors {path}: there is no such file")
    try:
        anchors = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--anchors {path}: cannot read it as JSON ({error})") from None
    if not isinstance(anchors, list) or not all(
            isinstance(a, dict) and {"label", "compression", "error"} <= a.keys() for a in anchors):
        raise ValueError(f'--anchors {path} must hold a list of {{"label", "compression", "error"}} objects, '
                         'e.g. [{"label": "Sparse VD", "compression": 68, "error": 0.0192}]')
    return anchors


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


def _given(args: argparse.Namespace, names) -> dict:
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _warn_accuracy_loss(metrics: dict, out, settings: dict) -> None:
    from bayescompress.compress import accuracy_loss_advice

    loss = metrics["accuracy_loss"]
    if not loss["exceeded"]:
        return
    worst = max(("compressed", "exported"), key=lambda key: loss[key])
    print(f"\n!!! WARNING: the {worst} network lost {100 * loss[worst]:.2f} points of test accuracy "
          f"({100 * metrics['original']['accuracy']:.2f} % -> {100 * metrics[worst]['accuracy']:.2f} %), more than "
          f"the {100 * loss['limit']:g} allowed (--max-accuracy-loss {loss['limit']:g}).\n"
          f"!!! The run folder {out} is written, but this is not a usable compression: "
          f"{accuracy_loss_advice(settings, flags=True)}.\n",
          file=sys.stderr)


def _input_error(command: str, message: str) -> NoReturn:
    """Refuse bad input found while parsing as argparse and :func:`_run` do: the documented one-line message on
    stderr and exit status 2 (a bare ``SystemExit(message)`` would exit 1)."""
    print(f"bayescompress {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# what a resumed compress may be given besides --resume RUN: how it reports, not what it computes
_RESUME_FLAGS = ("--quiet", "--json")


def _resumed_invocation(argv: list[str]) -> list[str]:
    """``compress --resume RUN [--quiet] [--json]``: the arguments RUN was started with, and those flags."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--resume")
    known, rest = pre.parse_known_args(argv[1:])
    others = [arg for arg in rest if arg not in _RESUME_FLAGS]
    if others:
        _input_error("compress", f"--resume RUN continues RUN with the settings it was started with; give only "
                                 f"{' / '.join(_RESUME_FLAGS)} beside it, not {' '.join(others)}")
    from bayescompress.io import read_json_record
    from bayescompress.folders import INVOCATION_FILE
    from bayescompress.runs import check_run_destination

    try:
        check_run_destination(known.resume, resume=True)
        saved = read_json_record(Path(known.resume) / INVOCATION_FILE, "the command the run was started with")
    except (ValueError, FileNotFoundError) as error:
        _input_error("compress", f"cannot resume {known.resume}: {error}")
    argv = saved.get("argv") if isinstance(saved.get("argv"), list) else None
    if argv is None:
        _input_error("compress", f"cannot resume {known.resume}: its {INVOCATION_FILE} holds no command; the run "
                                 "folder is damaged")
    # the run continues where it is now (the folder may have been moved or copied), from any working folder
    return [*_with_out(argv, known.resume), *[arg for arg in rest if arg not in argv], "--resume", known.resume]


# flags whose values are paths: recorded absolute, so a resume from another working folder reads the same files
_PATH_FLAGS = ("--weights", "--data-dir", "--from-run")


def _absolute_paths(argv: list[str]) -> list[str]:
    """``argv`` with the values of the path flags, and a ``--model`` file (path/to/file.py:factory), absolute."""
    out = []
    for index, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        previous = argv[index - 1] if index else ""
        if equals and flag in (*_PATH_FLAGS, "--model"):
            out.append(f"{flag}={_absolute(flag, value)}")
        elif previous in (*_PATH_FLAGS, "--model") and not arg.startswith("--"):
            out.append(_absolute(previous, arg))
        else:
            out.append(arg)
    return out


def _absolute(flag: str, value: str) -> str:
    if flag != "--model":
        return str(Path(value).absolute())
    file, colon, factory = value.rpartition(":")
    return f"{Path(file).absolute()}:{factory}" if colon and file.endswith(".py") else value


def _with_out(argv: list[str], out: str) -> list[str]:
    """``argv`` writing to ``out`` instead of the folder it named."""
    result, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            result.append(arg)
    return [*result, "--out", out]


def _seed_of_source_run(source: str | None) -> int:
    """The seed a run started ``--from-run`` continues with when none is given: the source run's (0 without one)."""
    if source is None:
        return 0
    from bayescompress.compress import recorded_seed
    from bayescompress.io import read_json_record

    return recorded_seed(read_json_record(Path(source) / "metrics.json", "a finished run folder"))


def _method_of_source_run(argv: list[str]) -> str | None:
    """The method of the run ``--from-run RUN`` names, if one is named."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--from-run")
    source = pre.parse_known_args(argv[1:])[0].from_run
    if source is None:
        return None
    from bayescompress.io import read_json_record
    from bayescompress.folders import is_interrupted_run

    if is_interrupted_run(source):
        _input_error("compress", f"--from-run {source} holds a run that has not finished; finish it first "
                                 f"(bayescompress compress --resume {shlex.quote(source)}), then start from it")
    try:
        method = read_json_record(Path(source) / "metrics.json", "a finished run folder")["method"]
    except (ValueError, FileNotFoundError, KeyError) as error:
        _input_error("compress", f"--from-run {source}: {error}")
    return method


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compress"] and any(arg == "--resume" or arg.startswith("--resume=") for arg in argv):
        argv = _resumed_invocation(argv)
    method = _method_in(argv)
    if argv[:1] == ["compress"] and not any(arg == "--method" or arg.startswith("--method=") for arg in argv):
        if (source_method := _method_of_source_run(argv)) is not None:
            method = source_method  # its flags are the ones to parse; in the invocation, so a resume parses them too
            argv += ["--method", method]
    parser = _parser(method)
    args, extras = parser.parse_known_args(argv)
    args.argv = argv
    for extra in extras:
        if args.command == "compress" and extra.startswith("--"):
            name = extra[2:].split("=")[0].replace("-", "_")
            name = name[3:] if name.startswith("no_") and name not in PipelineConfig.names() else name
            config = methods.get(args.method).config_class
            if name == "set":  # compare's way, where several methods share one command line
                parser.exit(2, "bayescompress compress: error: compress takes a method's settings as flags of "
                               "their own (--set METHOD.SETTING=VALUE is compare's): e.g. --epochs 2 "
                               "--keep-fraction 0.1\n")
            parser.exit(2, f"bayescompress compress: error: "
                           f"{unknown_setting_message(name, args.method, config, flags=True)}\n")
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if args.command == "compress":
        missing = [flag for flag in ("model", "weights", "out") if getattr(args, flag) is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join('--' + m for m in missing)} (or "
                         "--resume RUN alone, to continue an interrupted run)")
    return args


def _locate_factory(args: argparse.Namespace) -> None:
    """Make ``--model``'s factory findable as ``python -m bayescompress`` finds it.

    The working directory goes first on ``sys.path``, as ``python -m`` puts it there and the installed
    ``bayescompress`` script does not, so ``nets:build`` finds ``nets.py`` in it (and a factory file the modules
    beside it). A file (``path/to/nets.py:build``) is recorded absolute by ``workflows.load_user_model``."""
    spec = getattr(args, "model", None)
    if args.command not in ("compress", "compare") or spec is None or ":" not in spec:
        return
    if not {"", os.getcwd()} & set(sys.path):  # "" is the working directory too (python -c, the REPL)
        sys.path.insert(0, os.getcwd())


def run() -> NoReturn:
    """The ``bayescompress`` command: :func:`main`, then exit with its status. A signal that arrives once main
    is done (during the interpreter's teardown) is ignored: everything is written, and dying by it would exit 143
    with no word."""
    code = main()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_IGN)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    _locate_factory(args)
    from bayescompress import distributed

    if args.command in ("compress", "compare") and distributed.launched():  # started by torchrun
        args.device = distributed.init_from_environment(args.device)
        if not distributed.is_main():  # rank 0 reports for all
            args.quiet, args.json = True, False
            warnings.simplefilter("ignore")
    try:
        with _terminate_as_interrupt() as received, _warnings_as_lines(args.command, _shell_words(args)):
            code = _run(args)
        if received and code == 0:  # swallowed on its way (matplotlib drops exceptions raised in its callbacks)
            print(f"bayescompress {args.command}: interrupted ({received[0]}) as it finished; it finished first"
                  + (f" (wrote {args.out})" if getattr(args, "out", None) else ""), file=sys.stderr)
            return 130
        return code
    finally:
        distributed.shutdown()


# a message written for both audiences, "overwrite=True (--overwrite)", "data_dir (--data-dir on the command
# line)": on the command line, the flag alone
_PYTHON_THEN_FLAG = re.compile(r"\b[a-z_]+(?:=True)? \((--[a-z-]+)(?: on the command line)?\)")
_FROM_PYTHON = re.compile(r" \(compress\(\.\.\., [^()]*\) from Python\)")


def _shell_words(args: argparse.Namespace) -> Callable[[str], str]:
    """What turns a message of the package into the command line's words (:func:`_flag_words`) for ``args``'
    command: the settings it takes as flags, the values the user typed kept as typed."""
    names = {"batch_size", "data_dir", *PipelineConfig.names()}
    if args.command == "compress" and (method := getattr(args, "method", None)) in methods.names():
        names |= set(methods.get(method).config_class.names())
    return _flag_words(names, getattr(args, "argv", None) or ())


def _flag_words(names: Collection[str], argv: Sequence[str] = ()) -> Callable[[str], str]:
    """The Python half of a two-audience phrase dropped, and each of ``names`` (settings this command takes as
    flags; those with an underscore: single words such as epochs read as prose) written as its flag,
    ``within_unit_drop`` as ``--within-unit-drop``; the values of ``argv`` stay as typed."""
    # a name as a word of prose: after a space, "(", "," or ";" (not inside a path, a quote or METHOD.SETTING)
    flags = re.compile(r"(?<![^\s(,;])(" + "|".join(sorted((n for n in names if "_" in n), key=len, reverse=True))
                       + r")(?![\w./-])")
    # what the user typed (paths, values) stays as typed, even a folder named target_macs
    typed = {value for value in argv if not value.startswith("-")}

    def words(text: str) -> str:
        text = _PYTHON_THEN_FLAG.sub(r"\1", _FROM_PYTHON.sub("", text))
        # where typed values holding a setting's name within them stand in the text (a path runs/target_macs/x):
        # left as they are; a value that is exactly a name is told from it by its quotes alone
        typed_spans = [(found.start(), found.end()) for value in typed if "_" in value and value not in names
                       for found in re.finditer(re.escape(value), text)]

        def flag(match: re.Match) -> str:
            if any(start < match.end() and match.start() < end for start, end in typed_spans):
                return match.group(0)
            return "--" + match.group(1).replace("_", "-")

        return flags.sub(flag, text)

    return words


@contextlib.contextmanager
def _warnings_as_lines(command: str, words: Callable[[str], str] = lambda text: text) -> Iterator[None]:
    """Warnings on the command line as one line each, like the errors, in the shell's ``words``
    (:func:`_shell_words`): a user of the shell has no use for the package's source file and line that Python's
    format adds. Each text is shown once per command: compare converts the same network for every run, and each
    time in a fresh ``catch_warnings``, which forgets what Python's filter had already shown."""
    previous_format, previous_show = warnings.formatwarning, warnings.showwarning
    shown: set[str] = set()

    def show_once(message, category, filename, lineno, file=None, line=None) -> None:
        if str(message) not in shown:
            shown.add(str(message))
            previous_show(message, category, filename, lineno, file, line)

    warnings.formatwarning = lambda message, category, *_args, **_kwargs: (
        f"bayescompress {command}: warning: {words(str(message))}\n")
    warnings.showwarning = show_once
    try:
        yield
    finally:
        warnings.formatwarning, warnings.showwarning = previous_format, previous_show


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[list[str]]:
    """SIGTERM raises KeyboardInterrupt, as SIGINT does, for the whole command: a run stopped outside its training
    loops (which checkpoint and stop on either signal themselves) still cleans up what it was writing (a run
    folder is staged and removed on any exception) and says how to continue, instead of dying silently. Yields
    the names of the signals received here, so one whose KeyboardInterrupt something swallowed is still told."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield received
        return

    def interrupt(signum, frame):
        received.append(signal.Signals(signum).name)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:  # None: a handler installed outside Python, which cannot be put back from here
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def _start_run_folder(args: argparse.Namespace) -> Path:
    """compress's run folder, checked before any work; holds the invocation and the checkpoint while training."""
    import shutil

    from bayescompress import distributed
    from bayescompress.io import FORMAT_VERSION, write_json
    from bayescompress.inference.checkpoint import claim
    from bayescompress.folders import CHECKPOINT_DIR, INVOCATION_FILE, is_interrupted_run
    from bayescompress.runs import check_run_destination

    if not distributed.is_main():  # rank 0 checks and writes the folder; the others only read the checkpoint
        return Path(args.out) / CHECKPOINT_DIR
    out = check_run_destination(args.out, args.overwrite, resume=args.resume is not None)
    if args.from_run is not None and Path(args.from_run).resolve() == out.resolve():
        raise ValueError(f"--out {args.out} is the run --from-run reads: the new run would replace its source; "
                         "write it to another folder")
    if args.resume is None:
        if is_interrupted_run(out):  # --overwrite: start again, from nothing (check_run_destination: unclaimed)
            shutil.rmtree(out / CHECKPOINT_DIR)
        argv = _absolute_paths([arg for arg in args.argv if arg not in ("--overwrite", *_RESUME_FLAGS)])
        if args.dataset is None:  # the one the weights' record names, written down: a resume must not need it
            from bayescompress.workflows import dataset_for

            args.dataset = dataset_for(args.model, args.weights, None)
            argv += ["--dataset", args.dataset]
            if args.dataset != "digits" and args.data_dir is None:  # said before the loader says it without why
                raise ValueError(f"{Path(args.weights).name} was pretrained on {args.dataset} (its .json record says "
                                 f"so): pass --data-dir with the {args.dataset} files, or --dataset for another data "
                                 "set")
        args.run_dir, args.made_out = out, not out.exists()  # a folder the user made stays, even left empty
        write_json(out / INVOCATION_FILE, {"format_version": FORMAT_VERSION, "argv": argv})
        args.wrote_invocation = True
    # claimed from the start, not once the data are loaded: a second command on this --out is told who trains it
    args.claim = (out / CHECKPOINT_DIR, claim(out / CHECKPOINT_DIR))
    return out / CHECKPOINT_DIR


def _how_to_continue(args: argparse.Namespace) -> str:
    """What to run after an interruption outside training: --resume where a checkpointed phase exists."""
    from bayescompress.folders import CHECKPOINT_DIR

    if args.command == "compress" and args.out is not None and (Path(args.out) / CHECKPOINT_DIR).is_dir():
        return f"after its last checkpoint; continue with: bayescompress compress --resume {shlex.quote(args.out)}"
    if args.command == "compare":
        from bayescompress.folders import is_interrupted_run, is_run_folder

        kept = Path(args.out).glob("*/seed*") if args.out is not None else ()
        if any(is_run_folder(folder) or is_interrupted_run(folder) for folder in kept):
            return "with its finished runs and checkpoints kept; continue with the same bayescompress compare " \
                   "command and --resume"
    if args.command == "demo" and args.out is not None and Path(args.out).exists():
        return f"before it finished; run it again with --overwrite (the demo in {args.out} starts over)"
    return "before anything was saved; run the command again"


def _release_claim(args: argparse.Namespace) -> None:
    """Give up the claim :func:`_start_run_folder` made, where the command ends before the run's own checkpoint
    took it over (a refused --resume left it behind)."""
    if (held := getattr(args, "claim", None)) is not None:
        from bayescompress.inference.checkpoint import release

        release(*held)


def _forget_unstarted_run(args: argparse.Namespace) -> None:
    """Remove the invocation a run that failed before its first checkpoint wrote, its checkpoint folder if that
    holds only the run's settings (no phase was saved), and the run folder if the command made it and it is left
    empty: bad input leaves nothing behind, and nothing the same command would take for an interrupted run."""
    from bayescompress.folders import INVOCATION_FILE
    from bayescompress.runs import discard_unstarted_checkpoint

    out = args.run_dir  # where a symbolic link --out points
    if not (out / INVOCATION_FILE).is_file() or not discard_unstarted_checkpoint(out):
        return
    (out / INVOCATION_FILE).unlink()
    if args.made_out and not any(out.iterdir()):
        out.rmdir()


def _run(args: argparse.Namespace) -> int:
    from bayescompress import distributed, workflows
    from bayescompress._validation import check_device
    from bayescompress.inference import TrainingInterrupted

    try:
        if getattr(args, "device", None) is not None:  # before any work
            check_device("--device", args.device)
        if args.command == "compress":
            checkpoint = _start_run_folder(args)
        if args.command == "pretrain":
            if args.hidden is not None and args.model != "mlp":
                raise ValueError(f"--hidden sets the mlp's widths; {args.model} has a fixed architecture: leave "
                                 "--hidden out")
            workflows.check_weights_destination(args.out, args.overwrite)  # before the training, not after
            result = workflows.pretrain(
                args.model, args.dataset, args.data_dir, epochs=args.epochs, lr=args.lr,
                batch_size=args.batch_size, seed=args.seed, device=args.device, quiet=args.quiet,
                **({"hidden": args.hidden} if args.hidden is not None else {}),
            )
            path = result.save(args.out, overwrite=args.overwrite)
            output = {"weights": str(path), **{f"test_{k}": v for k, v in result.metrics.items()}}
            if not args.quiet:
                _print_table({args.model: result.metrics})
                print(f"wrote {path} and {path.with_suffix('.json')}")
        elif args.command == "compare":
            chosen = _compare_methods(args.methods, args.settings)
            anchors = None if args.anchors is None else _read_anchors(args.anchors)
            pipeline = PipelineConfig(device=args.device, quiet=args.quiet,
                                      **_given(args, set(PipelineConfig.names()) - set(_COMMON)))
            comparison = workflows.compare_files(args.model, args.weights, args.dataset, args.data_dir, chosen,
                                                 args.seeds, out=args.out, resume=args.resume,
                                                 overwrite=args.overwrite, pipeline=pipeline,
                                                 batch_size=args.batch_size, anchors=anchors)
            if not args.quiet:
                print(comparison.markdown())
                print(f"wrote {Path(args.out) / 'comparison.md'} (.csv, .json) and the run folders in {args.out}")
            output = {"out": args.out, "original": comparison.original, "rows": comparison.summary()}
        elif args.command == "plot":
            from bayescompress import plot

            from bayescompress.io import check_writable

            if not Path(args.run).is_dir():  # before its plots/ is checked for writing
                raise FileNotFoundError(f"{args.run} is not a folder; give a run folder (compress --out), one of a "
                                        "comparison's <method>/seed<k>, or a comparison's folder")
            comparison = (Path(args.run) / "comparison.json").is_file()
            check_writable(Path(args.out or (args.run if comparison else Path(args.run) / "plots")))
            if args.out is not None and not args.overwrite and (taken := plot.figures_in(Path(args.out))):
                raise ValueError(f"{args.out} already holds {', '.join(taken)}; pass --overwrite to replace them, "
                                 "or choose another folder (nothing was touched)")
            if comparison:  # a comparison folder: its Pareto figure
                from matplotlib import pyplot

                from bayescompress.compare import load_comparison

                target = Path(args.out or args.run) / "pareto.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                pyplot.close(load_comparison(args.run).pareto(target))
                written = [target]
            else:
                written = plot.draw_run(args.run, args.out)  # no network is rebuilt: any run folder draws
            if not args.quiet:
                count = f"{len(written)} figure{'s' if len(written) != 1 else ''}"
                print(f"wrote {count} to {written[0].parent}: " + ", ".join(p.name for p in written))
            return 0
        elif args.command == "compress":
            method_class = methods.get(args.method)
            method = method_class(**_given(args, method_class.config_class.names()))
            seed = args.seed if args.seed is not None else _seed_of_source_run(args.from_run)
            pipeline = PipelineConfig(seed=seed, device=args.device, quiet=args.quiet,
                                      **_given(args, set(PipelineConfig.names()) - set(_COMMON)))
            with warnings.catch_warnings():  # reported below, louder
                warnings.simplefilter("ignore", AccuracyLossWarning)
                result = workflows.compress_files(args.model, args.weights, args.dataset, args.data_dir, method,
                                                  pipeline=pipeline, batch_size=args.batch_size, checkpoint=checkpoint,
                                                  posterior=args.from_run)
            if not distributed.is_main():
                return 0
            output = _run_output(result, result.save(args.out, overwrite=args.overwrite, resume=True), args.quiet)
            _warn_accuracy_loss(result.metrics, args.out, result.config["method"])
        else:
            start = time.perf_counter()
            comparison = workflows.demo(args.out, seed=args.seed, quiet=args.quiet, overwrite=args.overwrite,
                                        device=args.device)
            output = {"out": args.out, "original": comparison.original, "rows": comparison.summary()}
            if not args.quiet:
                print(comparison.markdown())
                if args.out is not None:
                    print(f"wrote {args.out}: comparison.md (.csv, .json), pareto.png, and per method a run folder "
                          "<method>/seed<k> with its figures in plots/")
                print(f"digits test split; {time.perf_counter() - start:.1f} s")
    except TrainingInterrupted as interrupted:
        again = (f"bayescompress compress --resume {shlex.quote(args.out)}" if args.command == "compress" else
                 "the same bayescompress compare command with --resume")
        if distributed.is_main():
            print(f"bayescompress {args.command}: {interrupted}; continue with: {again}", file=sys.stderr)
        return 130
    except KeyboardInterrupt as interrupted:  # outside the training loops: nothing new was checkpointed
        _release_claim(args)
        if getattr(args, "wrote_invocation", False):
            _forget_unstarted_run(args)
        if distributed.is_main():
            signal_name = str(interrupted) or "SIGINT"  # an exception is truthy even when its text is empty
            print(f"bayescompress {args.command}: interrupted ({signal_name}) {_how_to_continue(args)}",
                  file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as error:  # OSError: a path that cannot be written or read
        _release_claim(args)
        if getattr(args, "wrote_invocation", False):
            _forget_unstarted_run(args)
        where = "" if distributed.is_main() else f" (rank {distributed.rank()})"  # a rank's own error, named
        # a file the run was started with (weights, a --from-run folder), not one of the run folder's own
        moved = ("; a resumed run reads the files it was started with (its invocation.json): put it back there"
                 if isinstance(error, FileNotFoundError) and args.command == "compress" and args.resume is not None
                 and str(Path(args.resume).resolve()) not in str(error) and args.resume not in str(error) else "")
        message = _shell_words(args)(str(error))
        print(f"bayescompress {args.command}{where}: error: {message.rstrip('.') if moved else message}{moved}",
              file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
