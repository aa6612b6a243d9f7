"""compare: one run per method and seed from the same network and data order, the table's statistics against
the runs, resume after a kill, and the bad inputs."""

import copy
import dataclasses
import importlib
import json
import math
import shutil

import pytest
import torch

from bayescompress import PipelineConfig, compress
from bayescompress.cli import main
from bayescompress.compare import compare
from bayescompress.data import load_dataset, make_loaders
from bayescompress.methods import GaussianSNR, Magnitude
from bayescompress.workflows import pretrain

QUICK = PipelineConfig(mc_samples=2, quiet=True, max_accuracy_loss=1.0, latency_budget=0.02)


@pytest.fixture(scope="module")
def pretrained():
    return pretrain("mlp", "digits", epochs=10, lr=3e-3, batch_size=64, hidden=(32,), quiet=True).model


def loaders(seed=0):
    return make_loaders(load_dataset("digits"), batch_size=64, seed=seed)


def quick_methods():
    return [GaussianSNR(epochs=2, keep_fraction=0.3, finetune_epochs=1), Magnitude(keep_fraction=0.3, finetune_epochs=1)]


@pytest.fixture(scope="module")
def comparison(pretrained, tmp_path_factory):
    train, val, test = loaders()
    out = tmp_path_factory.mktemp("cmp") / "cmp"
    return compare(pretrained, train, val, quick_methods(), seeds=[0, 1], test_loader=test, out=out, pipeline=QUICK)


def test_every_method_and_seed_is_a_run_folder_and_the_table_is_their_mean_and_std(comparison):
    out = comparison.out
    rows = {row["method"]: row for row in comparison.summary()}
    assert set(rows) == {"gaussian-snr", "magnitude"}
    for name, row in rows.items():
        saved = [json.loads((out / name / f"seed{s}" / "metrics.json").read_text()) for s in (0, 1)]
        accuracies = [m["compressed"]["accuracy"] for m in saved]
        assert row["accuracy"]["values"] == accuracies
        assert row["accuracy"]["mean"] == pytest.approx(sum(accuracies) / 2)
        assert row["accuracy"]["std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / math.sqrt(2))
        assert row["compression"]["mean"] == pytest.approx(sum(m["compression_rate"] for m in saved) / 2)
    table = (out / "comparison.md").read_text()
    assert table.startswith("Original network (test data): accuracy") and "metrics on the test data" in table
    assert "| gaussian-snr | 2 |" in table and "| magnitude | 2 |" in table and " ± " in table
    lines = (out / "comparison.csv").read_text().splitlines()
    assert lines[0].startswith("method,seeds,accuracy_mean,accuracy_std") and len(lines) == 3
    assert json.loads((out / "comparison.json").read_text())["rows"][0]["method"] == "gaussian-snr"


def test_each_run_is_the_run_compress_makes_alone_with_that_seed(pretrained, comparison):
    """Seed k's run sees the data order of loaders made with seed k (the command line's --seed k), whatever
    order the comparison's loader had reached: it equals a fresh compress call on such loaders."""
    train, val, test = loaders(seed=1)
    alone = compress(pretrained, train, val, quick_methods()[0], test_loader=test,
                     pipeline=PipelineConfig(**{**QUICK.__dict__, "seed": 1}))
    assert comparison.runs["gaussian-snr"][1]["compressed"]["nll"] == alone.metrics["compressed"]["nll"]
    assert comparison.runs["gaussian-snr"][1]["compression_rate"] == alone.metrics["compression_rate"]


def test_seeds_differ_in_their_data_order_also_for_a_method_without_noise(comparison):
    """Magnitude pruning draws nothing at random but the batch order of its fine-tuning: its seeds' runs differ."""
    histories = [json.loads((comparison.out / "magnitude" / f"seed{s}" / "history.json").read_text())["history"]
                 for s in (0, 1)]
    assert histories[0][0]["loss"] != histories[1][0]["loss"]


def test_resume_keeps_the_finished_runs_and_runs_only_the_missing_one(pretrained, comparison, monkeypatch):
    out = comparison.out
    kept = out / "gaussian-snr" / "seed0" / "metrics.json"
    before = kept.stat().st_mtime_ns
    shutil.rmtree(out / "magnitude" / "seed1")  # as if the comparison was killed during that run
    calls = []
    module = importlib.import_module("bayescompress.compare")  # the package attribute is the function

    real = module.compress
    monkeypatch.setattr(module, "compress", lambda *a, **k: calls.append(k["pipeline"].seed) or real(*a, **k))
    train, val, test = loaders()
    again = compare(pretrained, train, val, quick_methods(), seeds=[0, 1], test_loader=test, out=out,
                    resume=True, pipeline=QUICK)
    assert calls == [1]
    assert kept.stat().st_mtime_ns == before
    assert again.summary()[1]["accuracy"]["values"] == comparison.summary()[1]["accuracy"]["values"]


def test_a_folder_with_runs_is_refused_without_resume_and_with_other_settings(pretrained, comparison):
    train, val, _ = loaders()
    with pytest.raises(ValueError, match="resume"):
        compare(pretrained, train, val, quick_methods(), seeds=[0], out=comparison.out, pipeline=QUICK)
    with pytest.raises(ValueError, match="keep_fraction: 0.3 there, 0.5 now"):
        compare(pretrained, train, val, [Magnitude(keep_fraction=0.5, finetune_epochs=1)], seeds=[0],
                out=comparison.out, resume=True, pipeline=QUICK)


def test_a_folder_of_another_comparison_is_refused_before_its_table_is_replaced(pretrained, comparison):
    """Another method set into the folder, without a flag, replaced the table of the runs there."""
    train, val, _ = loaders()
    table = (comparison.out / "comparison.md").read_text()
    with pytest.raises(ValueError, match=r"runs of another comparison \(.*magnitude/seed1.*\), which its table"):
        compare(pretrained, train, val, [quick_methods()[1]], seeds=[2], out=comparison.out, pipeline=QUICK)
    assert (comparison.out / "comparison.md").read_text() == table
    assert not (comparison.out / "magnitude" / "seed2").exists()


def test_a_run_folder_holding_files_of_the_user_is_refused_before_any_training(pretrained, comparison, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(comparison.out, out)
    (out / "magnitude" / "seed0" / "NOTES.txt").write_text("mine")
    train, val, _ = loaders()
    module = importlib.import_module("bayescompress.compare")
    with pytest.raises(ValueError, match=r"seed0 holds files compare did not write \(NOTES.txt\)"):
        module.compare(pretrained, train, val, quick_methods(), seeds=[0, 1], out=out, overwrite=True,
                       pipeline=QUICK)
    assert not (out / "magnitude" / "seed0" / "checkpoint").exists()  # nothing trained, nothing left


def test_resume_continues_an_interrupted_overwrite_over_a_finished_run_of_other_settings(pretrained, comparison,
                                                                                         tmp_path):
    """An --overwrite killed mid-run leaves its checkpoint beside the finished run it replaces; --resume must
    not hold the old run's settings against it (its checkpoint records the settings it runs with)."""
    module = importlib.import_module("bayescompress.compare")
    out = tmp_path / "copy"
    shutil.copytree(comparison.out, out)
    other = {"magnitude": Magnitude(keep_fraction=0.5, finetune_epochs=1)}
    train, val, _ = loaders()
    with pytest.raises(ValueError, match="keep_fraction: 0.3 there, 0.5 now"):
        module._check_resumable(out, other, [0], pretrained, val, QUICK)
    (out / "magnitude" / "seed0" / "checkpoint").mkdir()
    (out / "magnitude" / "seed0" / "checkpoint" / "run.json").write_text("{}")
    module._check_resumable(out, other, [0], pretrained, val, QUICK)  # the interrupted run's own checkpoint decides


def test_resume_refuses_kept_runs_made_on_other_data_or_from_other_weights(pretrained, comparison):
    train, val, _ = loaders()
    other_val = [(x + 0.5, y) for x, y in val]  # same shapes, other images
    with pytest.raises(ValueError, match="was run on other data: its first validation inputs differ"):
        compare(pretrained, train, other_val, [quick_methods()[1]], seeds=[0], out=comparison.out, resume=True,
                pipeline=QUICK)
    other = copy.deepcopy(pretrained)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(ValueError, match="was run from other pretrained weights"):
        compare(other, train, val, [quick_methods()[1]], seeds=[0], out=comparison.out, resume=True, pipeline=QUICK)


def test_resume_accepts_a_run_saved_before_a_setting_existed_when_the_setting_is_at_its_default(pretrained, comparison):
    metrics_path = comparison.out / "magnitude" / "seed0" / "metrics.json"
    saved = json.loads(metrics_path.read_text())
    del saved["config"]["method"]["scope"]  # as if the run predated the setting (now at its default, layer)
    metrics_path.write_text(json.dumps(saved))
    train, val, test = loaders()
    again = compare(pretrained, train, val, [quick_methods()[1]], seeds=[0], test_loader=test, out=comparison.out,
                    resume=True, pipeline=QUICK, keep_fractions=None)
    assert again.runs["magnitude"][0]["compression_rate"] == saved["compression_rate"]
    with pytest.raises(ValueError, match="scope: None there, 'global' now"):
        compare(pretrained, train, val, [Magnitude(keep_fraction=0.3, finetune_epochs=1, scope="global")],
                seeds=[0], out=comparison.out, resume=True, pipeline=QUICK)


def test_resume_reads_a_setting_by_what_it_resolves_to(pretrained, comparison, tmp_path):
    """finetune_distill none is 0 without a compute budget: a run recorded with an explicit 0 (before none was the
    default), or with no entry (before the setting existed), is the run this comparison would make; one recorded
    with 0.5 is not."""
    out = tmp_path / "cmp"
    shutil.copytree(comparison.out, out)  # the module's comparison stays as it was
    metrics_path = out / "magnitude" / "seed0" / "metrics.json"
    saved = json.loads(metrics_path.read_text())
    assert saved["config"]["method"]["finetune_distill"] is None
    train, val, test = loaders()
    for recorded, accepted in ((0.0, True), ("missing", True), (0.5, False)):
        if recorded == "missing":
            del saved["config"]["method"]["finetune_distill"]
        else:
            saved["config"]["method"]["finetune_distill"] = recorded
        metrics_path.write_text(json.dumps(saved))
        if accepted:
            again = compare(pretrained, train, val, [quick_methods()[1]], seeds=[0], test_loader=test, out=out,
                            resume=True, pipeline=QUICK, keep_fractions=None)
            assert again.runs["magnitude"][0]["compression_rate"] == saved["compression_rate"]
        else:
            with pytest.raises(ValueError, match="finetune_distill: 0.5 there, 0.0 now"):
                compare(pretrained, train, val, [quick_methods()[1]], seeds=[0], out=out, resume=True,
                        pipeline=QUICK)


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_to_resume(pretrained, tmp_path, monkeypatch):
    """A run that fails once its checkpoint's settings are written, before any phase is saved: the folder goes,
    so --resume after fixing the cause is not refused as another run's checkpoint."""
    def broken(*args):
        raise ValueError("the method broke before training")

    monkeypatch.setattr(Magnitude, "prepare", broken)
    train, val, _ = loaders()
    with pytest.raises(ValueError, match="broke before training"):
        compare(pretrained, train, val, [Magnitude(keep_fraction=0.3)], seeds=[0], out=tmp_path / "c", pipeline=QUICK)
    assert not (tmp_path / "c" / "magnitude").exists()


def test_a_method_whose_settings_cannot_work_fails_before_any_run(pretrained, tmp_path, monkeypatch):
    monkeypatch.setattr(Magnitude, "prepare", lambda *a: pytest.fail("a run started"))
    train, val, _ = loaders()
    with pytest.raises(ValueError, match="gaussian-snr: target_macs 5 is below the least"):
        compare(pretrained, train, val, [Magnitude(keep_fraction=0.3), GaussianSNR(target_macs=5)], seeds=[0],
                out=tmp_path / "c", pipeline=QUICK)


def test_a_comparison_without_test_data_says_its_metrics_are_on_validation_data(pretrained, tmp_path):
    train, val, _ = loaders()
    table = compare(pretrained, train, val, [Magnitude(keep_fraction=0.3, finetune_epochs=0)], seeds=[0],
                    out=tmp_path / "c", pipeline=QUICK, keep_fractions=None)
    from bayescompress.compare import load_comparison

    for text in (table.markdown(), load_comparison(tmp_path / "c").markdown()):
        assert text.startswith("Original network (validation data)") and "metrics on the validation data" in text


@pytest.mark.parametrize("methods, seeds, message", [
    ([], [0], "methods is empty"),
    (["magnitude", "magnitude"], [0], "given twice"),
    (["no-such"], [0], "no-such"),
    (["magnitude"], [], "seeds"),
    (["magnitude"], [0, 0], "twice"),
    (["magnitude"], [-1], r"integers in \[0, 9223372036854775807\]"),
    (["magnitude"], [2**70], r"integers in \[0, 9223372036854775807\]"),
    (["magnitude"], 3, r"seeds must be a list of integers, e.g. \[0, 1, 2\]; got 3"),
])
def test_bad_compare_inputs_are_refused_before_any_run(pretrained, methods, seeds, message, tmp_path):
    train, val, _ = loaders()
    with pytest.raises(ValueError, match=message):
        compare(pretrained, train, val, methods, seeds, out=tmp_path / "c", pipeline=QUICK)
    assert not (tmp_path / "c").exists()


def test_the_command_line_compares_with_per_method_settings(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    assert main(["pretrain", "--model", "mlp", "--epochs", "5", "--hidden", "32", "--out", str(weights), "--quiet"]) == 0
    code = main(["compare", "--model", "mlp", "--weights", str(weights), "--methods", "magnitude",
                 "--set", "magnitude.keep-fraction=0.4", "magnitude.finetune_epochs=1", "--out", str(tmp_path / "c"),
                 "--mc-samples", "2", "--latency-budget", "0.02", "--quiet", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"][0]["method"] == "magnitude"
    saved = json.loads((tmp_path / "c" / "magnitude" / "seed0" / "metrics.json").read_text())
    assert saved["config"]["method"]["keep_fraction"] == 0.4
    again = ["compare", "--model", "mlp", "--weights", str(weights), "--methods", "magnitude", "--set",
             "magnitude.keep_fraction=0.3", "magnitude.finetune_epochs=1", "--out", str(tmp_path / "c"),
             "--mc-samples", "2", "--latency-budget", "0.02", "--quiet"]
    assert main(again) == 2  # the runs there are kept unless replacing them is asked for
    assert "--overwrite" in capsys.readouterr().err
    assert main([*again, "--overwrite"]) == 0
    saved = json.loads((tmp_path / "c" / "magnitude" / "seed0" / "metrics.json").read_text())
    assert saved["config"]["method"]["keep_fraction"] == 0.3


def test_compare_takes_resume_or_overwrite_not_both(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["compare", "--model", "mlp", "--weights", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "c"),
              "--resume", "--overwrite"])
    assert stopped.value.code == 2 and "not allowed with argument --resume" in capsys.readouterr().err


def test_all_sets_every_compared_methods_setting_and_a_methods_own_change_wins():
    from bayescompress.cli import _compare_methods

    compared = _compare_methods(["magnitude", "sparse-vd"], [
        "magnitude.finetune_epochs=3", "all.target_macs=20000", "all.finetune-epochs=7"])
    assert [m.settings for m in compared] == [{"target_macs": 20000, "finetune_epochs": 3},
                                             {"target_macs": 20000, "finetune_epochs": 7}]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "magnitude,nope"], "unknown method nope"),
    (["--methods", "magnitude,sparse-vd", "--set", "all.keep_fraction=0.2"], "a setting of"),
    (["--set", "magnitude.keep_fraction"], "METHOD.SETTING=VALUE"),
    (["--set", "ssvi.density=0.1"], "not one of the compared methods"),
    (["--set", "magnitude.pi0=0.1"], "a setting of turbo-vbi, not of magnitude"),
    (["--set", "magnitude.keep_fraction=lots"], "keep_fraction must be"),
    (["--set", "magnitude.keep_fraction=2"], "--set for magnitude: keep_fraction must be in (0.0, 1.0)"),
    (["--set", "magnitude.keep_fraction=0.2", "magnitude.keep-fraction=0.3"], "gives magnitude.keep-fraction twice"),
    # --set given twice keeps both (the first was silently dropped, so this ran at keep_fraction 0.3 alone)
    (["--set", "magnitude.keep_fraction=0.2", "--set", "magnitude.keep_fraction=0.3"],
     "gives magnitude.keep_fraction twice"),
])
def test_bad_compare_flags_exit_2_naming_the_problem(tmp_path, capsys, argv, message):
    code = main(["compare", "--model", "mlp", "--weights", str(tmp_path / "w.safetensors"), "--methods", "magnitude",
                 "--out", str(tmp_path / "c"), "--quiet", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_every_method_compares_on_digits_with_a_table_a_pareto_figure_and_figures_per_run(pretrained, tmp_path):
    from bayescompress import methods

    quick = {"gaussian-snr": dict(epochs=2, finetune_epochs=1), "sparse-vd": dict(epochs=2),
             "ss-gl": dict(epochs=2, finetune_epochs=1), "ss-ghs": dict(epochs=2, finetune_epochs=1),
             "turbo-vbi": dict(epochs=2, finetune_epochs=1), "ssvi": dict(epochs=2, update_interval=5),
             "magnitude": dict(finetune_epochs=1)}
    assert set(quick) == set(methods.names())  # every registered method
    train, val, test = loaders()
    table = compare(pretrained, train, val, [methods.get(n)(**s) for n, s in quick.items()], seeds=[0],
                    test_loader=test, out=tmp_path / "all", pipeline=QUICK, keep_fractions=[0.3, 0.1],
                    anchors=[{"label": "a paper", "compression": 5.0, "error": 0.05}])
    assert [row["method"] for row in table.summary()] == list(quick)
    # two budgets and the run's own masks; ssvi's 0.3 and 0.1 are one point (its density is 0.1)
    assert {name: len(points) for name, points in table.points.items()} == {**dict.fromkeys(quick, 3), "ssvi": 2}
    assert (tmp_path / "all" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    for name in quick:
        assert (tmp_path / "all" / name / "seed0" / "plots" / "masks.png").is_file()


def test_a_comparison_folder_reads_back_and_redraws_its_pareto_figure(comparison, tmp_path):
    from bayescompress.compare import load_comparison

    again = load_comparison(comparison.out)
    written = json.loads((comparison.out / "comparison.json").read_text())  # by the last compare into it
    assert again.summary() == written["rows"] and again.points == written["operating_points"]
    assert main(["plot", str(comparison.out), "--out", str(tmp_path / "fig"), "--quiet"]) == 0
    assert (tmp_path / "fig" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="comparison.json is missing"):
        load_comparison(tmp_path)


def test_a_comparison_interrupted_before_its_first_checkpoint_leaves_nothing_and_says_run_again(
        pretrained, tmp_path, monkeypatch):
    import argparse

    from bayescompress.cli import _how_to_continue

    module = importlib.import_module("bayescompress.compare")

    def interrupted(*args, checkpoint, **kwargs):  # the run's settings written, then Ctrl-C before a phase saved
        checkpoint.mkdir(parents=True)
        (checkpoint / "run.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "compress", interrupted)
    train, val, _ = loaders()
    with pytest.raises(KeyboardInterrupt):
        module.compare(pretrained, train, val, quick_methods(), seeds=[0], out=tmp_path / "cmp", pipeline=QUICK)
    assert not (tmp_path / "cmp").exists()  # the same command starts afresh: nothing left, not even the folder
    args = argparse.Namespace(command="compare", out=str(tmp_path / "cmp"))
    assert _how_to_continue(args) == "before anything was saved; run the command again"
    (tmp_path / "cmp" / "magnitude" / "seed0" / "checkpoint").mkdir(parents=True)
    (tmp_path / "cmp" / "magnitude" / "seed0" / "checkpoint" / "run.json").write_text("{}")
    assert _how_to_continue(args).endswith("continue with the same bayescompress compare command and --resume")


def test_a_damaged_kept_run_is_named_not_its_whole_method_folder(pretrained, comparison, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(comparison.out, out)
    (out / "magnitude" / "seed1" / "metrics.json").write_text("{")
    train, val, _ = loaders()
    with pytest.raises(ValueError, match=r"not a complete run \(metrics.json.*magnitude/seed1"):
        compare(pretrained, train, val, quick_methods(), seeds=[0, 1], out=out, resume=True, pipeline=QUICK)


def test_resume_refuses_a_kept_run_with_a_missing_or_truncated_file(pretrained, comparison, tmp_path):
    # the table was built from them, and plot and load failed on them afterwards
    out = tmp_path / "copy"
    shutil.copytree(comparison.out, out)
    (out / "magnitude" / "seed1" / "masks.safetensors").unlink()
    model = out / "gaussian-snr" / "seed0" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:200])
    train, val, _ = loaders()
    with pytest.raises(ValueError, match=r"gaussian-snr/seed0 is a finished run whose files are damaged "
                                         r"\(model.safetensors unreadable"):
        compare(pretrained, train, val, quick_methods(), seeds=[0, 1], out=out, resume=True, pipeline=QUICK)
    shutil.copy(comparison.out / "gaussian-snr" / "seed0" / "model.safetensors", model)
    with pytest.raises(ValueError, match=r"magnitude/seed1 is a finished run whose files are damaged "
                                         r"\(masks.safetensors missing\)"):
        compare(pretrained, train, val, quick_methods(), seeds=[0, 1], out=out, resume=True, pipeline=QUICK)


def test_resume_refuses_kept_runs_measured_with_other_pipeline_settings(pretrained, comparison):
    """They were kept: the table then averaged runs of 2 and 50 MC samples."""
    train, val, _ = loaders()
    more_samples = dataclasses.replace(QUICK, mc_samples=50)
    with pytest.raises(ValueError, match="pipeline mc_samples: 2 there, 50 now"):
        compare(pretrained, train, val, quick_methods(), seeds=[0, 1], out=comparison.out, resume=True,
                pipeline=more_samples)
