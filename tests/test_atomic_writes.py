"""A process killed (SIGKILL) at any moment while writing a checkpoint or a run folder leaves the previous
good one readable where it was: never a truncated file."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from bayescompress.inference.checkpoint import PhaseCheckpoint
from bayescompress.folders import is_run_folder
from bayescompress.runs import load

HELPER = Path(__file__).parent / "helpers" / "rewrite_forever.py"
KILLS = 6


def _start(what: str, folder: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HELPER), what, str(folder)], stdout=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_for(condition, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the writer exited"
        assert time.monotonic() < deadline, "the writer wrote nothing"
        time.sleep(0.01)


def _serial(folder: Path) -> int:
    """The serial of the checkpoint being written (-1 if none yet); read while the writer runs."""
    record = folder / "phase-0.json"
    try:
        return int(record.read_text().split('"serial": ')[1].split(",")[0]) if record.is_file() else -1
    except (IndexError, ValueError, FileNotFoundError):
        return -1


def test_killed_while_writing_a_checkpoint_leaves_the_last_good_one(tmp_path):
    rng = random.Random(0)
    last = -1
    for _ in range(KILLS):
        process = _start("checkpoint", tmp_path)
        _wait_for(lambda: _serial(tmp_path) > last + 1, process)
        time.sleep(rng.uniform(0.0, 0.2))  # somewhere inside a write
        process.send_signal(signal.SIGKILL)
        process.wait()
        state = PhaseCheckpoint(tmp_path, 0).load()  # complete and consistent: the tensor matches its record
        assert torch.equal(state["values"], torch.full((1_000_000,), float(state["serial"])))
        assert state["serial"] >= last
        last = state["serial"]
    # a later save clears what killed writes left behind
    PhaseCheckpoint(tmp_path, 0).save({"serial": last + 1, "values": torch.zeros(1)})
    assert {p.name for p in tmp_path.iterdir()} == {"phase-0.json", f"phase-0.{last + 1}.safetensors"}


def test_killed_while_replacing_a_run_folder_leaves_a_whole_run(tmp_path):
    folder = tmp_path / "run"
    rng = random.Random(1)
    for _ in range(KILLS):
        process = _start("run", folder)
        process.stdout.readline()  # the first save is complete
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert is_run_folder(folder)
        load(folder)  # every file there is whole: the saved outputs are checked against the probe
