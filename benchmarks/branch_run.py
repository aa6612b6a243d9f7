"""Branch a run at the end of its VI phase: the same posterior, pruned and fine-tuned with other settings.

    python benchmarks/branch_run.py SOURCE_RUN NEW_RUN --within-unit-drop 0.01 [--target-macs 20000 ...]

Waits until SOURCE_RUN's checkpoint holds a finished phase 0 (the training before pruning), copies that phase
and the run's settings into NEW_RUN's checkpoint with the given settings changed, and continues NEW_RUN with
``bayescompress compress --resume``. Only settings that act after phase 0 may change (pruning, fine-tuning,
budgets: the method config's ``after_training``); any other is refused. The checkpoint keeps the random-number
states, so the branch ends exactly as a fresh run with the changed flags would (its invocation.json records
that command), at the cost of the fine-tuning alone. The source must still be running or interrupted: a
finished run has removed its checkpoint, and is branched with ``bayescompress compress --from-run`` instead
(the same posterior; the fine-tuning then shuffles the data from the seed, not from where the VI left off).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bayescompress import methods

def parse_changes(pairs: list[str], after_training: frozenset[str]) -> dict[str, str]:
    """['--within-unit-drop', '0.01', ...] -> {'within_unit_drop': '0.01', ...}, each a setting of the method's
    ``after_training`` (anything else would make the copied posterior another run's, so it is refused)."""
    if len(pairs) % 2:
        raise SystemExit(f"give the changed settings as --name value pairs; got {pairs}")
    changes = {}
    for flag, value in zip(pairs[::2], pairs[1::2]):
        if not flag.startswith("--"):
            raise SystemExit(f"expected a --flag, got {flag!r}")
        key = flag[2:].replace("-", "_")
        if key not in after_training:
            raise SystemExit(f"{flag} is not a setting of what follows the VI phase; a branch may change only "
                             f"{', '.join(sorted(after_training))}")
        changes[key] = value
    return changes


def setting_value(text: str):
    """A flag's text as run.json stores it: none -> null, numbers as numbers."""
    return None if text.lower() == "none" else json.loads(text)


def new_argv(argv: list[str], changes: dict[str, str], out: Path) -> list[str]:
    """``argv`` with each changed flag's value replaced (or the flag added) and ``--out`` pointing at ``out``."""
    argv = list(argv)
    for key, value in {**changes, "out": str(out)}.items():
        flag = "--" + key.replace("_", "-")
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def wait_for_phase0(source: Path, poll: float) -> dict:
    record = source / "checkpoint" / "phase-0.json"
    while True:
        if record.is_file():
            saved = json.loads(record.read_text())
            if saved["state"]["finished"]:
                return saved
        elif (source / "model.safetensors").is_file():
            raise SystemExit(f"{source} has finished and removed its checkpoint; nothing to branch from")
        time.sleep(poll)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between looks at the source")
    args, rest = parser.parse_known_args()
    if not (args.source / "invocation.json").is_file():
        raise SystemExit(f"{args.source} is not a running or interrupted command-line run (no invocation.json); a "
                         "finished run is branched with: bayescompress compress --from-run SOURCE ...")
    invocation = json.loads((args.source / "invocation.json").read_text())
    method = invocation["argv"][invocation["argv"].index("--method") + 1]
    config_class = methods.get(method).config_class
    changes = parse_changes(rest, config_class.after_training)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; give a new folder")

    saved = wait_for_phase0(args.source, args.poll)
    tensors = args.source / "checkpoint" / f"phase-0.{saved['serial']}.safetensors"
    staging = args.out.with_name(args.out.name + ".staging")
    (staging / "checkpoint").mkdir(parents=True)
    shutil.copy2(tensors, staging / "checkpoint" / tensors.name)
    (staging / "checkpoint" / "phase-0.json").write_text(json.dumps(saved))
    settings = json.loads((args.source / "checkpoint" / "run.json").read_text())
    # a setting added to the method since the source started is at its default there
    for field in dataclasses.fields(config_class):
        if field.name not in settings["method"] and field.default is not dataclasses.MISSING:
            settings["method"][field.name] = field.default
    settings["method"].update({key: setting_value(value) for key, value in changes.items()})
    (staging / "checkpoint" / "run.json").write_text(json.dumps(settings, indent=2))
    invocation["argv"] = new_argv(invocation["argv"], changes, args.out)
    (staging / "invocation.json").write_text(json.dumps(invocation, indent=2))
    os.replace(staging, args.out)
    print("branched", args.source, "->", args.out, changes, flush=True)
    command = [sys.executable, "-m", "bayescompress", "compress", "--resume", str(args.out), "--quiet", "--json"]
    raise SystemExit(subprocess.call(command))


if __name__ == "__main__":
    main()
