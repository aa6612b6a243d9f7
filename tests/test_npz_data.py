"""The user's own arrays as a data set (``npz``): read without pickle, used as stored, every bad file named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bayescompress.cli import main
from bayescompress.data import DatasetNotFoundError, load_dataset


def _write(folder, **splits):
    folder.mkdir(exist_ok=True)
    for name, (x, y) in splits.items():
        np.savez(folder / f"{name}.npz", x=x, y=y)
    return folder


def _tabular(n, seed, features=12, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float64) * 7 + 3  # far from standardised: kept as stored
    return x, rng.integers(0, classes, n)


def test_arrays_are_used_as_stored_with_a_seeded_validation_split(tmp_path):
    train, test = _tabular(200, 0), _tabular(50, 1)
    folder = _write(tmp_path / "d", train=train, test=test)
    splits = load_dataset("npz", folder, val_fraction=0.25, seed=3)
    assert splits.input_shape == (12,) and splits.num_classes == 3 and splits.name == "npz"
    torch.testing.assert_close(splits.test.tensors[0], torch.from_numpy(test[0]).float())  # no normalisation
    assert splits.test.tensors[1].dtype == torch.int64 and torch.equal(splits.test.tensors[1],
                                                                       torch.from_numpy(test[1]))
    assert (len(splits.train), len(splits.val)) == (150, 50)
    rows = {tuple(r) for r in np.float32(train[0]).tolist()}  # train and val partition train.npz
    both = torch.cat([splits.train.tensors[0], splits.val.tensors[0]])
    assert {tuple(r) for r in both.tolist()} == rows
    again = load_dataset("npz", folder, val_fraction=0.25, seed=3)
    assert torch.equal(again.val.tensors[0], splits.val.tensors[0])


def test_a_val_file_is_the_validation_split_and_classes_count_every_split(tmp_path):
    x, y = _tabular(30, 0)
    val_y = np.full(10, 6)  # the largest label appears only in val.npz
    folder = _write(tmp_path / "d", train=(x, y), test=(x[:5], y[:5]), val=(x[:10], val_y))
    splits = load_dataset("npz", folder)
    assert len(splits.train) == 30 and torch.equal(splits.val.tensors[1], torch.full((10,), 6))
    assert splits.num_classes == 7


def test_label_ids_far_beyond_the_classes_present_are_refused_by_pretrain_and_unseen_classes_warned(tmp_path,
                                                                                                     capsys):
    """3 labels 0, 1e6, 2e6 built a network of 2,000,001 outputs (808 MB). A user's own network decides its
    outputs itself (labels up to 999 of a 100-class subset are fine there), so only pretrain refuses."""
    x, y = _tabular(60, 0)
    ids = _write(tmp_path / "ids", train=(x, y * 1_000_000), test=(x[:9], y[:9] * 1_000_000))
    assert load_dataset("npz", ids).num_classes == 2_000_001
    code = main(["pretrain", "--model", "mlp", "--dataset", "npz", "--data-dir", str(ids), "--epochs", "1",
                 "--out", str(tmp_path / "w.safetensors"), "--quiet"])
    assert code == 2 and not (tmp_path / "w.safetensors").exists()
    assert "are 3 distinct values up to 2000000: the network would get 2,000,001 outputs" in capsys.readouterr().err
    unseen = _write(tmp_path / "unseen", train=(x, y), test=(x[:4], np.array([0, 1, 4, 3])))
    with pytest.warns(UserWarning, match="the test labels 3, 4 of .* never occur in training"):
        assert load_dataset("npz", unseen).num_classes == 5


def test_images_are_not_resized_for_a_network_that_needs_a_size_but_refused(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(20) % 10
    images = rng.uniform(0, 255, (20, 1, 28, 28))
    splits = load_dataset("npz", _write(tmp_path / "img", train=(images, labels), test=(images, labels)),
                          image_size=28)
    assert splits.input_shape == (1, 28, 28) and splits.train.tensors[0].max() > 1  # kept in its scale
    small = images[:, :, :8, :8]
    for x, folder in ((small, "small"), (_tabular(20, 0)[0], "flat")):
        with pytest.raises(ValueError, match=r"needs 28x28 images .* store them at that size"):
            load_dataset("npz", _write(tmp_path / folder, train=(x, labels), test=(x, labels)), image_size=28)


def test_integer_inputs_stay_integers_for_an_embedding_and_others_become_float32(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50, (20, 7)).astype(np.int32)
    labels = np.arange(20) % 2
    splits = load_dataset("npz", _write(tmp_path / "t", train=(tokens, labels), test=(tokens, labels)))
    assert splits.test.tensors[0].dtype == torch.int64 and torch.equal(splits.test.tensors[0],
                                                                       torch.from_numpy(tokens).long())
    assert torch.nn.Embedding(50, 4)(splits.train.tensors[0]).shape[1:] == (7, 4)
    flags = load_dataset("npz", _write(tmp_path / "b", train=(tokens > 25, labels), test=(tokens > 25, labels)))
    assert flags.test.tensors[0].dtype == torch.float32


def test_whole_number_float_labels_and_boolean_labels_are_taken(tmp_path):
    x, y = _tabular(20, 0)
    splits = load_dataset("npz", _write(tmp_path / "d", train=(x, y.astype(float)), test=(x, y.astype(float))))
    assert splits.train.tensors[1].dtype == torch.int64 and splits.num_classes == 3
    binary = load_dataset("npz", _write(tmp_path / "b", train=(x, y > 0), test=(x, y > 0)))
    assert binary.num_classes == 2 and torch.equal(binary.test.tensors[1], torch.from_numpy(y > 0).long())


@pytest.mark.parametrize("train, message", [
    ((np.zeros((4, 3)), np.array([0, 1, 0.5, 1])), r"integer class labels 0, 1, ...; got fractions"),
    ((np.zeros((4, 3)), np.array(["cat", "dog", "cat", "dog"])), r"got text \(strings\).*map each class to its index"),
    ((np.zeros((4, 3)), np.array([0, 1, -1, 1])), "found -1"),
    ((np.zeros((4, 3)), np.array([0, 1, 1])), r"one label per input, shape \(4,\)"),
    ((np.zeros(4), np.array([0, 1, 1, 0])), r"inputs \(N, ...\)"),
    ((np.array([[0.0, np.nan]] * 4), np.array([0, 1, 1, 0])), "NaN or infinite"),
    ((np.array([[0.0, 1e300]] * 4), np.array([0, 1, 1, 0])), "beyond float32's range"),
    ((np.zeros((4, 3)), np.zeros(4, dtype=int)), "every label is 0"),
    ((np.array([["a", "b"]] * 4), np.array([0, 1, 1, 0])), "integers, floats or booleans"),
    ((np.array([[1j, 2]] * 4), np.array([0, 1, 1, 0])), "integers, floats or booleans"),
])
def test_bad_arrays_are_named_with_the_fix(tmp_path, train, message):
    folder = _write(tmp_path / "d", train=train, test=(np.zeros((2, *train[0].shape[1:])), np.array([0, 0])))
    with pytest.raises(ValueError, match=message):
        load_dataset("npz", folder, val_fraction=0.25)


def test_missing_files_wrong_keys_pickles_and_mismatched_shapes_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"pass data_dir .* train.npz and test.npz"):
        load_dataset("npz")
    folder = _write(tmp_path / "d", train=_tabular(10, 0))
    with pytest.raises(DatasetNotFoundError, match="is missing test.npz.*np.savez"):
        load_dataset("npz", folder)
    with pytest.raises(DatasetNotFoundError, match=r"its subfolder d holds train.npz: pass .*d\b"):
        load_dataset("npz", tmp_path)
    np.savez(folder / "test.npz", inputs=np.zeros((2, 12)), labels=np.zeros(2))
    with pytest.raises(ValueError, match="holds the arrays inputs, labels; it must hold x .* and y"):
        load_dataset("npz", folder)
    np.savez(folder / "test.npz", x=np.array([object(), object()], dtype=object), y=np.array([0, 1]))
    with pytest.raises(ValueError, match="object array, which is stored as a pickle and is never loaded"):
        load_dataset("npz", folder)
    (folder / "test.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="test.npz is not a readable .npz file"):
        load_dataset("npz", folder)
    with open(folder / "test.npz", "wb") as one_array:
        np.save(one_array, np.zeros((2, 12)))
    with pytest.raises(ValueError, match="test.npz is not a readable .npz file .it holds one array"):
        load_dataset("npz", folder)
    np.savez(folder / "test.npz", x=np.zeros((2, 11)), y=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"train.npz are \(12,\) each but those of test.npz are \(11,\)"):
        load_dataset("npz", folder)


def test_pretraining_a_reference_network_on_integer_inputs_is_refused_before_training(tmp_path, capsys):
    tokens = np.random.default_rng(0).integers(0, 9, (40, 6))
    folder = _write(tmp_path / "t", train=(tokens, np.arange(40) % 2), test=(tokens, np.arange(40) % 2))
    assert main(["pretrain", "--model", "mlp", "--dataset", "npz", "--data-dir", str(folder), "--epochs", "1",
                 "--out", str(tmp_path / "w.safetensors"), "--quiet"]) == 2
    assert "are integers; store x as float32" in capsys.readouterr().err


def test_the_command_line_pretrains_and_compresses_on_a_folder_of_arrays(tmp_path, capsys):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 4))
    x = rng.normal(size=(600, 12)).astype(np.float32)
    folder = _write(tmp_path / "d", train=(x[:500], (x[:500] @ w).argmax(1)), test=(x[500:], (x[500:] @ w).argmax(1)))
    weights = tmp_path / "w.safetensors"
    assert main(["pretrain", "--model", "mlp", "--dataset", "npz", "--data-dir", str(folder), "--epochs", "30",
                 "--lr", "3e-3", "--hidden", "32", "--out", str(weights), "--quiet"]) == 0
    assert main(["compress", "--model", "mlp", "--weights", str(weights), "--dataset", "npz", "--data-dir",
                 str(folder), "--method", "magnitude", "--finetune-epochs", "2", "--mc-samples", "2",
                 "--latency-budget", "0.02", "--out", str(tmp_path / "run"), "--quiet", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["original"]["accuracy"] > 0.8  # four classes, linearly separable: learnt
    assert metrics["architecture"]["original"] == [32, 4]
