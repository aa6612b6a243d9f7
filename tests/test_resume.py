"""A compress run killed with SIGKILL (or stopped with SIGTERM) and resumed ends exactly where the
uninterrupted run ends: same masks, posterior, history and metrics, for every method."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bayescompress import methods
from helpers.method_kinds import ONE_PER_KIND

# a few epochs of every phase with small batches, so the kill lands inside training
SHORT = {"magnitude": ["--finetune-epochs", "4"]}
COMMON = ["--epochs", "4", "--finetune-epochs", "3", "--batch-size", "32"]
# measured, so never equal between two runs
VOLATILE = {"latency", "latency_ratio", "wall_s", "resumed_from"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bayescompress", *args]


def _compress_args(weights: Path, method: str, out: Path) -> list[str]:
    return ["compress", "--model", "mlp", "--weights", str(weights), "--method", method, "--out", str(out),
            "--quiet", *SHORT.get(method, COMMON)]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _stable(record):
    if isinstance(record, dict):
        return {k: _stable(v) for k, v in record.items() if k not in VOLATILE}
    if isinstance(record, list):
        return [_stable(v) for v in record]
    return record


def _assert_same_run(a: Path, b: Path) -> None:
    for name in ("masks.safetensors", "model.safetensors", "trained.safetensors"):
        left, right = load_file(str(a / name)), load_file(str(b / name))
        assert left.keys() == right.keys()
        for key in left:
            assert torch.equal(left[key], right[key]), f"{name}: {key} differs"
    if (a / "posterior.safetensors").is_file():
        left, right = load_file(str(a / "posterior.safetensors")), load_file(str(b / "posterior.safetensors"))
        assert all(torch.equal(left[k], right[k]) for k in left)
    for name in ("metrics.json", "history.json"):
        assert _stable(json.loads((a / name).read_text())) == _stable(json.loads((b / name).read_text())), name


def _kill_during_training(args: list[str], out: Path, sig: int, after_phase: int = 0) -> subprocess.CompletedProcess:
    """Start the run, wait for a checkpoint of ``after_phase`` and send ``sig``; returns the finished process."""
    process = subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    record = out / "checkpoint" / f"phase-{after_phase}.json"
    deadline = time.monotonic() + 120
    while not record.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture
def weights(digits_mlp_weights) -> Path:
    return digits_mlp_weights


@pytest.mark.parametrize("method", ONE_PER_KIND)
def test_sigkill_then_resume_ends_like_the_uninterrupted_run(method, weights, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    # the uninterrupted run beside the one killed: one core each
    uninterrupted = subprocess.Popen(_cli(*_compress_args(weights, method, reference)), env=_env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # magnitude trains in one phase (the fine-tuning); the others are killed in their second
    phase = 0 if method == "magnitude" else 1
    stopped = _kill_during_training(_compress_args(weights, method, killed), killed, signal.SIGKILL, phase)
    assert uninterrupted.wait(timeout=300) == 0
    assert stopped.returncode == -signal.SIGKILL
    assert (killed / "checkpoint" / "run.json").is_file() and not (killed / "metrics.json").exists()
    resumed = subprocess.run(_cli("compress", "--resume", str(killed), "--quiet"), env=_env(), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert not (killed / "checkpoint").exists()  # the finished run replaced it
    # it continued from the checkpoint (a restart would end the same way, deterministically)
    resumed_from = json.loads((killed / "metrics.json").read_text())["resumed_from"]
    assert resumed_from is not None and resumed_from["phase"] >= phase
    _assert_same_run(reference, killed)


def test_sigterm_checkpoints_mid_epoch_and_resumes_identically(weights, tmp_path):
    reference = tmp_path / "reference"
    args = ["--epochs", "6", "--finetune-epochs", "2", "--batch-size", "16"]
    base = ["compress", "--model", "mlp", "--weights", str(weights), "--method", "ss-gl", "--quiet", *args]
    uninterrupted = subprocess.Popen(_cli(*base, "--out", str(reference)), env=_env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
    assert uninterrupted.wait(timeout=300) == 0
    # the signal races the run: under load it can land between batches at an epoch's end, which stops "after the
    # epoch" (a valid stop, resumed identically too); a few tries make a stop inside an epoch all but certain
    batches = []
    for attempt in range(4):
        stopped_run = tmp_path / f"stopped{attempt}"
        stopped = _kill_during_training([*base, "--out", str(stopped_run)], stopped_run, signal.SIGTERM)
        assert stopped.returncode == 130, stopped.stderr
        assert "--resume" in stopped.stderr and "SIGTERM" in stopped.stderr
        resumed = subprocess.run(_cli("compress", "--resume", str(stopped_run), "--quiet"), env=_env(),
                                 capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        resumed_from = json.loads((stopped_run / "metrics.json").read_text())["resumed_from"]
        assert resumed_from["phase"] == 0
        _assert_same_run(reference, stopped_run)
        batches.append(resumed_from["batch"])
        if resumed_from["batch"] > 0:
            break
    assert batches[-1] > 0, f"every try stopped at an epoch's end (batches {batches})"  # inside an epoch


def test_compare_killed_inside_a_run_resumes_it_from_its_checkpoint(weights, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    base = ["compare", "--model", "mlp", "--weights", str(weights), "--methods", "ss-gl", "--quiet", "--set",
            "ss-gl.epochs=4", "ss-gl.finetune_epochs=3", "--batch-size", "32"]
    uninterrupted = subprocess.Popen(_cli(*base, "--out", str(reference)), env=_env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
    run = killed / "ss-gl" / "seed0"
    stopped = _kill_during_training([*base, "--out", str(killed)], run, signal.SIGKILL, 1)
    assert uninterrupted.wait(timeout=300) == 0
    assert stopped.returncode == -signal.SIGKILL and not (run / "metrics.json").exists()
    refused = subprocess.run(_cli(*base, "--out", str(killed)), env=_env(), capture_output=True, text=True)
    assert refused.returncode == 2 and "interrupted run" in refused.stderr and "--resume" in refused.stderr
    resumed = subprocess.run(_cli(*base, "--out", str(killed), "--resume"), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "metrics.json").read_text())["resumed_from"]["phase"] == 1
    _assert_same_run(reference / "ss-gl" / "seed0", run)


def test_the_methods_the_slow_tests_cover_are_registered():
    assert set(ONE_PER_KIND) <= set(methods.names())


def test_a_run_killed_between_compute_budget_rounds_resumes_to_the_same_units(weights, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    budget = ["--target-macs", "1500", "--macs-rounds", "3"]
    uninterrupted = subprocess.Popen(_cli(*_compress_args(weights, "gaussian-snr", reference), *budget), env=_env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # phase 2 is the second removal round: the first round's units were removed before the kill
    stopped = _kill_during_training([*_compress_args(weights, "gaussian-snr", killed), *budget], killed,
                                    signal.SIGKILL, after_phase=2)
    assert uninterrupted.wait(timeout=300) == 0
    assert stopped.returncode == -signal.SIGKILL
    resumed = subprocess.run(_cli("compress", "--resume", str(killed), "--quiet"), env=_env(), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((killed / "metrics.json").read_text())["resumed_from"]["phase"] >= 2
    assert json.loads((killed / "metrics.json").read_text())["macs"]["exported"] <= 1500
    _assert_same_run(reference, killed)
