"""Bad input around checkpoints and resuming: each refused with a message that names the problem and the fix,
before any work (docs/reliability.md lists these with the rest)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from bayescompress import compress
from bayescompress.compress import PipelineConfig
from bayescompress.inference import CheckpointMismatchError, TrainConfig, fit
from bayescompress.inference.checkpoint import PhaseCheckpoint, join_state, split_state
from bayescompress.inference.train import Callback
from bayescompress.io import weights_fingerprint
from bayescompress.nn import bayesianize_


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bayescompress", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _toy():
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), loader


def test_state_round_trips_through_tensors_and_json():
    state = {"a": torch.arange(3), "opt": {0: {"step": torch.tensor(2.0)}, 1: {}}, "betas": (0.9, 0.999),
             "history": [{"loss": 1.5}], "none": None}
    tensors, tree = split_state(state)
    back = join_state(tensors, json.loads(json.dumps(tree)))
    assert torch.equal(back["a"], state["a"]) and back["opt"][0]["step"] == 2.0 and 1 in back["opt"]
    assert back["betas"] == (0.9, 0.999) and back["history"] == [{"loss": 1.5}] and back["none"] is None


def test_a_callback_state_that_is_not_tensors_or_json_names_where_it_is(tmp_path):
    with pytest.raises(TypeError, match=r"cannot checkpoint a set at /callbacks"):
        PhaseCheckpoint(tmp_path, 0).save({"callbacks": {"seen": {1, 2}}})


def test_resuming_with_other_method_settings_is_refused_naming_them(tmp_path):
    model, loader = _toy()
    pipeline = PipelineConfig(quiet=True, max_accuracy_loss=1.0)
    compress(model, loader, loader, "gaussian-snr", epochs=1, pipeline=pipeline, checkpoint=tmp_path / "ck")
    with pytest.raises(CheckpointMismatchError, match=r"method\.epochs: 1 there, 2 now.*resume with the same"):
        compress(model, loader, loader, "gaussian-snr", epochs=2, pipeline=pipeline, checkpoint=tmp_path / "ck")


def test_a_checkpoint_recorded_with_a_default_spelled_out_resumes(tmp_path):
    """A checkpoint written when finetune_distill's default was an explicit 0 is of the same run as none now
    (no compute budget: no distillation); 0.5 there is another run."""
    model, loader = _toy()
    pipeline = PipelineConfig(quiet=True, max_accuracy_loss=1.0)
    first = compress(model, loader, loader, "gaussian-snr", epochs=1, pipeline=pipeline, checkpoint=tmp_path / "ck")
    record_path = tmp_path / "ck" / "run.json"
    record = json.loads(record_path.read_text())
    assert record["method"]["finetune_distill"] is None
    record["method"]["finetune_distill"] = 0.0
    record_path.write_text(json.dumps(record))
    again = compress(model, loader, loader, "gaussian-snr", epochs=1, pipeline=pipeline, checkpoint=tmp_path / "ck")
    assert again.metrics["compressed"]["accuracy"] == first.metrics["compressed"]["accuracy"]
    del record["method"]["finetune_distill"]  # written before the setting existed: its run did not distil
    record_path.write_text(json.dumps(record))
    again = compress(model, loader, loader, "gaussian-snr", epochs=1, pipeline=pipeline, checkpoint=tmp_path / "ck")
    assert again.metrics["compressed"]["accuracy"] == first.metrics["compressed"]["accuracy"]
    record["method"]["finetune_distill"] = 0.5
    record_path.write_text(json.dumps(record))
    with pytest.raises(CheckpointMismatchError, match=r"method\.finetune_distill: 0.5 there, 0.0 now"):
        compress(model, loader, loader, "gaussian-snr", epochs=1, pipeline=pipeline, checkpoint=tmp_path / "ck")


def test_a_checkpoint_folder_holding_other_files_is_refused_and_kept(tmp_path):
    model, loader = _toy()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no bayescompress checkpoint"):
        compress(model, loader, loader, "gaussian-snr", epochs=1, checkpoint=tmp_path,
                 pipeline=PipelineConfig(quiet=True))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    model, loader = _toy()
    net = bayesianize_(model)
    fit(net, loader, config=TrainConfig(epochs=1, quiet=True), checkpoint=PhaseCheckpoint(tmp_path, 0))
    wider = bayesianize_(nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3)))
    with pytest.raises(CheckpointMismatchError, match="another network"):
        fit(wider, loader, config=TrainConfig(epochs=2, quiet=True), checkpoint=PhaseCheckpoint(tmp_path, 0))


def test_a_checkpoint_with_other_callbacks_is_refused(tmp_path):
    model, loader = _toy()
    net = bayesianize_(model)
    fit(net, loader, config=TrainConfig(epochs=1, quiet=True), checkpoint=PhaseCheckpoint(tmp_path, 0))
    with pytest.raises(CheckpointMismatchError, match="callbacks"):
        fit(net, loader, config=TrainConfig(epochs=2, quiet=True), callbacks=[Callback()],
            checkpoint=PhaseCheckpoint(tmp_path, 0))


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    phase = PhaseCheckpoint(tmp_path, 0)
    phase.save({"values": torch.ones(1000)})
    tensors = next(tmp_path.glob("phase-0.*.safetensors"))
    tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        phase.load()


def test_cli_resume_of_a_folder_without_an_interrupted_run(tmp_path):
    done = _cli("compress", "--resume", str(tmp_path))
    assert done.returncode != 0 and "holds no interrupted run" in done.stderr


def test_cli_resume_refuses_other_settings_beside_it(tmp_path):
    done = _cli("compress", "--resume", str(tmp_path), "--epochs", "3")
    assert done.returncode != 0 and "give only --quiet / --json beside it, not --epochs 3" in done.stderr


def test_cli_compress_without_its_required_flags_says_resume_is_the_alternative():
    done = _cli("compress", "--model", "mlp")
    assert done.returncode == 2 and "--weights, --out" in done.stderr and "--resume RUN alone" in done.stderr


def test_a_new_run_into_an_interrupted_one_is_refused_naming_resume(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "run.json").write_text("{}")
    done = _cli("compress", "--model", "mlp", "--weights", str(tmp_path / "w.safetensors"), "--out", str(tmp_path))
    assert done.returncode == 2 and f"--resume {tmp_path}" in done.stderr and "--overwrite" in done.stderr
    assert (tmp_path / "checkpoint" / "run.json").is_file()  # nothing touched


class _PoisonInSecondEpoch(Callback):
    def on_batch_end(self, trainer, batch, loss):
        if trainer.step == trainer.steps_per_epoch + 1:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))


def test_a_nan_loss_leaves_the_last_good_checkpoint(tmp_path):
    from bayescompress.inference import NonFiniteLossError

    model, loader = _toy()
    net = bayesianize_(model)
    with pytest.raises(NonFiniteLossError, match="checkpoint its last good epoch"):
        fit(net, loader, config=TrainConfig(epochs=3, quiet=True), callbacks=[_PoisonInSecondEpoch()],
            checkpoint=PhaseCheckpoint(tmp_path, 0))
    state = PhaseCheckpoint(tmp_path, 0).load()
    assert state["epoch"] == 1 and all(torch.isfinite(t).all() for t in state["model"].values())


def test_ssvi_settings_that_would_run_no_subspace_update_say_what_to_change():
    from bayescompress.inference import SparseSubspace

    model, loader = _toy()
    net = bayesianize_(model)
    with pytest.raises(ValueError, match="no subspace update would run.*lower update_interval"):
        fit(net, loader, config=TrainConfig(epochs=1, quiet=True), callbacks=[SparseSubspace(0.5)])


def test_ssvi_settings_that_would_run_no_update_on_this_data_fail_before_any_work(tmp_path, monkeypatch):
    """compress and compare check the settings against the training batches first: no checkpoint is opened, and a
    comparison fails before its other methods' runs instead of after them."""
    from bayescompress.compare import compare
    from bayescompress.methods import GaussianSNR, SSVI

    model, loader = _toy()  # 4 batches: 100 steps between updates is more than 2 epochs hold
    monkeypatch.setattr(SSVI, "prepare", lambda *a: pytest.fail("training started"))
    pipeline = PipelineConfig(quiet=True, max_accuracy_loss=1.0)
    with pytest.raises(ValueError, match="no subspace update would run: the run has 8 steps"):
        compress(model, loader, loader, SSVI(epochs=2, update_interval=100), pipeline=pipeline,
                 checkpoint=tmp_path / "ck")
    assert not (tmp_path / "ck").exists()
    monkeypatch.setattr(GaussianSNR, "prepare", lambda *a: pytest.fail("a run started"))
    with pytest.raises(ValueError, match="ssvi: no subspace update would run"):
        compare(model, loader, loader, [GaussianSNR(epochs=1), SSVI(epochs=2, update_interval=100)],
                out=tmp_path / "cmp", pipeline=pipeline)


def test_only_a_checkpoint_without_a_saved_phase_is_discarded(tmp_path):
    from bayescompress.runs import discard_unstarted_checkpoint

    (tmp_path / "started" / "checkpoint").mkdir(parents=True)
    for name in ("run.json", "phase-0.json", "phase-0.1.safetensors"):
        (tmp_path / "started" / "checkpoint" / name).write_text("{}")
    assert not discard_unstarted_checkpoint(tmp_path / "started")  # progress: kept for --resume
    assert sorted(p.name for p in (tmp_path / "started" / "checkpoint").iterdir()) == [
        "phase-0.1.safetensors", "phase-0.json", "run.json"]
    (tmp_path / "unstarted" / "checkpoint").mkdir(parents=True)
    (tmp_path / "unstarted" / "checkpoint" / "run.json").write_text("{}")
    assert discard_unstarted_checkpoint(tmp_path / "unstarted")
    assert not (tmp_path / "unstarted" / "checkpoint").exists()
    assert discard_unstarted_checkpoint(tmp_path / "never")  # nothing there: nothing of a checkpoint left


def test_resuming_from_other_pretrained_weights_is_refused(tmp_path):
    model, loader = _toy()
    pipeline = PipelineConfig(quiet=True, max_accuracy_loss=1.0)
    compress(model, loader, loader, "gaussian-snr", epochs=1, pipeline=pipeline, checkpoint=tmp_path / "ck")
    compress(model, loader, loader, "gaussian-snr", epochs=1, pipeline=pipeline, checkpoint=tmp_path / "ck")
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-3  # same architecture, other weights
    with pytest.raises(CheckpointMismatchError, match="other pretrained weights.*the weights the run started from"):
        compress(model, loader, loader, "gaussian-snr", epochs=1, pipeline=pipeline, checkpoint=tmp_path / "ck")


def test_resuming_on_other_data_is_refused(tmp_path):
    model, loader = _toy()
    pipeline = PipelineConfig(quiet=True, max_accuracy_loss=1.0)
    compress(model, loader, loader, "gaussian-snr", epochs=1, pipeline=pipeline, checkpoint=tmp_path / "ck")
    other = [(x + 0.5, y) for x, y in loader]  # same shapes, other images
    with pytest.raises(CheckpointMismatchError, match="trained on other data.*the data set, folder and validation"):
        compress(model, other, other, "gaussian-snr", epochs=1, pipeline=pipeline, checkpoint=tmp_path / "ck")
    compress(model, loader, loader, "gaussian-snr", epochs=1, pipeline=pipeline, checkpoint=tmp_path / "ck")


def test_the_weights_fingerprint_tells_state_dicts_apart():
    model, _ = _toy()
    same = copy.deepcopy(model)
    assert weights_fingerprint(model) == weights_fingerprint(same)
    with torch.no_grad():
        same[2].bias[1] = torch.nextafter(same[2].bias[1], torch.tensor(1.0))  # one ulp
    assert weights_fingerprint(model) != weights_fingerprint(same)
    renamed = nn.Sequential(nn.Identity(), *model)  # same tensors under other names
    assert weights_fingerprint(renamed) != weights_fingerprint(model)
    as_double = copy.deepcopy(model).double()
    assert weights_fingerprint(as_double) != weights_fingerprint(model)


def test_a_resume_continues_the_run_where_it_is_now_with_the_paths_it_was_started_with(tmp_path, monkeypatch):
    from bayescompress import cli
    from bayescompress.io import write_json
    from bayescompress.folders import CHECKPOINT_DIR, INVOCATION_FILE

    started = tmp_path / "start"
    (started / "data").mkdir(parents=True)
    monkeypatch.chdir(started)
    argv = ["compress", "--model", "nets.py:build", "--weights", "w.safetensors", "--dataset", "mnist",
            "--data-dir=data", "--out", "run", "--seed", "3"]
    recorded = cli._absolute_paths(argv)
    assert recorded == ["compress", "--model", f"{started}/nets.py:build", "--weights", f"{started}/w.safetensors",
                        "--dataset", "mnist", f"--data-dir={started}/data", "--out", "run", "--seed", "3"]
    assert cli._absolute_paths(["compress", "--model", "lenet5"]) == ["compress", "--model", "lenet5"]
    # the run folder, moved elsewhere after it was interrupted, resumed from yet another working folder
    moved = tmp_path / "elsewhere" / "moved"
    (moved / CHECKPOINT_DIR).mkdir(parents=True)
    write_json(moved / INVOCATION_FILE, {"format_version": 2, "argv": recorded})
    write_json(moved / CHECKPOINT_DIR / "run.json", {"format_version": 2})
    monkeypatch.chdir(tmp_path)
    resumed = cli._resumed_invocation(["compress", "--resume", "elsewhere/moved", "--quiet"])
    assert resumed == [*recorded[:8], "--seed", "3", "--out", "elsewhere/moved", "--quiet", "--resume",
                       "elsewhere/moved"]


def test_resuming_after_the_weights_moved_says_to_put_them_back(tmp_path, capsys):
    from bayescompress.cli import main
    from bayescompress.io import write_json

    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "run.json").write_text("{}")
    write_json(run / "invocation.json", {"format_version": 2, "argv": [
        "compress", "--model", "mlp", "--weights", str(tmp_path / "moved.safetensors"), "--out", str(run)]})
    assert main(["compress", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'moved.safetensors'} does not exist" in err
    assert "a resumed run reads the files it was started with (its invocation.json): put it back there" in err


def test_a_checkpoint_folder_another_live_process_trains_in_is_refused_and_a_dead_ones_taken_over(tmp_path):
    import gc
    import socket

    from bayescompress.inference.checkpoint import OWNER_FILE, Checkpoint

    owner = tmp_path / "checkpoint" / OWNER_FILE
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner.parent.mkdir()
        owner.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        with pytest.raises(ValueError, match=f"being trained by another process \\(pid {other.pid} on"):
            Checkpoint(owner.parent)
    finally:
        other.kill()
        other.wait()
    store = Checkpoint(owner.parent)  # that process is gone: its claim is stale
    assert json.loads(owner.read_text())["pid"] == os.getpid()
    again = Checkpoint(owner.parent)  # this process again (a notebook's next run): allowed
    del store
    gc.collect()
    assert json.loads(owner.read_text())["pid"] == os.getpid()  # the earlier one's release left the live claim
    del again
    gc.collect()
    assert not owner.exists()  # released when the run is done with it


def test_overwrite_does_not_delete_the_checkpoint_of_a_run_another_process_still_trains(tmp_path, capsys):
    import socket

    from bayescompress.cli import main
    from bayescompress.inference.checkpoint import OWNER_FILE

    checkpoint = tmp_path / "run" / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "run.json").write_text("{}")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (checkpoint / OWNER_FILE).write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        code = main(["compress", "--model", "mlp", "--weights", str(tmp_path / "w.safetensors"), "--out",
                     str(tmp_path / "run"), "--overwrite", "--quiet"])
    finally:
        other.kill()
        other.wait()
    assert code == 2 and "being trained by another process" in capsys.readouterr().err
    assert (checkpoint / "run.json").is_file()


@pytest.mark.parametrize("started", [False, True])  # before its first checkpoint (only the claim), and after
def test_a_second_compress_on_the_out_of_a_run_another_process_trains_is_told_so(tmp_path, capsys, started):
    import socket

    from bayescompress.cli import main
    from bayescompress.inference.checkpoint import OWNER_FILE

    run = tmp_path / "run"
    checkpoint = run / "checkpoint"
    checkpoint.mkdir(parents=True)
    (run / "invocation.json").write_text("{}")
    if started:
        (checkpoint / "run.json").write_text("{}")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (checkpoint / OWNER_FILE).write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        # it said "not empty and not a bayescompress run folder" / "holds an interrupted run; continue it"
        code = main(["compress", "--model", "mlp", "--weights", str(tmp_path / "w.safetensors"), "--out", str(run),
                     "--quiet"])
    finally:
        other.kill()
        other.wait()
    assert code == 2 and f"being trained by another process (pid {other.pid}" in capsys.readouterr().err


def test_compress_claims_its_run_folder_before_loading_anything(tmp_path, monkeypatch):
    from bayescompress import workflows
    from bayescompress.cli import main
    from bayescompress.inference.checkpoint import OWNER_FILE

    claims = []
    monkeypatch.setattr(workflows, "compress_files", lambda *a, **k: claims.append(
        json.loads((tmp_path / "run" / "checkpoint" / OWNER_FILE).read_text())) or (_ for _ in ()).throw(
        ValueError("stop")))
    assert main(["compress", "--model", "mlp", "--weights", str(tmp_path / "w.safetensors"), "--out",
                 str(tmp_path / "run"), "--quiet"]) == 2
    assert claims[0]["pid"] == os.getpid()
    assert not (tmp_path / "run").exists()  # a refused start leaves nothing, its claim included


def test_a_refused_resume_leaves_no_claim_behind(tmp_path, capsys):
    from bayescompress.cli import main
    from bayescompress.inference.checkpoint import OWNER_FILE

    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "run.json").write_text("{}")
    (run / "invocation.json").write_text(json.dumps({"format_version": 2, "argv": [
        "compress", "--model", "mlp", "--weights", str(tmp_path / "moved.safetensors"), "--out", str(run)]}))
    assert main(["compress", "--resume", str(run), "--quiet"]) == 2
    assert "moved.safetensors" in capsys.readouterr().err
    assert not (run / "checkpoint" / OWNER_FILE).exists()  # its pid, reused, would have barred the next resume
    assert (run / "checkpoint" / "run.json").is_file()
