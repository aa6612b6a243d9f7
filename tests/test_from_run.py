"""Starting from a finished run's posterior (``compress(posterior=...)``, ``compress --from-run``): the run's
training is skipped, its state is pruned exactly as the run pruned it, a changed pruning setting gives what a
fresh run with that setting gives, and what the state cannot answer for is refused before any work."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from bayescompress import PipelineConfig, compress, methods
from bayescompress.data import load_dataset, make_loaders
from bayescompress.workflows import pretrain

QUICK = PipelineConfig(mc_samples=0, quiet=True, max_accuracy_loss=1.0, latency_budget=0.02)
# short training, no fine-tuning: what follows the training is then a function of the trained state alone
SHORT = {"epochs": 2, "finetune_epochs": 0}
SOURCE_SETTINGS = {
    "gaussian-snr": SHORT, "sparse-vd": SHORT, "turbo-vbi": SHORT, "ss-gl": SHORT, "ss-ghs": SHORT,
    "ssvi": {**SHORT, "update_interval": 10, "kl_warmup_epochs": 1}, "magnitude": {"finetune_epochs": 0},
}


@pytest.fixture(scope="module")
def digits():
    model = pretrain("mlp", "digits", epochs=10, lr=3e-3, batch_size=64, hidden=(32,), quiet=True).model
    return model, load_dataset("digits")


def _run(digits, method: str, posterior=None, **settings):
    model, splits = digits
    train, val, test = make_loaders(splits, batch_size=64)  # new loaders: each run shuffles from the same seed
    return compress(model, train, val, methods.get(method)(**settings), test_loader=test, pipeline=QUICK,
                    posterior=posterior)


def _same_network(a, b) -> None:
    assert a.masks.to_tensors().keys() == b.masks.to_tensors().keys()
    for name, mask in a.masks.to_tensors().items():
        assert torch.equal(mask, b.masks.to_tensors()[name]), name
    state_a, state_b = a.exported.state_dict(), b.exported.state_dict()
    assert state_a.keys() == state_b.keys()
    for name, tensor in state_a.items():
        assert torch.equal(tensor, state_b[name]), name


def test_every_method_declares_only_its_own_settings_as_after_training():
    for name in methods.names():
        config = methods.get(name).config_class
        assert config.after_training <= set(config.names()), name
        assert "epochs" not in config.after_training and "finetune_epochs" in config.after_training


@pytest.mark.parametrize("method", sorted(SOURCE_SETTINGS))
def test_a_run_started_from_a_runs_posterior_prunes_it_as_the_run_did(digits, method, tmp_path):
    source = _run(digits, method, **SOURCE_SETTINGS[method])
    source.save(tmp_path / "run", plots=False)
    again = _run(digits, method, posterior=tmp_path / "run")  # the run's own settings, read from its folder
    assert again.config["method"] == source.config["method"]
    _same_network(again, source)
    assert again.history == [] and again.metrics["training"]["steps"] == 0
    assert again.metrics["trained_from"] == str(tmp_path / "run")
    assert again.metrics["original_weights"] == source.metrics["original_weights"]


@pytest.mark.parametrize("method, setting, value", [
    ("sparse-vd", "within_unit_drop", 0.05),
    ("gaussian-snr", "keep_fraction", 0.04),
    ("turbo-vbi", "within_unit_drop", 0.03),
    ("sparse-vd", "target_compression", 40.0),
])
def test_a_changed_pruning_setting_gives_the_fresh_runs_network(digits, method, setting, value):
    source = _run(digits, method, **SOURCE_SETTINGS[method])
    fresh = _run(digits, method, **SOURCE_SETTINGS[method], **{setting: value})
    branched = _run(digits, method, posterior=source, **{setting: value})
    _same_network(branched, fresh)  # the rounds of target_compression fine-tune: same batches as the fresh run
    assert branched.metrics["compression_rate"] != pytest.approx(source.metrics["compression_rate"])
    assert getattr(methods.get(method).config_class(**branched.config["method"]), setting) == value


def test_fine_tuning_from_a_posterior_trains_only_the_fine_tuning(digits, tmp_path):
    source = _run(digits, "sparse-vd", **SHORT)
    source.save(tmp_path / "run", plots=False)
    run = _run(digits, "sparse-vd", posterior=tmp_path / "run", finetune_epochs=2)
    assert len(run.history) == 2 and run.metrics["training"]["steps"] > 0
    assert run.masks.kept_weights() == source.masks.kept_weights()
    # the folder keeps the loader's order after the training, so the fine-tuning sees the fresh run's batches
    _same_network(run, _run(digits, "sparse-vd", **{**SHORT, "finetune_epochs": 2}))
    model, splits = digits
    train, val, _ = make_loaders(splits, batch_size=64)
    unnamed = compress(model, train, val, posterior=source, pipeline=QUICK)  # the run's method, not the default
    assert unnamed.method == "sparse-vd" and unnamed.config["method"] == source.config["method"]
    # a folder that lost its loader order fine-tunes on other batches: said, not silent
    (tmp_path / "run" / "shuffling.safetensors").unlink()
    with pytest.warns(UserWarning, match="kept no loader order .* differs from the run's by the order alone"):
        _run(digits, "sparse-vd", posterior=tmp_path / "run", finetune_epochs=2)


def test_a_run_from_a_posterior_keeps_the_runs_seed_unless_given_one(digits):
    model, splits = digits
    train, val, _ = make_loaders(splits, batch_size=64, seed=3)
    source = compress(model, train, val, methods.get("sparse-vd")(**SHORT),
                      pipeline=dataclasses.replace(QUICK, seed=3))
    assert compress(model, train, val, posterior=source).config["pipeline"]["seed"] == 3
    assert compress(model, train, val, posterior=source, pipeline=QUICK).config["pipeline"]["seed"] == 0


def test_training_settings_other_weights_and_another_method_are_refused(digits, tmp_path):
    model, splits = digits
    train, val, test = make_loaders(splits, batch_size=64)
    source = _run(digits, "sparse-vd", **SHORT)
    with pytest.raises(ValueError, match=r"trained with epochs=2 .* asks for epochs=5"):
        _run(digits, "sparse-vd", posterior=source, epochs=5)
    # a config given whole is checked whole
    config = methods.get("sparse-vd").config_class(epochs=2, finetune_epochs=0, kl_warmup_epochs=1)
    with pytest.raises(ValueError, match=r"kl_warmup_epochs=5 .* asks for kl_warmup_epochs=1"):
        compress(model, train, val, "sparse-vd", config=config, posterior=source, pipeline=QUICK)
    with pytest.raises(ValueError, match="is a sparse-vd run"):
        _run(digits, "turbo-vbi", posterior=source)
    other = pretrain("mlp", "digits", epochs=1, batch_size=64, hidden=(32,), quiet=True).model
    with pytest.raises(ValueError, match="other weights"):
        compress(other, train, val, methods.get("sparse-vd")(), posterior=source, pipeline=QUICK)
    # the same data shuffled into another validation split, and other inputs of the same shape
    _, other_val, _ = make_loaders(load_dataset("digits", val_fraction=0.2), batch_size=64)
    with pytest.raises(ValueError, match="trained on other data"):
        compress(model, train, other_val, methods.get("sparse-vd")(), posterior=source, pipeline=QUICK)
    noisy = [(x + 0.01 * torch.randn_like(x), y) for x, y in val]
    with pytest.raises(ValueError, match=r"trained on other data.*\(1, 8, 8\).*\(1, 8, 8\)"):
        compress(model, train, noisy, methods.get("sparse-vd")(), posterior=source, pipeline=QUICK)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="metrics.json is missing"):
        _run(digits, "sparse-vd", posterior=tmp_path / "empty")
    (tmp_path / "stopped" / "checkpoint").mkdir(parents=True)  # an interrupted run: it said "metrics.json is missing"
    (tmp_path / "stopped" / "checkpoint" / "run.json").write_text("{}")
    with pytest.raises(ValueError, match=r"stopped holds a run that has not finished; finish it first"):
        _run(digits, "sparse-vd", posterior=tmp_path / "stopped")


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bayescompress", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_the_command_line_takes_the_method_and_settings_from_the_run(digits_mlp_weights, tmp_path):
    base = ["compress", "--model", "mlp", "--weights", str(digits_mlp_weights), "--quiet", "--json"]
    done = _cli(*base, "--method", "sparse-vd", "--epochs", "2", "--seed", "2", "--out", "src", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = _cli(*base, "--from-run", "src", "--within-unit-drop", "0.05", "--out", "branch", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    source, branch = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("src", "branch"))
    assert branch["method"] == "sparse-vd" and branch["trained_from"] == "src"
    assert branch["config"]["pipeline"]["seed"] == 2  # the run's seed, as its method and settings
    assert "started from the trained posterior of src" in (tmp_path / "branch" / "report.md").read_text()
    expected = {**source["config"]["method"], "within_unit_drop": 0.05}
    assert branch["config"]["method"] == expected
    assert branch["compression_rate"] > source["compression_rate"]
    # a training setting is refused before any work, and nothing is left behind
    done = _cli(*base, "--from-run", "src", "--epochs", "3", "--out", "refused", cwd=tmp_path)
    assert done.returncode == 2 and "trained with epochs=2" in done.stderr
    assert not (tmp_path / "refused").exists()
    # the source itself as --out, even with --overwrite: refused, and the source is the same run afterwards
    done = _cli(*base, "--from-run", "src", "--within-unit-drop", "0.05", "--out", "src", "--overwrite", cwd=tmp_path)
    assert done.returncode == 2 and "the new run would replace its source" in done.stderr
    assert json.loads((tmp_path / "src" / "metrics.json").read_text()) == source
    fields = {field.name for field in dataclasses.fields(methods.get("sparse-vd").config_class)}
    assert set(branch["config"]["method"]) == fields
