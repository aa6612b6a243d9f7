"""The command line: JSON contract, --quiet everywhere, clear errors with exit code 2."""

import json
import warnings

import pytest
import torch

from bayescompress import workflows
from bayescompress.cli import main
from bayescompress.io import save_weights, write_json


def _last_json_line(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_demo_compares_weight_and_unit_pruning_prints_the_table_and_writes_runs_and_figures(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--json"]) == 0
    out = capsys.readouterr().out
    assert "| gaussian-snr | 1 |" in out and "| gaussian-snr-units | 1 |" in out and "Original network" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["original"]["accuracy"] > 0.95
    rows = {row["method"]: row for row in summary["rows"]}
    for row in rows.values():  # both keep the accuracy within a point, and compress
        assert row["accuracy"]["mean"] > summary["original"]["accuracy"] - 0.01
        assert row["compression"]["mean"] >= 2.5
    assert rows["gaussian-snr-units"]["units"][0] < 50  # whole neurons removed: a smaller dense layer
    assert rows["gaussian-snr-units"]["macs_ratio"]["mean"] < 0.5
    for label in rows:
        run = tmp_path / "demo" / label / "seed0"
        assert json.loads((run / "metrics.json").read_text())["export_max_abs_diff"] <= 1e-4
        assert (run / "plots" / "masks.png").is_file()
    assert (tmp_path / "demo" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "demo" / "comparison.md").is_file()


def test_pretrain_writes_weights_and_record_and_prints_json_last(tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    code = main(["pretrain", "--model", "mlp", "--dataset", "digits", "--epochs", "2", "--hidden", "16",
                 "--out", str(out), "--quiet", "--json"])
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1  # --quiet: only the JSON line
    result = json.loads(printed[0])
    record = json.loads(out.with_suffix(".json").read_text())
    assert result["test_accuracy"] == record["test_accuracy"]
    assert record["architecture"]["kwargs"]["hidden"] == [16]


@pytest.mark.parametrize("command", ["pretrain", "compress", "plot", "demo"])
def test_every_command_accepts_quiet(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--quiet" in capsys.readouterr().out


def test_out_of_range_value_exits_2_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--model", "mlp", "--epochs", "0", "--out", str(tmp_path / "w.safetensors"), "--quiet"])
    assert exit_info.value.code == 2
    assert "argument --epochs: expected an integer >= 1; got '0'" in capsys.readouterr().err
    assert not (tmp_path / "w.safetensors").exists()


def test_missing_idx_files_are_listed(tmp_path, capsys):
    code = main(["pretrain", "--model", "lenet300", "--dataset", "mnist", "--data-dir", str(tmp_path),
                 "--epochs", "1", "--out", str(tmp_path / "w.safetensors"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "t10k-labels-idx1-ubyte" in err


def test_mnist_without_data_dir_says_what_is_needed(tmp_path, capsys):
    code = main(["pretrain", "--model", "lenet5", "--dataset", "mnist", "--epochs", "1",
                 "--out", str(tmp_path / "w.safetensors"), "--quiet"])
    assert code == 2
    assert "--data-dir" in capsys.readouterr().err


def test_every_seed_compresses_on_the_split_the_pretraining_held_out(tmp_path, monkeypatch):
    # with the split drawn from --seed, seed 1 would validate and test on images seed 0's pretraining trained on
    weights = tmp_path / "w.safetensors"
    assert main(["pretrain", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--hidden", "8",
                 "--seed", "3", "--out", str(weights), "--quiet"]) == 0
    pretrain_split = workflows.load_data_for("mlp", "digits", seed=0)
    seen = {}

    def capture(model, train, val, method, **kwargs):
        seen[kwargs["pipeline"].seed] = (train.dataset.tensors[0], val.dataset.tensors[0],
                                         kwargs["test_loader"].dataset.tensors[0])
        raise SystemExit(0)

    monkeypatch.setattr(workflows, "compress", capture)
    for seed in ("0", "1"):
        with pytest.raises(SystemExit):
            main(["compress", "--model", "mlp", "--weights", str(weights), "--out", str(tmp_path / f"r{seed}"),
                  "--seed", seed, "--quiet"])
    for part, images in zip(("train", "val", "test"), seen[1]):
        assert torch.equal(images, getattr(pretrain_split, part).tensors[0]), part
        assert torch.equal(images, seen[0][("train", "val", "test").index(part)]), part


def _refused(argv, capsys) -> str:
    """The one stderr line of a command refused while its arguments are parsed, which must exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2  # SystemExit("message") would exit 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bayescompress compress: error: ")
    return err[0]


def test_from_run_of_a_missing_folder_exits_2_naming_it(tmp_path, capsys):
    # without --method, the method is read from the folder while the arguments are parsed
    err = _refused(["compress", "--model", "mlp", "--weights", str(tmp_path / "w.safetensors"),
                    "--from-run", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert f"--from-run {tmp_path / 'missing'}: {tmp_path / 'missing' / 'metrics.json'} is missing" in err
    assert not (tmp_path / "run").exists()


def test_resume_with_a_training_flag_exits_2_naming_the_flag(tmp_path, capsys):
    err = _refused(["compress", "--resume", str(tmp_path / "run"), "--epochs", "3"], capsys)
    assert "give only --quiet / --json beside it, not --epochs 3" in err


def test_resume_of_a_folder_without_an_interrupted_run_exits_2(tmp_path, capsys):
    err = _refused(["compress", "--resume", str(tmp_path / "missing")], capsys)
    assert f"cannot resume {tmp_path / 'missing'}" in err


def test_a_run_refused_after_its_checkpoint_was_opened_leaves_nothing_and_fails_the_same_way_again(tmp_path, capsys):
    """target_macs on a residual network is refused before training but after the checkpoint's settings were
    written: the folder goes, so the same command fails the same way rather than offering --resume."""
    from bayescompress.io import save_weights
    from bayescompress.runs import call_factory

    (tmp_path / "resnet.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "class Residual(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.inp, self.block, self.out = nn.Linear(64, 16), nn.Linear(16, 16), nn.Linear(16, 10)\n"
        "    def forward(self, x):\n"
        "        h = torch.relu(self.inp(x.flatten(1)))\n"
        "        return self.out(h + torch.relu(self.block(h)))\n"
        "def net():\n"
        "    return Residual()\n")
    save_weights(call_factory(f"{tmp_path / 'resnet.py'}:net").state_dict(), tmp_path / "w.safetensors")
    argv = ["compress", "--model", f"{tmp_path / 'resnet.py'}:net", "--weights", str(tmp_path / "w.safetensors"),
            "--dataset", "digits", "--method", "magnitude", "--target-macs", "500", "--out", str(tmp_path / "run"),
            "--quiet"]
    for _ in range(2):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--target-macs needs a sequential network" in err and "--resume" not in err
        assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()  # a folder the user made (a mount point, a chosen mode) stays, empty
    assert main(argv) == 2
    assert (tmp_path / "run").is_dir() and not any((tmp_path / "run").iterdir())


def test_sigterm_during_a_command_is_an_interrupt_and_the_handler_is_put_back():
    import os
    import signal
    import time

    from bayescompress.cli import _terminate_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with _terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises as soon as the signal is delivered
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_interrupt_something_swallowed_still_exits_130_saying_the_command_finished(tmp_path, capsys, monkeypatch):
    import os
    import signal
    import time

    from bayescompress import cli

    def finished_despite(args):  # as matplotlib does with an exception raised inside its callbacks
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            pass
        return 0

    monkeypatch.setattr(cli, "_run", finished_despite)
    before = signal.getsignal(signal.SIGINT)
    assert main(["plot", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "bayescompress plot: interrupted (SIGINT) as it finished; it finished first"
    assert signal.getsignal(signal.SIGINT) is before


def test_an_interrupt_outside_training_exits_130_says_what_to_do_and_leaves_no_unstarted_run(tmp_path, capsys,
                                                                                           monkeypatch):
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(workflows, "compress_files", stopped)  # as if the signal came while the data loaded
    code = main(["compress", "--model", "mlp", "--weights", str(tmp_path / "w.safetensors"), "--dataset", "digits",
                 "--method", "magnitude", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 130
    assert capsys.readouterr().err.strip() == ("bayescompress compress: interrupted (SIGTERM) before anything was "
                                               "saved; run the command again")
    assert not (tmp_path / "run").exists()  # the invocation it had written is gone: the same command starts anew


def test_the_interrupt_message_offers_resume_only_where_there_is_something_to_resume(tmp_path):
    import argparse

    from bayescompress.cli import _how_to_continue

    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    assert _how_to_continue(argparse.Namespace(command="compress", out=str(run))) == (
        f"after its last checkpoint; continue with: bayescompress compress --resume {run}")
    assert "run the command again" in _how_to_continue(argparse.Namespace(command="compress", out=str(tmp_path)))
    spaced = tmp_path / "rüns" / "run 2"  # pasted unquoted, the hint said "not 2"
    (spaced / "checkpoint").mkdir(parents=True)
    assert _how_to_continue(argparse.Namespace(command="compress", out=str(spaced))).endswith(
        f"--resume '{spaced}'")
    # a comparison with no kept run or checkpoint yet: nothing to resume either (tests/test_compare.py has one)
    assert "run the command again" in _how_to_continue(argparse.Namespace(command="compare", out=str(tmp_path)))


def test_pretrain_refuses_an_out_it_cannot_write_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    for out, message in ((tmp_path / "net.pt", "must end in .safetensors"),
                         (tmp_path / "file" / "net.safetensors", "is a file, not a folder")):
        assert main(["pretrain", "--model", "mlp", "--epochs", "50", "--out", str(out), "--quiet"]) == 2
        assert message in capsys.readouterr().err


def test_pretrain_replaces_existing_weights_only_with_overwrite(tmp_path, capsys, monkeypatch):
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"the user's weights")
    monkeypatch.setattr(workflows, "pretrain", lambda *args, **kwargs: pytest.fail("trained before refusing"))
    assert main(["pretrain", "--model", "mlp", "--epochs", "50", "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "w.safetensors already exists" in error and "--overwrite" in error
    assert out.read_bytes() == b"the user's weights"
    monkeypatch.undo()
    assert main(["pretrain", "--model", "mlp", "--epochs", "1", "--hidden", "8", "--out", str(out), "--quiet",
                 "--overwrite"]) == 0
    assert out.read_bytes() != b"the user's weights" and out.with_suffix(".json").is_file()


def test_pretrain_refuses_hidden_widths_for_a_network_of_fixed_architecture(tmp_path, capsys):
    code = main(["pretrain", "--model", "lenet5", "--epochs", "1", "--hidden", "32", "--out",
                 str(tmp_path / "w.safetensors"), "--quiet"])
    assert code == 2 and "--hidden sets the mlp's widths; lenet5 has a fixed architecture" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_an_unwritable_destination_is_refused_before_the_training(tmp_path, capsys, monkeypatch):
    """A read-only file system refuses root too, where a chmod'ed folder would not: the check asks the system."""
    import os

    from bayescompress import workflows

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(tmp_path) else
                        real_access(path, mode))
    monkeypatch.setattr(workflows, "pretrain", lambda *a, **k: pytest.fail("trained into a read-only folder"))
    code = main(["pretrain", "--model", "mlp", "--epochs", "1", "--out", str(tmp_path / "w" / "w.safetensors"),
                 "--quiet"])
    assert code == 2
    assert f"cannot write into {tmp_path / 'w'}: {tmp_path} is not writable" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--seeds", "0,,1"), ("--methods", "magnitude,")])
def test_a_list_with_an_empty_item_is_refused_not_shortened(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--model", "mlp", "--weights", str(tmp_path / "w.safetensors"), flag, value,
              "--out", str(tmp_path / "cmp"), "--quiet"])
    assert exit_info.value.code == 2
    assert f"an empty item in {value!r}" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_warnings_on_the_command_line_are_one_line_each_without_source_lines():
    import warnings

    from bayescompress.cli import _warnings_as_lines

    before = warnings.formatwarning
    with _warnings_as_lines("compress"):  # what Python's showwarning prints (pytest records them instead)
        line = warnings.formatwarning("layer '3' keeps its own top 0.09", UserWarning, "/x/strategies.py", 52)
    assert line == "bayescompress compress: warning: layer '3' keeps its own top 0.09\n"
    assert warnings.formatwarning is before


def test_the_command_line_shows_each_warning_text_once(recwarn):
    from bayescompress.cli import _warnings_as_lines

    def convert_twice() -> None:  # what compare does per run: a fresh catch_warnings forgets what was shown
        for _ in range(2):
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                warnings.warn("kept deterministic and unpruned: emb (Embedding)")
        warnings.warn("another text")

    with _warnings_as_lines("compare"):
        convert_twice()
    assert [str(w.message) for w in recwarn] == ["kept deterministic and unpruned: emb (Embedding)", "another text"]


def test_a_method_flag_given_a_value_of_the_wrong_type_says_what_it_takes(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "--model", "mlp", "--weights", str(tmp_path / "w.safetensors"), "--epochs", "2.5",
              "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "argument --epochs: expected an integer >= 1; got '2.5'" in capsys.readouterr().err


@pytest.mark.parametrize("flags, said", [
    (["--method", "gaussian-snr", "--keep-fraction", "1.5"], "argument --keep-fraction: expected in (0, 1); got '1.5'"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1; got '0'"),
])
def test_a_flag_given_a_value_out_of_range_is_named_by_its_flag(tmp_path, capsys, flags, said):
    # before, the setting's range check named it by its Python name (keep_fraction must be in ...)
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "--model", "mlp", "--weights", str(tmp_path / "w.safetensors"), *flags,
              "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert said in capsys.readouterr().err


def test_compress_given_compares_set_says_it_takes_settings_as_flags(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "--model", "mlp", "--weights", str(tmp_path / "w.safetensors"), "--set",
              "gaussian-snr.epochs=1", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "compress takes a method's settings as flags of their own" in capsys.readouterr().err


def test_demo_into_a_folder_of_a_demo_offers_overwrite_not_resume(tmp_path, capsys, monkeypatch):
    from bayescompress import workflows

    (tmp_path / "demo" / "gaussian-snr").mkdir(parents=True)  # as a demo leaves it (a method's folder)
    monkeypatch.setattr(workflows, "pretrain", lambda *a, **k: pytest.fail("trained before refusing"))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds a comparison's runs; pass --overwrite" in err and "resume" not in err


def test_a_missing_anchors_file_and_a_missing_resume_folder_are_named_as_missing(tmp_path, capsys):
    code = main(["compare", "--model", "mlp", "--weights", str(tmp_path / "w.safetensors"), "--anchors",
                 str(tmp_path / "none.json"), "--out", str(tmp_path / "cmp"), "--quiet"])
    assert code == 2 and "there is no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # refused while the command line is read
        main(["compress", "--resume", str(tmp_path / "gone"), "--quiet"])
    assert exit_info.value.code == 2
    assert f"{tmp_path / 'gone'} does not exist; give the run folder of the interrupted run" in capsys.readouterr().err


def test_a_signal_during_the_teardown_after_the_command_finished_does_not_kill_it():
    import subprocess
    import sys

    code = ("import atexit, os, signal, bayescompress.cli as cli; cli.main = lambda: 0; "
            "atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM)); cli.run()")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0  # it was -15 (143)


def test_plot_into_an_unwritable_folder_names_it(tmp_path, capsys, monkeypatch):
    import os

    (tmp_path / "run").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(tmp_path) else
                        real_access(path, mode))
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "figures"), "--quiet"]) == 2
    assert f"cannot write into {tmp_path / 'figures'}: {tmp_path} is not writable" in capsys.readouterr().err


def test_compress_without_dataset_uses_the_one_the_weights_were_pretrained_on(tmp_path, monkeypatch, capsys):
    # it used to default to digits: MNIST weights were compressed on upsampled digits, the original at 45 %
    weights = tmp_path / "w.safetensors"
    save_weights({"w": torch.zeros(1)}, weights)
    write_json(weights.with_suffix(".json"), {"format_version": 2, "architecture": {"model": "lenet300"},
                                              "dataset": "mnist"})
    assert workflows.dataset_for("lenet300", weights, None) == "mnist"
    with pytest.warns(UserWarning, match=r"w.safetensors was pretrained on mnist .* and is compressed on digits"):
        assert workflows.dataset_for("lenet300", weights, "digits") == "digits"
    assert workflows.dataset_for("lenet300", tmp_path / "other.safetensors", None) == "digits"  # no record
    class Loaded(Exception):
        pass

    def load_dataset(dataset, *args, **kwargs):
        raise Loaded(dataset)

    monkeypatch.setattr(workflows, "load_dataset", load_dataset)
    assert main(["compress", "--model", "lenet300", "--weights", str(weights), "--out", str(tmp_path / "run")]) == 2
    assert "w.safetensors was pretrained on mnist (its .json record says so): pass --data-dir" in \
        capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(Loaded, match="mnist"):
        main(["compress", "--model", "lenet300", "--weights", str(weights), "--data-dir", str(tmp_path), "--out",
              str(tmp_path / "run")])
    # written down, so a resume does not depend on the record still being there
    assert json.loads((tmp_path / "run" / "invocation.json").read_text())["argv"][-2:] == ["--dataset", "mnist"]


def test_messages_on_the_command_line_name_flags_not_python_arguments():
    import argparse

    from bayescompress.cli import _shell_words

    words = _shell_words(argparse.Namespace(command="compress", method="ssvi"))
    assert words("run holds an interrupted run; continue it with `bayescompress compress --resume run` "
                 "(compress(..., checkpoint='run/checkpoint') from Python), or pass overwrite=True (--overwrite) to "
                 "start again") == ("run holds an interrupted run; continue it with `bayescompress compress --resume "
                                    "run`, or pass --overwrite to start again")
    assert words("pass data_dir (--data-dir on the command line) pointing to the folder") == \
        "pass --data-dir pointing to the folder"
    assert words("lower update_interval, raise end_fraction, or train more epochs; batch_size 127") == \
        "lower --update-interval, raise --end-fraction, or train more epochs; --batch-size 127"
    # compare takes method settings as --set METHOD.SETTING: they stay as written there
    compare_words = _shell_words(argparse.Namespace(command="compare"))
    assert compare_words("--set for magnitude: keep_fraction must be in (0.0, 1.0)") == \
        "--set for magnitude: keep_fraction must be in (0.0, 1.0)"
    assert compare_words("set magnitude.max_val_drop") == "set magnitude.max_val_drop"
    # paths and values the user typed, and quoted text, stay as written (a hint pasted back must work)
    typed = _shell_words(argparse.Namespace(command="compress", method="ssvi",
                                            argv=["compress", "--data-dir", "data_dir", "--out", "runs/target_macs/2 x"]))
    assert typed("runs/target_macs/2 x holds an interrupted run") == "runs/target_macs/2 x holds an interrupted run"
    # a value typed exactly as a setting's name is told from the name by its quotes
    assert typed("data_dir 'data_dir' is given but the dataset is 'digits'") == \
        "--data-dir 'data_dir' is given but the dataset is 'digits'"
    assert typed("weights file keep_fraction-0.1.safetensors does not exist; got 'mc_samples=3'") == \
        "weights file keep_fraction-0.1.safetensors does not exist; got 'mc_samples=3'"
    # short values typed beside them (--seed 0, the command's name) are text too, not placeholders
    short = _shell_words(argparse.Namespace(command="compress", method="ssvi", argv=[
        "compress", "--seed", "0", "--epochs", "1", "--out", "my run"]))
    assert short("my run holds an interrupted run; continue it with `bayescompress compress --resume 'my run'`") == \
        "my run holds an interrupted run; continue it with `bayescompress compress --resume 'my run'`"
