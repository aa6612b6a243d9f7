"""torchrun --nproc-per-node 2 on CPU (gloo): every method ends with the same masks and posterior on both ranks,
and close to a single-process run on the same global batches (the ranks draw other LRT noise, so not equal)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.method_kinds import ONE_PER_KIND

WORKER = Path(__file__).parent / "helpers" / "distributed_worker.py"
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
# single process vs two: the same global batches, other noise; measured differences on digits were
# <= 2 points of accuracy, >= 0.97 of the weight masks equal
ACCURACY_TOLERANCE = 0.05
MASK_AGREEMENT = 0.9


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _launch(*args: str, processes: int | None = None) -> subprocess.CompletedProcess:
    command = ([TORCHRUN, "--nproc-per-node", str(processes), "--standalone"] if processes else
               [sys.executable])
    done = subprocess.run([*command, *args], env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def _weight_masks(state: dict) -> list[str]:
    return [k for k in state if k.startswith("mask/weight")]


@pytest.mark.parametrize("method", ONE_PER_KIND)
def test_two_ranks_end_identical_and_agree_with_one_process(method, digits_mlp_weights, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    _launch(str(WORKER), str(digits_mlp_weights), method, str(two), "4", processes=2)
    _launch(str(WORKER), str(digits_mlp_weights), method, str(one), "4")
    rank0, rank1 = load_file(str(two / "rank0.safetensors")), load_file(str(two / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    for key in rank0:  # masks and the whole trained network: means, sigmas, prior state
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between the ranks"
    single = load_file(str(one / "rank0.safetensors"))
    masks = _weight_masks(single)
    agreement = sum(int((rank0[k] == single[k]).sum()) for k in masks) / sum(single[k].numel() for k in masks)
    assert agreement >= MASK_AGREEMENT
    metrics = [json.loads((folder / "rank0.json").read_text()) for folder in (two, one)]
    assert metrics[0]["distributed"]["world_size"] == 2 and metrics[1]["distributed"]["world_size"] == 1
    assert abs(metrics[0]["compressed"]["accuracy"] - metrics[1]["compressed"]["accuracy"]) <= ACCURACY_TOLERANCE


def test_torchrun_cli_writes_once_from_rank_zero(digits_mlp_weights, tmp_path):
    out = tmp_path / "run"
    done = _launch("-m", "bayescompress", "compress", "--model", "mlp", "--weights", str(digits_mlp_weights),
                   "--method", "gaussian-snr", "--epochs", "2", "--finetune-epochs", "1", "--out", str(out),
                   "--quiet", "--json", processes=2)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 1 prints nothing
    assert json.loads(lines[0])["distributed"] == {"world_size": 2, "max_rank_difference": 0.0}
    assert (out / "metrics.json").is_file() and not (out / "checkpoint").exists()


def test_global_batch_must_divide_among_the_processes(digits_mlp_weights, tmp_path):
    done = subprocess.run([TORCHRUN, "--nproc-per-node", "2", "--standalone", "-m", "bayescompress",
                           "compress", "--model", "mlp", "--weights", str(digits_mlp_weights), "--out",
                           str(tmp_path / "run"), "--batch-size", "63", "--quiet"], env=_env(), capture_output=True,
                          text=True, timeout=180)
    assert done.returncode != 0
    assert "--batch-size 63 is the global batch of 2 processes" in done.stdout + done.stderr
    assert not (tmp_path / "run").exists()  # nothing left behind


def test_torchrun_stopped_by_sigterm_resumes_on_two_ranks_exactly(digits_mlp_weights, tmp_path):
    import signal
    import time

    base = ["-m", "bayescompress", "compress", "--model", "mlp", "--weights", str(digits_mlp_weights), "--method",
            "ss-gl", "--epochs", "6", "--finetune-epochs", "2", "--batch-size", "16", "--quiet"]
    torchrun = [TORCHRUN, "--standalone", "--nproc-per-node", "2"]
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    _launch(*base, "--out", str(reference), processes=2)
    process = subprocess.Popen([*torchrun, *base, "--out", str(stopped)], env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (stopped / "checkpoint" / "phase-0.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks, not at the same moment
    _, stderr = process.communicate(timeout=120)
    assert "SIGTERM received" in stderr and not (stopped / "metrics.json").exists()
    _launch("-m", "bayescompress", "compress", "--resume", str(stopped), "--quiet", processes=2)
    for name in ("masks.safetensors", "trained.safetensors", "model.safetensors"):
        left, right = load_file(str(reference / name)), load_file(str(stopped / name))
        assert all(torch.equal(left[k], right[k]) for k in left), name
    assert json.loads((stopped / "metrics.json").read_text())["resumed_from"] is not None
