"""Image classification datasets: sklearn digits (embedded) and MNIST / Fashion-MNIST from local IDX files.

Nothing is ever downloaded: MNIST-style datasets are read from a folder the user already has, and the
digits set ships inside scikit-learn. Every split is a :class:`~torch.utils.data.TensorDataset` of
normalised ``float32`` images ``(N, 1, H, W)`` and ``int64`` labels ``(N,)``.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from bayescompress._validation import check_choice, check_in_range, check_positive_int

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "DatasetSplits",
    "read_idx",
    "load_dataset",
    "make_loaders",
]

DATASETS = ("digits", "mnist", "fashion-mnist")

# Both MNIST and Fashion-MNIST are distributed under these exact names.
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# IDX dtype codes; multi-byte types are big-endian on disk.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_NUM_CLASSES = 10  # all three datasets have ten classes
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_MAX_PIXEL = 16.0  # load_digits stores 4-bit intensities 0..16
_IDX_MAX_PIXEL = 255.0


class DatasetNotFoundError(FileNotFoundError):
    """An IDX dataset folder is missing or lacks some of the four expected files."""


@dataclass(frozen=True)
class DatasetSplits:
    """Train / validation / test splits of one dataset, normalised with train-split statistics.

    Attributes
    ----------
    train, val, test : TensorDataset
        ``(x, y)`` with ``x`` float32 ``(N, 1, H, W)`` and ``y`` int64 ``(N,)``. ``val`` may have 0 rows.
    num_classes : int
        Number of label classes.
    input_shape : tuple of int
        ``(C, H, W)`` of one image.
    name : str
        Dataset name, one of :data:`DATASETS`.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzip-compressed if the name ends in ``.gz``).

    Parameters
    ----------
    path : str or PathLike
        File to read. Only the IDX binary layout is parsed; nothing is unpickled.

    Returns
    -------
    numpy.ndarray
        Writable array in native byte order with the shape stored in the header.

    Raises
    ------
    ValueError
        If the magic number is invalid, the file is truncated or has trailing bytes, or the gzip
        stream is corrupt.

    Example
    -------
    >>> images = read_idx("data/mnist/t10k-images-idx3-ubyte.gz")  # doctest: +SKIP
    >>> images.shape, images.dtype                                  # doctest: +SKIP
    ((10000, 28, 28), dtype('uint8'))
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        try:
            raw = fh.read()
        except (EOFError, OSError, zlib.error) as exc:  # gzip reports truncation / corruption lazily
            raise ValueError(f"{path}: corrupt gzip stream ({exc}); re-extract or re-copy the file") from exc

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        codes = ", ".join(f"0x{code:02X}" for code in _IDX_DTYPES)
        raise ValueError(
            f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}); expected two zero bytes, "
            f"a dtype code in {{{codes}}} and a non-zero number of dimensions"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header_len}); re-copy the file")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    count = math.prod(shape)
    expected = header_len + count * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX file {problem}: header declares shape {shape} ({expected} bytes in total) "
            f"but the file holds {len(raw)} bytes; re-copy the file"
        )
    data = np.frombuffer(raw, dtype, count=count, offset=header_len).reshape(shape)
    # astype copies: frombuffer views immutable bytes, and torch wants writable native-order arrays.
    return data.astype(dtype.newbyteorder("="))


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.1,
    image_size: int | None = None,
    seed: int = 0,
) -> DatasetSplits:
    """Load a dataset as normalised train / val / test tensors.

    ``"digits"`` (1797 8x8 images from scikit-learn) is split by a seeded permutation into 20% test,
    then ``val_fraction`` of the rest as validation. ``"mnist"`` / ``"fashion-mnist"`` are read from the
    four IDX files in ``data_dir``; the 60k training images are split into train / val by a seeded
    permutation and the 10k ``t10k`` images are the test set. Pixels are scaled to [0, 1], optionally
    resized, then standardised with the scalar mean and std of the train split.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    data_dir : str or PathLike, optional
        Folder holding the IDX files (raw or ``.gz``). Required for MNIST-style datasets, ignored for digits.
    val_fraction : float
        Fraction in [0, 1) of the non-test images held out for validation; 0 gives an empty val split.
    image_size : int, optional
        Resize images bilinearly to ``image_size x image_size`` (e.g. 28 to feed digits to a LeNet).
    seed : int
        Seed of the split permutations.

    Returns
    -------
    DatasetSplits

    Raises
    ------
    ValueError
        On an unknown name, out-of-range arguments, a missing ``data_dir`` or malformed files.
    DatasetNotFoundError
        If ``data_dir`` lacks one of the expected IDX files.

    Example
    -------
    >>> splits = load_dataset("digits", image_size=28, seed=1)
    >>> splits.input_shape, len(splits.test)
    ((1, 28, 28), 359)
    """
    check_choice("name", name, DATASETS)
    check_in_range("val_fraction", val_fraction, 0.0, 1.0, high_inclusive=False)
    if image_size is not None:
        check_positive_int("image_size", image_size)
    rng = np.random.default_rng(seed)

    if name == "digits":
        images, labels = _load_digits()
        order = torch.from_numpy(rng.permutation(len(labels)))
        n_test = round(len(labels) * _DIGITS_TEST_FRACTION)
        test_x, test_y = images[order[:n_test]], labels[order[:n_test]]
        pool_x, pool_y = images[order[n_test:]], labels[order[n_test:]]
    else:
        if data_dir is None:
            raise ValueError(
                f"dataset {name!r} is read from local IDX files: pass data_dir (--data-dir on the command line) "
                f"pointing to the folder holding {', '.join(_IDX_FILES)}"
            )
        pool_x, pool_y, test_x, test_y = _load_idx_folder(Path(data_dir))

    n_val = round(len(pool_y) * val_fraction)
    if n_val == len(pool_y):
        raise ValueError(
            f"val_fraction={val_fraction} leaves no training images out of {len(pool_y)}; use a smaller val_fraction"
        )
    order = torch.from_numpy(rng.permutation(len(pool_y)))
    val_x, val_y = pool_x[order[:n_val]], pool_y[order[:n_val]]
    train_x, train_y = pool_x[order[n_val:]], pool_y[order[n_val:]]

    if image_size is not None and image_size != train_x.shape[-1]:
        train_x, val_x, test_x = (_resize(x, image_size) for x in (train_x, val_x, test_x))

    std, mean = torch.std_mean(train_x, correction=0)
    if std.item() == 0.0:
        raise ValueError(f"{name}: every training pixel has the same value, so the images cannot be normalised")
    train_x, val_x, test_x = ((x - mean) / std for x in (train_x, val_x, test_x))

    return DatasetSplits(
        train=TensorDataset(train_x, train_y),
        val=TensorDataset(val_x, val_y),
        test=TensorDataset(test_x, test_y),
        num_classes=_NUM_CLASSES,
        input_shape=tuple(train_x.shape[1:]),
        name=name,
    )


def make_loaders(
    splits: DatasetSplits,
    batch_size: int = 128,
    eval_batch_size: int = 1000,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Build train / val / test loaders yielding ``(x, y)`` batches.

    Batches are gathered with one tensor index per batch rather than per-sample ``__getitem__`` plus
    collation, which dominates the cost of small models on a CPU.

    Parameters
    ----------
    splits : DatasetSplits
        Output of :func:`load_dataset`.
    batch_size : int
        Training batch size; the train loader reshuffles every epoch from a generator seeded by ``seed``.
    eval_batch_size : int
        Batch size of the (unshuffled) validation and test loaders.
    seed : int
        Seed of the training shuffle, so equal seeds give equal batch orders.

    Returns
    -------
    tuple of DataLoader
        ``(train, val, test)``; each ``loader.dataset`` is the underlying TensorDataset.

    Example
    -------
    >>> train, val, test = make_loaders(load_dataset("digits"), batch_size=64)
    >>> x, y = next(iter(train))
    >>> x.shape, y.shape
    (torch.Size([64, 1, 8, 8]), torch.Size([64]))
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("eval_batch_size", eval_batch_size)
    generator = torch.Generator().manual_seed(seed)
    shuffled = RandomSampler(splits.train, generator=generator)
    # batch_size=None turns off auto-collation: the sampler yields index lists and TensorDataset
    # answers each with one fancy-indexed (x, y) batch.
    train = DataLoader(splits.train, sampler=BatchSampler(shuffled, batch_size, drop_last=False), batch_size=None)
    val, test = (
        DataLoader(ds, sampler=BatchSampler(SequentialSampler(ds), eval_batch_size, drop_last=False), batch_size=None)
        for ds in (splits.val, splits.test)
    )
    return train, val, test


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Return the sklearn digits as float32 ``(1797, 1, 8, 8)`` in [0, 1] and int64 labels."""
    # Imported here so MNIST-only use does not pay for importing scikit-learn.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).to(torch.float32).div_(_DIGITS_MAX_PIXEL).unsqueeze(1)
    return images, torch.from_numpy(digits.target).to(torch.int64)


def _load_idx_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read the four IDX files of ``folder`` as (train_x, train_y, test_x, test_y) tensors in [0, 1]."""
    paths = {stem: _find_idx_file(folder, stem) for stem in _IDX_FILES}
    missing = [stem for stem, path in paths.items() if path is None]
    if missing:
        where = "does not exist" if not folder.is_dir() else f"is missing {', '.join(missing)}"
        raise DatasetNotFoundError(
            f"dataset folder {folder} {where}. It must contain all four IDX files "
            f"{', '.join(_IDX_FILES)} (each raw or with .gz). This toolkit never downloads data: "
            f"copy the files there yourself."
        )
    train_x, train_y = _images_and_labels(paths["train-images-idx3-ubyte"], paths["train-labels-idx1-ubyte"])
    test_x, test_y = _images_and_labels(paths["t10k-images-idx3-ubyte"], paths["t10k-labels-idx1-ubyte"])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(
            f"{folder}: train images are {tuple(train_x.shape[2:])} but test images are "
            f"{tuple(test_x.shape[2:])}; the files come from different datasets"
        )
    return train_x, train_y, test_x, test_y


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    """Return ``folder/stem`` or ``folder/stem.gz`` (raw preferred: no decompression), or None."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _images_and_labels(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and cross-check one image / label IDX pair; images become float32 ``(N, 1, H, W)`` in [0, 1]."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if labels.size and labels.max() >= _NUM_CLASSES:
        raise ValueError(f"{labels_path}: labels must be in 0..{_NUM_CLASSES - 1}, found {labels.max()}")
    x = torch.from_numpy(images).to(torch.float32).div_(_IDX_MAX_PIXEL).unsqueeze(1)
    return x, torch.from_numpy(labels).to(torch.int64)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinearly resize a ``(N, C, H, W)`` batch to ``size x size``."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
