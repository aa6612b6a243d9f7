"""Tests for bayescompress.data, using sklearn digits and small synthetic IDX files (no real MNIST)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from bayescompress.data import (
    DATASETS,
    DatasetNotFoundError,
    DatasetSplits,
    load_dataset,
    make_loaders,
    read_idx,
)

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_DTYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}
N_TRAIN, N_TEST, N_DIGITS = 50, 20, 1797


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``."""
    header = struct.pack(">BBBB", 0, 0, _DTYPE_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(payload)


def sorted_rows(rows: np.ndarray) -> np.ndarray:
    """Sort a 2-D array lexicographically by row, so two arrays compare as multisets of rows."""
    return rows[np.lexsort(rows.T[::-1])]


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits", seed=0)


@pytest.fixture
def fake_mnist(tmp_path: Path) -> dict[str, np.ndarray]:
    """A 50-train / 20-test folder of 28x28 images: train files gzipped, test files raw."""
    rng = np.random.default_rng(123)
    train_images = rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8)
    # A unique top-left pixel per train image identifies it after the split permutation.
    train_images[:, 0, 0] = np.arange(N_TRAIN)
    arrays = {
        "train-images-idx3-ubyte.gz": train_images,
        "train-labels-idx1-ubyte.gz": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }
    for file_name, array in arrays.items():
        write_idx(tmp_path / file_name, array)
    return arrays


# --- digits -----------------------------------------------------------------------------------------------------


def test_digits_shapes_and_classes(digits: DatasetSplits) -> None:
    assert digits.name == "digits"
    assert digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8)
    for ds in (digits.train, digits.val, digits.test):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8) and y.shape == (len(x),)
    assert len(digits.test) == round(0.2 * N_DIGITS)
    assert len(digits.val) == round(0.1 * (N_DIGITS - len(digits.test)))


def test_digits_splits_partition_the_dataset(digits: DatasetSplits) -> None:
    from sklearn.datasets import load_digits

    raw = load_digits()
    x_train = digits.train.tensors[0]
    lo, hi = x_train.min(), x_train.max()  # normalised images of raw pixel 0 and 16 (both occur in train)
    rows = []
    for ds in (digits.train, digits.val, digits.test):
        x, y = ds.tensors
        pixels = torch.round((x - lo) / (hi - lo) * 16).flatten(1).numpy()
        rows.append(np.column_stack([pixels, y.numpy()]))
    expected = np.column_stack([raw.images.reshape(N_DIGITS, -1), raw.target])
    # Concatenated splits are a permutation of the dataset: disjoint and sizes adding to 1797.
    np.testing.assert_array_equal(sorted_rows(np.concatenate(rows)), sorted_rows(expected))


def test_digits_train_split_is_standardised(digits: DatasetSplits) -> None:
    std, mean = torch.std_mean(digits.train.tensors[0], correction=0)
    assert abs(mean.item()) < 1e-5
    assert abs(std.item() - 1.0) < 1e-5


def test_digits_split_is_deterministic_per_seed(digits: DatasetSplits) -> None:
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    for a, b in zip(digits.train.tensors + digits.val.tensors + digits.test.tensors,
                    again.train.tensors + again.val.tensors + again.test.tensors):
        assert torch.equal(a, b)
    assert not torch.equal(digits.train.tensors[1], other.train.tensors[1])


def test_digits_image_size_resizes_to_28() -> None:
    splits = load_dataset("digits", image_size=28)
    assert splits.input_shape == (1, 28, 28)
    for ds in (splits.train, splits.val, splits.test):
        assert ds.tensors[0].shape[1:] == (1, 28, 28)
    assert abs(splits.train.tensors[0].mean().item()) < 1e-5


def test_val_fraction_zero_gives_empty_val() -> None:
    splits = load_dataset("digits", val_fraction=0.0)
    x, y = splits.val.tensors
    assert x.shape == (0, 1, 8, 8) and y.shape == (0,)
    assert len(splits.train) + len(splits.test) == N_DIGITS
    _, val_loader, _ = make_loaders(splits)
    assert list(val_loader) == []


# --- IDX datasets -------------------------------------------------------------------------------------------------


def test_mnist_from_idx_matches_written_files(tmp_path: Path, fake_mnist: dict[str, np.ndarray]) -> None:
    splits = load_dataset("mnist", tmp_path, val_fraction=0.2, seed=3)
    assert splits.name == "mnist" and splits.num_classes == 10 and splits.input_shape == (1, 28, 28)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, N_TEST)

    # The test set keeps file order, so a linear fit of written on loaded pixels recovers the normalisation.
    written_test = fake_mnist["t10k-images-idx3-ubyte"] / 255.0
    x_test, y_test = splits.test.tensors
    std, mean = np.polyfit(x_test.double().numpy().ravel(), written_test.ravel(), 1)
    np.testing.assert_allclose(x_test[:, 0].double().numpy() * std + mean, written_test, atol=1e-5)
    np.testing.assert_array_equal(y_test.numpy(), fake_mnist["t10k-labels-idx1-ubyte"])

    written_train = fake_mnist["train-images-idx3-ubyte.gz"]
    written_labels = fake_mnist["train-labels-idx1-ubyte.gz"]
    ids = []
    for ds in (splits.train, splits.val):
        x, y = ds.tensors
        pixels = x[:, 0].double().numpy() * std + mean
        idx = np.rint(pixels[:, 0, 0] * 255).astype(int)
        np.testing.assert_allclose(pixels, written_train[idx] / 255.0, atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), written_labels[idx])
        ids.append(idx)
    np.testing.assert_array_equal(np.sort(np.concatenate(ids)), np.arange(N_TRAIN))
    # The normalisation statistics are those of the train split only.
    train_pixels = written_train[ids[0]] / 255.0
    assert mean == pytest.approx(train_pixels.mean(), abs=1e-5)
    assert std == pytest.approx(train_pixels.std(), abs=1e-5)


def test_fashion_mnist_uses_same_file_names(tmp_path: Path, fake_mnist: dict[str, np.ndarray]) -> None:
    splits = load_dataset("fashion-mnist", tmp_path, val_fraction=0.0)
    assert splits.name == "fashion-mnist"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (N_TRAIN, 0, N_TEST)
    np.testing.assert_array_equal(splits.test.tensors[1].numpy(), fake_mnist["t10k-labels-idx1-ubyte"])


@pytest.mark.parametrize("part, prefix", [("training", "train"), ("test", "t10k")])
def test_a_split_whose_files_hold_no_images_is_refused_on_loading(tmp_path: Path, fake_mnist, part, prefix) -> None:
    suffix = ".gz" if prefix == "train" else ""
    write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", np.zeros((0, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", np.zeros((0,), dtype=np.uint8))
    with pytest.raises(ValueError, match=f"the {part} files of dataset 'mnist' in .* hold no images"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("dropped", range(4))
def test_missing_idx_file_raises_dataset_not_found(
    tmp_path: Path, fake_mnist: dict[str, np.ndarray], dropped: int
) -> None:
    (tmp_path / list(fake_mnist)[dropped]).unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path) in message and "download" in message
    assert all(name in message for name in IDX_NAMES)


def test_missing_folder_raises_dataset_not_found(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path / "absent")


def test_mnist_without_data_dir_asks_for_data_dir() -> None:
    with pytest.raises(ValueError, match="data-dir"):
        load_dataset("mnist")


# --- read_idx -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([0, 7, 255], dtype=np.uint8),
        np.array([-5, 0, 3], dtype=np.int8),
        np.array([[-300, 2], [7, 30000]], dtype=np.int16),
        np.array([-70000, 1, 2**30], dtype=np.int32),
        np.array([0.5, -1.25], dtype=np.float32),
        np.array([[1e-300, -2.5]], dtype=np.float64),
    ],
    ids=["uint8-3d", "uint8-1d", "int8", "int16", "int32", "float32", "float64"],
)
def test_read_idx_roundtrip(tmp_path: Path, array: np.ndarray, suffix: str) -> None:
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    out = read_idx(path)
    assert out.dtype == array.dtype and out.dtype.isnative and out.flags.writeable
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("magic", [b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"\x00\x00\x08\x00", b"\x00\x00"])
def test_read_idx_bad_magic_raises(tmp_path: Path, magic: bytes) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(magic + struct.pack(">I", 3) + bytes(3))
    with pytest.raises(ValueError, match="bad-idx1-ubyte.*not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_truncated_raises(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"short{suffix}"
    write_idx(path, np.zeros((4, 5, 5), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="short"):
        read_idx(path)


def test_a_labels_file_whose_header_declares_images_is_named_as_the_wrong_file(tmp_path: Path) -> None:
    path = tmp_path / "train-labels-idx1-ubyte"
    write_idx(path, np.zeros(60, dtype=np.uint8))
    raw = bytearray(path.read_bytes())
    raw[3] = 3  # it was read as a shape and reported as truncated, "760652741951032500016 bytes"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"declares 3 dimensions where this file has 1 \(labels \(N,\)\)"):
        read_idx(path, ndim=1)


def test_read_idx_truncated_header_and_trailing_bytes_raise(tmp_path: Path) -> None:
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 2))
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(path)
    write_idx(path, np.zeros(3, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(ValueError, match="trailing bytes"):
        read_idx(path)


# --- argument validation -------------------------------------------------------------------------------------------


def test_unknown_dataset_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="name") as info:
        load_dataset("imagenet")
    assert all(name in str(info.value) for name in DATASETS)


@pytest.mark.parametrize("val_fraction", [1.0, -0.1, float("nan")])
def test_bad_val_fraction_raises(val_fraction: float) -> None:
    with pytest.raises(ValueError, match=r"val_fraction.*\[0\.0, 1\.0\)"):
        load_dataset("digits", val_fraction=val_fraction)


@pytest.mark.parametrize("image_size", [0, -3, 2.5, True])
def test_bad_image_size_raises(image_size: object) -> None:
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("digits", image_size=image_size)


# --- make_loaders -------------------------------------------------------------------------------------------------


def _index_splits(n_train: int = 25, n_eval: int = 7) -> DatasetSplits:
    """Splits whose samples are their own indices, so batch contents reveal the sampling order."""

    def indexed(n: int) -> TensorDataset:
        return TensorDataset(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n))

    return DatasetSplits(indexed(n_train), indexed(n_eval), indexed(n_eval), 10, (1, 1, 1), "indexed")


def test_loaders_yield_batches_of_requested_size() -> None:
    splits = _index_splits()
    train, val, test = make_loaders(splits, batch_size=10, eval_batch_size=3)
    assert [len(y) for _, y in train] == [10, 10, 5]
    assert [len(y) for _, y in val] == [3, 3, 1]
    x, y = next(iter(train))
    assert x.shape == (10, 1, 1, 1) and y.shape == (10,)
    assert train.dataset is splits.train and len(test.dataset) == 7


def test_train_epoch_is_a_permutation_and_eval_is_ordered() -> None:
    train, val, test = make_loaders(_index_splits(), batch_size=4, eval_batch_size=3)
    order = torch.cat([y for _, y in train])
    assert not torch.equal(order, torch.arange(25))
    assert torch.equal(order.sort().values, torch.arange(25))
    assert torch.equal(torch.cat([x for x, _ in train]).flatten().sort().values, torch.arange(25.0))
    for loader in (val, test):
        assert torch.equal(torch.cat([y for _, y in loader]), torch.arange(7))


def test_same_seed_gives_same_order() -> None:
    splits = _index_splits()

    def epochs(seed: int) -> list[torch.Tensor]:
        train, _, _ = make_loaders(splits, batch_size=4, seed=seed)
        return [torch.cat([y for _, y in train]) for _ in range(2)]

    first, again, other = epochs(0), epochs(0), epochs(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])  # reshuffled every epoch
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("field", ["batch_size", "eval_batch_size"])
@pytest.mark.parametrize("value", [0, -1, 2.0])
def test_bad_batch_size_raises(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        make_loaders(_index_splits(), **{field: value})


def test_a_data_folder_given_with_the_default_digits_or_as_a_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="data_dir .* is given but the dataset is 'digits'.*--dataset mnist"):
        load_dataset("digits", tmp_path)
    a_file = tmp_path / "train-images-idx3-ubyte.gz"
    a_file.write_bytes(b"")
    for name in ("mnist", "cifar10"):
        with pytest.raises(DatasetNotFoundError, match="is a file, not a folder: give the folder"):
            load_dataset(name, a_file)


def test_a_validation_split_that_rounds_to_nothing_is_refused_on_loading(tmp_path):
    images = np.zeros((5, 4, 4), dtype=np.uint8)
    images[:, 1, 1] = np.arange(5)  # not constant
    labels = np.arange(5, dtype=np.uint8)
    for stem, array in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels),
                        ("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        write_idx(tmp_path / stem, array)
    with pytest.raises(ValueError, match=r"val_fraction=0.1 of 5 training images is no validation image; give at "
                                         r"least 6 training images"):
        load_dataset("mnist", tmp_path)
