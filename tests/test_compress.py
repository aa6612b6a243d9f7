"""compress(): end to end on digits, the metrics.json schema, run folders, the CLI command."""

import json
import pickle

import pytest
import torch

from bayescompress.cli import main
from bayescompress.compress import PipelineConfig, compress
from bayescompress.methods import GaussianSNR, Magnitude, SpikeSlabGHS, SpikeSlabGL, TurboVBI, TurboVBIConfig
from bayescompress.data import load_dataset, make_loaders
from bayescompress.io import save_weights
from bayescompress.runs import FORMAT_VERSION, load
from bayescompress.workflows import pretrain

# the key names the issue fixes (docs/metrics-json.md documents them all)
REQUIRED_KEYS = [
    "original.accuracy", "compressed.accuracy", "compressed.nll", "compressed.ece", "compressed.brier",
    "params.total", "params.nonzero", "params.exported", "compression_rate", "macs.dense", "macs.exported",
    "architecture.exported", "latency_ratio", "export_max_abs_diff",
]


def _get(tree, dotted):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


QUICK = PipelineConfig(mc_samples=4, quiet=True)
# the spike-and-slab settings of these tests: the full ELBO, fast gate rates, all epochs
SPIKE_SLAB = dict(epochs=6, kl_warmup_epochs=1, kl_weight=1.0, prior_lr=3e-2, rho_lr=3e-2, input_gate_lr=None,
                  max_val_drop=None, finetune_epochs=5)
# the bound before the mean-field recipe: its gates fall fast at these rates (ss-gl runs with it here)
GATED = dict(slab_kl="gated", init_inclusion=0.99, within_unit_drop=None)


@pytest.fixture(scope="module")
def digits():
    splits = load_dataset("digits")
    return make_loaders(splits, batch_size=64)


@pytest.fixture(scope="module")
def pretrained():
    return pretrain("mlp", "digits", epochs=15, lr=3e-3, batch_size=64, hidden=(32,), quiet=True).model


@pytest.fixture(scope="module")
def results(pretrained, digits):
    train, val, test = digits
    recipes = {"gaussian-snr": GaussianSNR(epochs=3, prior_scale=1.0, keep_fraction=0.3, finetune_epochs=2),
               "magnitude": Magnitude(keep_fraction=0.3, finetune_epochs=2)}
    return {name: compress(pretrained, train, val, method, test_loader=test, pipeline=QUICK)
            for name, method in recipes.items()}


@pytest.mark.parametrize("method", ["gaussian-snr", "magnitude"])
def test_compress_reports_every_documented_metric(results, method):
    metrics = results[method].metrics
    for key in REQUIRED_KEYS:
        _get(metrics, key)
    assert metrics["export_max_abs_diff"] <= 1e-4
    assert metrics["params"]["exported"] < metrics["params"]["total"]
    weights_kept = metrics["weights"]["nonzero"] / metrics["weights"]["total"]
    assert weights_kept <= 0.3 + 1e-3
    assert metrics["compression_rate"] == pytest.approx(1 / weights_kept)
    assert metrics["macs"]["exported"] <= metrics["macs"]["dense"]
    assert metrics["architecture"]["exported"][-1] == 10


@pytest.fixture(scope="module")
def spike_slab_results(pretrained, digits):
    train, val, test = digits
    return {method.name: compress(pretrained, train, val, method, test_loader=test, pipeline=QUICK)
            for method in (SpikeSlabGL(**SPIKE_SLAB, **GATED), SpikeSlabGHS(**SPIKE_SLAB))}


@pytest.mark.parametrize("method", ["ss-gl", "ss-ghs"])
def test_spike_slab_methods_remove_whole_units_and_inputs_and_export_exactly(spike_slab_results, method, tmp_path):
    result = spike_slab_results[method]
    metrics = result.metrics
    for key in REQUIRED_KEYS:
        _get(metrics, key)
    hidden = metrics["architecture"]["exported"][0]
    assert hidden < 32 and metrics["architecture"]["exported"][-1] == 10  # units removed, classes kept
    first = result.masks.weight[next(iter(result.masks.weight))]
    assert not first.any(dim=0).all()  # some input features (digits' blank pixels) were gated off
    assert metrics["export_max_abs_diff"] <= 1e-4
    assert metrics["compressed"]["accuracy"] > 0.93
    assert any(key.startswith("units/") for key in result.history[0])  # the gate monitor ran
    loaded = load(result.save(tmp_path / "run"))
    assert loaded.metrics["compression_rate"] == metrics["compression_rate"]


def test_ss_ghs_recipe_also_prunes_single_weights_inside_the_surviving_units(spike_slab_results):
    result = spike_slab_results["ss-ghs"]  # its defaults: mean-field gates, within_unit_drop 0.03
    record = result.metrics["pruning"]["within_units"]
    assert record["keep_fraction"] < 1.0 and record["accuracy"] >= record["accuracy_units"] - 0.03
    first = result.masks.weight[next(iter(result.masks.weight))]
    kept_units = first.any(dim=1)
    inputs_kept = first.any(dim=0)
    # inside the block of surviving units and inputs, weights are missing too: sparsity below the unit level
    assert not first[kept_units][:, inputs_kept].all()
    assert "within_units" not in spike_slab_results["ss-gl"].metrics["pruning"]  # within_unit_drop=None: units only


@pytest.fixture(scope="module")
def turbo_result(pretrained, digits):
    train, val, test = digits
    config = TurboVBIConfig(epochs=8, pi0=0.01, finetune_epochs=5, finetune_lr=1e-3, max_val_drop=None)
    return compress(pretrained, train, val, "turbo-vbi", config=config, test_loader=test, pipeline=QUICK)


def test_turbo_vbi_prunes_weights_by_inclusion_and_exports_exactly(turbo_result, tmp_path):
    metrics = turbo_result.metrics
    for key in REQUIRED_KEYS:
        _get(metrics, key)
    assert metrics["compression_rate"] > 5
    assert metrics["compressed"]["accuracy"] > 0.9
    assert metrics["export_max_abs_diff"] <= 1e-4
    assert metrics["architecture"]["exported"][-1] == 10
    # nothing with pi~ < 1/2 survives (structure propagation may remove more)
    for name, probabilities in turbo_result.inclusion.items():
        kept = turbo_result.masks.weight[name]
        assert not kept[probabilities < 0.5].any()
    first = next(iter(turbo_result.history))
    assert any(key.startswith("turbo/") and key.endswith("/active") for key in first)
    loaded = load(turbo_result.save(tmp_path / "run"))
    assert loaded.inclusion.keys() == turbo_result.inclusion.keys()
    torch.testing.assert_close(next(iter(loaded.inclusion.values())), next(iter(turbo_result.inclusion.values())))


def test_cli_compress_turbo_vbi_and_plot_its_inclusion(tmp_path, capsys):
    weights = tmp_path / "mlp.safetensors"
    assert main(["pretrain", "--model", "mlp", "--epochs", "3", "--hidden", "16", "--out", str(weights),
                 "--quiet"]) == 0
    code = main(["compress", "--model", "mlp", "--weights", str(weights), "--method", "turbo-vbi", "--epochs", "2",
                 "--pi0", "0.01", "--mrf-graph", "rows", "--finetune-epochs", "1", "--out", str(tmp_path / "run"),
                 "--quiet", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["method"] == "turbo-vbi"
    assert load(tmp_path / "run").metrics["config"]["method"]["mrf_graph"] == "rows"
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert "inclusion.png" in capsys.readouterr().out
    assert (tmp_path / "run" / "plots" / "inclusion.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("field, value", [("pi0", 0.0), ("mrf_p11", 1.0), ("mrf_p01", -0.2),
                                          ("mrf_graph", "ring"), ("turbo_updates_per_epoch", 0)])
def test_bad_turbo_settings_are_refused_before_any_work(field, value):
    with pytest.raises(ValueError, match=field):
        TurboVBI(**{field: value})


def test_spike_slab_early_stopping_prunes_an_earlier_state_within_the_budget(pretrained, digits,
                                                                          spike_slab_results):
    train, val, test = digits
    # the gated bound, whose gates fall fast at these rates, so the accuracy drops within the 6 epochs
    method = SpikeSlabGL(**{**SPIKE_SLAB, **GATED, "max_val_drop": 0.0, "val_checks_per_epoch": 2})
    result = compress(pretrained, train, val, method, test_loader=test, pipeline=QUICK)
    vi = [r for r in result.history if "early_stopping/kept_step" in r]
    kept = vi[-1]["early_stopping/kept_step"]
    assert len(vi) <= 6 and kept < 6 * len(train)  # the budget of 0 stopped the pruning phase early
    full = spike_slab_results["ss-gl"].metrics  # same recipe, all 6 epochs
    assert result.metrics["compression_rate"] < full["compression_rate"]
    assert result.metrics["architecture"]["exported"][0] > full["architecture"]["exported"][0]


def test_compress_leaves_the_input_model_untouched(pretrained, results):
    assert all(type(m).__name__ in ("Sequential", "Flatten", "Linear", "ReLU") for m in pretrained.modules())


def test_exported_network_matches_the_masked_network_on_held_out_data(results, digits):
    _, _, test = digits
    result = results["gaussian-snr"]
    x = next(iter(test))[0]
    result.compressed.eval()
    assert (result.exported(x) - result.compressed(x)).abs().max() <= 1e-4
    bayesian = result.export(bayesian=True).eval()
    assert (bayesian(x) - result.compressed(x)).abs().max() <= 1e-4


def test_save_then_load_reproduces_outputs_exactly(results, digits, tmp_path):
    _, _, test = digits
    result = results["gaussian-snr"]
    result.save(tmp_path / "run")
    assert {p.name for p in (tmp_path / "run").iterdir()} == {
        "model.safetensors", "posterior.safetensors", "probe.safetensors", "architecture.json",
        "masks.safetensors", "metrics.json", "report.md", "history.json", "trained.safetensors",
        "scores.safetensors", "shuffling.safetensors", "plots"}
    run = load(tmp_path / "run")
    x = next(iter(test))[0]
    assert torch.equal(run.model(x), result.exported(x))
    assert run.metrics["compression_rate"] == result.metrics["compression_rate"]
    assert all(torch.equal(run.masks.weight[k], v) for k, v in result.masks.weight.items())


def test_saving_over_an_existing_run_needs_overwrite_and_then_replaces_it_whole(results, tmp_path):
    results["magnitude"].save(tmp_path / "run")
    with pytest.raises(ValueError, match="already holds a bayescompress run; pass overwrite=True"):
        results["gaussian-snr"].save(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["method"] == "magnitude"
    results["gaussian-snr"].save(tmp_path / "run", overwrite=True)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["method"] == "gaussian-snr"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_saving_into_a_folder_of_other_work_is_refused_and_its_files_survive(results, tmp_path):
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "notes.txt").write_text("an hour of work")
    (experiments / "older-run").mkdir()
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="is not empty and is not a bayescompress run folder"):
            results["magnitude"].save(experiments, overwrite=overwrite)
    assert (experiments / "notes.txt").read_text() == "an hour of work"
    assert sorted(p.name for p in experiments.iterdir()) == ["notes.txt", "older-run"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments"]  # no staging folder left behind
    results["magnitude"].save(experiments / "run")  # a new folder inside it is fine
    assert (experiments / "notes.txt").read_text() == "an hour of work"


def test_a_run_folder_and_its_files_get_the_permissions_of_the_umask_or_of_the_folder_there(results, tmp_path):
    """Written through private temporary files and folders, they came out 0600 / 0700 whatever the umask:
    a colleague could not read a shared run."""
    import os
    import stat

    previous = os.umask(0o022)
    try:
        folder = results["magnitude"].save(tmp_path / "fresh", plots=False)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
        assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}
        (tmp_path / "mine").mkdir(mode=0o750)
        os.chmod(tmp_path / "mine", 0o750)
        assert stat.S_IMODE(results["magnitude"].save(tmp_path / "mine", plots=False).stat().st_mode) == 0o750
    finally:
        os.umask(previous)


def test_a_run_saved_to_a_symbolic_link_goes_where_it_points_and_the_link_stays(results, tmp_path):
    (tmp_path / "disk").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "disk")
    results["magnitude"].save(tmp_path / "link", plots=False)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "disk" / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "link"]  # no hidden leftovers


def test_saving_below_an_existing_file_is_a_clear_error(results, tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        results["magnitude"].save(tmp_path / "taken" / "run")


def test_a_pickle_in_a_run_folder_is_refused(results, tmp_path):
    folder = results["magnitude"].save(tmp_path / "run")
    with open(folder / "model.safetensors", "wb") as handle:
        pickle.dump({"0.weight": torch.zeros(1)}, handle)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load(folder)


def test_a_run_folder_from_a_newer_format_is_refused(results, tmp_path):
    folder = results["magnitude"].save(tmp_path / "run")
    record = json.loads((folder / "architecture.json").read_text())
    record["format_version"] = FORMAT_VERSION + 1
    (folder / "architecture.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="upgrade bayescompress"):
        load(folder)


@pytest.mark.parametrize("method, field, value", [
    (GaussianSNR, "keep_fraction", 1.0), (GaussianSNR, "keep_fraction", 0.0), (GaussianSNR, "prior_scale", 0.0),
    (Magnitude, "finetune_epochs", -1), (GaussianSNR, "level", "filter"), (SpikeSlabGL, "prior_inclusion", 1.0),
    (SpikeSlabGHS, "temperature", 0.0), (SpikeSlabGL, "prior_lr", 0.0), (TurboVBI, "rho_lr", -1.0),
    (SpikeSlabGHS, "input_gate_lr", 0.0), (GaussianSNR, "max_val_drop", -0.01), (TurboVBI, "max_val_drop", 1.5),
    (SpikeSlabGL, "val_checks_per_epoch", 0), (SpikeSlabGHS, "global_scale", 0.0), (TurboVBI, "bp_damping", 1.0),
])
def test_bad_setting_names_the_field(method, field, value):
    with pytest.raises(ValueError, match=field):
        method(**{field: value})


def test_unknown_method_is_refused_and_the_registered_ones_listed(pretrained, digits):
    train, val, _ = digits
    with pytest.raises(ValueError, match="unknown method 'turbo-vb'; registered methods: gaussian-snr, ss-gl"):
        compress(pretrained, train, val, "turbo-vb")


def test_cli_compress_with_a_reference_model_and_json(tmp_path, capsys):
    weights = tmp_path / "mlp.safetensors"
    assert main(["pretrain", "--model", "mlp", "--epochs", "3", "--hidden", "16", "--out", str(weights),
                 "--quiet"]) == 0
    code = main(["compress", "--model", "mlp", "--weights", str(weights), "--dataset", "digits",
                 "--method", "magnitude", "--keep-fraction", "0.5", "--finetune-epochs", "1",
                 "--out", str(tmp_path / "run"), "--quiet", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["compression_rate"] == pytest.approx(2.0, rel=0.05)
    assert load(tmp_path / "run").metrics["compression_rate"] == printed["compression_rate"]


def test_cli_compress_with_a_user_factory_and_a_torch_save_state_dict(tmp_path, capsys, monkeypatch):
    (tmp_path / "usernet.py").write_text(
        "import torch.nn as nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    model = importlib.import_module("usernet").build()
    torch.save(model.state_dict(), tmp_path / "user.pt")
    code = main(["compress", "--model", "usernet:build", "--weights", str(tmp_path / "user.pt"),
                 "--method", "gaussian-snr", "--epochs", "1", "--finetune-epochs", "0", "--keep-fraction", "0.5",
                 "--out", str(tmp_path / "run"), "--quiet", "--json"])
    assert code == 0
    assert load(tmp_path / "run").model[1].in_features == 64


def test_cli_compress_with_weights_that_do_not_fit(tmp_path, capsys):
    save_weights({"1.weight": torch.zeros(3, 3)}, tmp_path / "bad.safetensors")
    code = main(["compress", "--model", "mlp", "--weights", str(tmp_path / "bad.safetensors"),
                 "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    assert "'1.weight'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cli_compresses_a_non_sequential_model_and_saves_a_run_that_loads(tmp_path, capsys, monkeypatch):
    (tmp_path / "resnet_like.py").write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(24, 10)\n"
        "        self.body = nn.Linear(64, 24)\n"
        "    def forward(self, x):\n"
        "        h = self.body(x.flatten(1)).relu()\n"
        "        return self.fc(h + h.relu())\n"
        "def build():\n"
        "    return Net()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    torch.save(importlib.import_module("resnet_like").build().state_dict(), tmp_path / "w.pt")
    code = main(["compress", "--model", "resnet_like:build", "--weights", str(tmp_path / "w.pt"),
                 "--method", "gaussian-snr", "--epochs", "1", "--finetune-epochs", "0", "--keep-fraction", "0.3",
                 "--out", str(tmp_path / "run"), "--quiet", "--json"])
    assert code == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = load(tmp_path / "run")  # rebuilt from the factory named in the run folder
    assert run.architecture["source"] == {"kind": "factory", "spec": "resnet_like:build"}
    assert run.model.fc.out_features == 10  # the head, registered first, keeps its classes
    assert printed["architecture"]["exported"] == [run.model.fc.out_features, run.model.body.out_features]


def test_empty_validation_loader_is_a_clear_error(pretrained, digits):
    train, _, _ = digits
    with pytest.raises(ValueError, match="val_loader yields no batch"):
        compress(pretrained, train, [], "magnitude")


@pytest.mark.parametrize("method", [Magnitude(keep_fraction=0.5, finetune_epochs=1, target_macs=600, macs_rounds=2),
                                    GaussianSNR(epochs=2, prior_scale=1.0, keep_fraction=0.5, finetune_epochs=1,
                                                target_macs=600, macs_rounds=2)],
                         ids=["magnitude", "gaussian-snr"])
@pytest.mark.filterwarnings("ignore::bayescompress.compress.AccuracyLossWarning")
def test_a_compute_budget_removes_units_and_inputs_until_the_export_fits(pretrained, digits, method, tmp_path):
    train, val, test = digits
    result = compress(pretrained, train, val, method, test_loader=test, pipeline=QUICK)
    record = result.metrics["pruning"]["macs_budget"]
    assert record["start_macs"] > 600 >= result.metrics["macs"]["exported"]
    assert [r["macs"] for r in record["rounds"]][-1] >= result.metrics["macs"]["exported"]
    assert len(record["rounds"]) == 2 and record["rounds"][0]["macs"] > record["rounds"][1]["macs"]
    assert "SelectInputs" in [type(m).__name__ for m in result.export()]  # pixels gathered away
    assert result.metrics["compressed"]["accuracy"] > 0.5  # one epoch per round keeps it working
    run = load(result.save(tmp_path / "run"))
    x = next(iter(test))[0]
    assert torch.allclose(run.model(x), result.export()(x), atol=1e-5)


@pytest.mark.filterwarnings("ignore::bayescompress.compress.AccuracyLossWarning")
def test_a_compute_budget_distils_its_fine_tuning_from_the_original_by_default(pretrained, digits, monkeypatch):
    from bayescompress.methods import base

    seen = []
    real_fit = base.fit

    def recording_fit(network, train, val, config, *args, **kwargs):
        seen.append((config.distill, kwargs.get("teacher") is not None))
        return real_fit(network, train, val, config, *args, **kwargs)

    monkeypatch.setattr(base, "fit", recording_fit)
    train, val, _ = digits
    compress(pretrained, train, val, Magnitude(keep_fraction=0.5, finetune_epochs=1, target_macs=600, macs_rounds=2),
             pipeline=QUICK)
    assert seen == [(base.BUDGET_DISTILL, True)] * 3  # the two rounds' epochs and the fine-tuning
    seen.clear()
    compress(pretrained, train, val, Magnitude(keep_fraction=0.5, finetune_epochs=1), pipeline=QUICK)
    assert seen == [(0.0, False)]  # no budget: the labels only
    seen.clear()
    compress(pretrained, train, val, Magnitude(keep_fraction=0.5, finetune_epochs=1, target_macs=600, macs_rounds=2,
                                               finetune_distill=0.0), pipeline=QUICK)
    assert seen == [(0.0, False)] * 3  # an explicit 0 turns it off


def test_a_compute_budget_below_the_smallest_export_fails_before_training(pretrained, digits, monkeypatch,
                                                                         tmp_path):
    """The pretrained MLP is 64 -> 32 -> 10: its smallest export reads one pixel into one hidden unit and that
    unit into the 10 outputs, 1 + 10 = 11 MACs. Refused before a checkpoint is opened, so the corrected call
    with the same checkpoint folder is not taken for another run."""
    train, val, _ = digits
    monkeypatch.setattr(GaussianSNR, "prepare", lambda *a: pytest.fail("training started"))
    with pytest.raises(ValueError, match=r"target_macs 5 is below the least .* 11 MACs .*give target_macs >= 11"):
        compress(pretrained, train, val, GaussianSNR(target_macs=5), pipeline=QUICK, checkpoint=tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_a_compute_budget_on_a_network_without_a_cost_model_fails_before_training(pretrained, digits, monkeypatch):
    from bayescompress.pruning import UnsupportedGraphError

    class TwoPaths(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(64, 10), torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.a(x.flatten(1)) + self.b(x.flatten(1))

    train, val, _ = digits
    monkeypatch.setattr(GaussianSNR, "prepare", lambda *a: pytest.fail("training started"))
    with pytest.raises(UnsupportedGraphError, match="target_macs needs a sequential network"):
        compress(TwoPaths(), train, val, GaussianSNR(target_macs=100), pipeline=QUICK)


@pytest.mark.parametrize("network, message", [
    (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)),
     r"cannot run on the data: a validation batch of float32 inputs of shape \(8, 1, 8, 8\).*network whose input "
     r"matches"),
    (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)),
     r"the validation data has label 9 but the model gives 3 outputs per input.*at least 10"),
    (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
     r"a validation batch of int64 inputs .* the inputs are integers, which only an nn.Embedding takes"),
], ids=["input-shape", "too-few-outputs", "integer-inputs"])
def test_a_network_that_does_not_fit_the_data_is_refused_before_any_work(digits, network, message, tmp_path):
    train, val, _ = digits
    if "integer" in message:  # images stored as integers, for a network that takes floats
        val = [(x.long(), y) for x, y in val]
    with pytest.raises(ValueError, match=message):
        compress(network, train, val, Magnitude(keep_fraction=0.5), pipeline=QUICK, checkpoint=tmp_path / "ck")
    assert not (tmp_path / "ck").exists()  # nothing a later run would take for an interrupted one


def test_a_label_beyond_the_outputs_anywhere_in_memory_is_refused_before_any_work(digits, monkeypatch):
    from torch.utils.data import DataLoader, TensorDataset

    train, val, test = digits
    x, y = test.dataset.tensors
    only_three = [(xb, yb % 3) for xb, yb in val]  # the first validation batch fits a 3-class network
    labels = y % 3
    labels[-1] = 6  # one label, in the last test batch
    beyond = DataLoader(TensorDataset(x, labels), batch_size=64)
    monkeypatch.setattr(Magnitude, "prepare", lambda *a: pytest.fail("training started"))
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    with pytest.raises(ValueError, match=r"the test data has label 6 but the model gives 3 outputs"):
        compress(network, [(xb, yb % 3) for xb, yb in train], only_three, Magnitude(keep_fraction=0.5),
                 test_loader=beyond, pipeline=QUICK)
    # labels a collate_fn of one's own maps into range are the loader's business: not read from the dataset
    remapped = DataLoader(TensorDataset(x, labels), batch_size=64,
                          collate_fn=lambda items: (torch.stack([i[0] for i in items]),
                                                    torch.stack([i[1] for i in items]) % 3))
    from bayescompress.compress import _labels_in_memory

    assert set(_labels_in_memory(test_loader=remapped, other=beyond)) == {"other"}


def test_an_empty_test_loader_is_refused_before_any_work(digits, monkeypatch):
    train, val, _ = digits
    monkeypatch.setattr(Magnitude, "prepare", lambda *a: pytest.fail("training started"))
    with pytest.raises(ValueError, match="test_loader yields no batch"):
        compress(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), train, val,
                 Magnitude(keep_fraction=0.5), test_loader=[], pipeline=QUICK)


def test_a_float64_network_is_refused_before_any_work(digits):
    train, val, _ = digits
    with pytest.raises(ValueError, match=r"torch.float64 parameters; compress trains and exports float32.*model.float"):
        compress(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).double(), train, val,
                 Magnitude(keep_fraction=0.5), pipeline=QUICK)


def test_a_network_with_a_frozen_layer_is_refused_naming_it(digits):
    train, val, _ = digits
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    net[1].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"layer 1 has frozen parameters.*requires_grad_\(True\)"):
        compress(net, train, val, "ssvi", pipeline=QUICK)
