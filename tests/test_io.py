"""Files: atomic writes, safe weight loading, mismatch messages, pretrained-network records."""

import json
import pickle

import pytest
import torch

from bayescompress.io import (
    WeightsMismatchError,
    atomic_write,
    load_state_dict_file,
    load_weights_,
    save_weights,
    write_json,
)
from bayescompress.models import lenet5, mlp
from bayescompress.workflows import FORMAT_VERSION, load_pretrained, pretrain


def test_failed_write_leaves_the_previous_file_intact_and_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"a": 1})

    def crash(tmp):
        tmp.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_weights_round_trip_through_safetensors_and_torch_save(tmp_path):
    model = mlp(8, (4,), 3)
    save_weights(model.state_dict(), tmp_path / "w.safetensors")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        loaded = load_state_dict_file(tmp_path / name)
        assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickled_object_is_refused(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump({"weight": Payload()}, handle)
    with pytest.raises(ValueError, match="weights_only"):
        load_state_dict_file(tmp_path / "evil.pt")
    assert "executed" not in capsys.readouterr().out


def test_mismatching_weights_name_the_first_mismatching_tensor():
    source = mlp(8, (5,), 3).state_dict()
    with pytest.raises(WeightsMismatchError, match=r"'1\.weight' has shape \(5, 8\), the model expects \(4, 8\)"):
        load_weights_(mlp(8, (4,), 3), source)
    with pytest.raises(WeightsMismatchError, match=r"'0\.weight'.*missing"):
        load_weights_(lenet5(), source)
    extra = {**mlp(8, (4,), 3).state_dict(), "head.weight": torch.zeros(1)}
    with pytest.raises(WeightsMismatchError, match="'head.weight' is not in the model"):
        load_weights_(mlp(8, (4,), 3), extra)


def test_pretrained_network_is_rebuilt_from_its_weights_and_record(tmp_path):
    result = pretrain("mlp", "digits", epochs=1, hidden=(8,), quiet=True)
    path = result.save(tmp_path / "net.safetensors")
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["test_accuracy"] == result.metrics["accuracy"]
    model, _ = load_pretrained(path)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model.eval()(x), result.model.eval()(x))


def test_a_record_from_a_newer_format_is_refused(tmp_path):
    result = pretrain("mlp", "digits", epochs=1, hidden=(8,), quiet=True)
    path = result.save(tmp_path / "net.safetensors")
    record = json.loads(path.with_suffix(".json").read_text())
    record["format_version"] = FORMAT_VERSION + 1
    path.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="upgrade bayescompress"):
        load_pretrained(path)


@pytest.mark.parametrize("text, message", [
    ("", "is not readable JSON .*the file is damaged"),
    ('{"format_version": 2, "method"', "is not readable JSON"),
    ("[]", "holds a JSON list, not a bayescompress record"),
    ('{"format_version": "2"}', r"has no valid format version \('2'\); it was not written by bayescompress"),
    ('{"format_version": 1.5}', "has no valid format version"),
])
def test_a_damaged_record_is_named_with_what_is_wrong(tmp_path, text, message):
    from bayescompress.io import read_json_record

    path = tmp_path / "metrics.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_json_record(path, "a finished run folder")


def test_an_atomic_write_gives_a_new_file_the_umask_s_mode_and_keeps_an_existing_one_s(tmp_path):
    import os
    import stat

    previous = os.umask(0o027)
    try:
        write_json(tmp_path / "new.json", {})
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640
        os.chmod(tmp_path / "new.json", 0o604)
        write_json(tmp_path / "new.json", {"again": 1})
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o604
    finally:
        os.umask(previous)
