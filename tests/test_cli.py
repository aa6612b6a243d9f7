"""The command line: JSON contract, --quiet everywhere, clear errors with exit code 2."""

import json

import pytest

from bayescompress.cli import main


def _last_json_line(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_demo_runs_the_pipeline_prints_the_report_and_writes_the_run(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "run"), "--json"]) == 0
    out = capsys.readouterr().out
    assert "| original |" in out and "| compressed |" in out and "compression rate" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["original"]["accuracy"] > 0.95
    assert summary["compressed"]["accuracy"] > summary["original"]["accuracy"] - 0.02
    assert summary["compression_rate"] >= 3.9
    assert summary["export_max_abs_diff"] <= 1e-4
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["compressed"] == summary["compressed"]


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


def test_out_of_range_value_exits_2_naming_the_field(tmp_path, capsys):
    code = main(["pretrain", "--model", "mlp", "--epochs", "0", "--out", str(tmp_path / "w.safetensors"),
                 "--quiet"])
    assert code == 2
    assert "epochs" in capsys.readouterr().err
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
