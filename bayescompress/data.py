"""Classification datasets: sklearn digits (embedded), MNIST / Fashion-MNIST from local IDX files, CIFAR-10
from its local binary batch files, and the user's own arrays from local ``.npz`` files.

Nothing is ever downloaded and nothing is unpickled: every data set but digits is read from a folder the user
already has, and the digits set ships inside scikit-learn. Every split is a
:class:`~torch.utils.data.TensorDataset` of inputs and ``int64`` labels ``(N,)``: for the named image sets
normalised ``float32`` images ``(N, C, H, W)`` (``C`` = 1, or 3 for CIFAR-10), for ``npz`` the arrays as
stored (the network was trained on them as they are; float32, or int64 for integer inputs).
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler, TensorDataset

from bayescompress._validation import check_choice, check_in_range, check_positive_int

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "DatasetSplits",
    "as_batch",
    "batches_per_epoch",
    "read_idx",
    "read_cifar10_batch",
    "load_dataset",
    "make_loaders",
]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "npz")


def batches_per_epoch(loader: object) -> int | None:
    """The loader's number of batches, or None where it has none (an iterable dataset's DataLoader raises)."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def index_sampler(loader: object) -> object:
    """The sampler that draws ``loader``'s indices (inside a ``BatchSampler``, the one it batches), or None."""
    sampler = getattr(loader, "sampler", None)
    return sampler.sampler if isinstance(sampler, BatchSampler) else sampler


def as_batch(item: object, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One item of a loader as the (inputs, labels) pair training and evaluation need, or a ``ValueError``
    naming ``source`` (the loader), what it yields and what to give instead. Labels must be integer class indices
    of shape (N,); other integer types are returned as int64, the type ``cross_entropy`` takes."""
    pairs = "bayescompress needs loaders that yield (inputs, labels) pairs"
    if isinstance(item, Mapping):
        raise ValueError(f"{source} yields dicts (keys {', '.join(map(repr, item))}); {pairs}: give a dataset (or a "
                         "collate_fn) that returns them as a tuple")
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        what = f"{type(item).__name__}s of {len(item)}" if isinstance(item, (tuple, list)) else type(item).__name__
        extra = (": a collate_fn such as lambda items: default_collate(items)[:2] keeps the first two"
                 if isinstance(item, (tuple, list)) and len(item) > 2 else "")
        raise ValueError(f"{source} yields {what}; {pairs}{extra}")
    x, y = item
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"{source} yields ({type(x).__name__}, {type(y).__name__}) pairs; {pairs} of tensors")
    if y.dim() == 0:
        raise ValueError(f"{source} yields single examples (labels of shape ()); give a DataLoader over the dataset, "
                         "which batches them")
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{source} yields labels of shape {tuple(y.shape)} and type {y.dtype}; labels must be "
                         "integer class indices of shape (N,) (e.g. y.long() for whole-number floats, y.squeeze(1), or "
                         "y.argmax(1) for one-hot rows)")
    if len(x) != len(y):
        raise ValueError(f"{source} yields {len(x)} inputs with {len(y)} labels; each batch needs one label per input")
    return x, (y if y.dtype == torch.int64 else y.long())

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

# The binary version of CIFAR-10 (cifar-10-binary.tar.gz, extracted to cifar-10-batches-bin/).
_CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR10_TEST_FILE = "test_batch.bin"
_CIFAR10_FILES = (*_CIFAR10_TRAIN_FILES, _CIFAR10_TEST_FILE)
_CIFAR10_SHAPE = (3, 32, 32)  # each record: 1 label byte, then the R, G and B planes, each row-major 32x32
_CIFAR10_RECORD_BYTES = 1 + math.prod(_CIFAR10_SHAPE)
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_CIFAR10_WHERE = (
    f'the "CIFAR-10 binary version" (cifar-10-binary.tar.gz) from {_CIFAR10_URL}, extracted; its '
    f"cifar-10-batches-bin folder is the one to pass"
)

_NUM_CLASSES = 10  # every named dataset here has ten classes; npz counts its labels
# The user's own arrays: np.savez(folder / "train.npz", x=inputs, y=labels), the same for test (and val).
_NPZ_FILES = ("train.npz", "test.npz")
_NPZ_VAL_FILE = "val.npz"
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_MAX_PIXEL = 16.0  # load_digits stores 4-bit intensities 0..16
_BYTE_MAX_PIXEL = 255.0  # IDX and CIFAR-10 pixels are uint8


def _split_validation(pool_x: torch.Tensor, pool_y: torch.Tensor, val_fraction: float, rng: np.random.Generator):
    """``((train_x, train_y), (val_x, val_y))``: a seeded ``val_fraction`` of the pool held out for validation."""
    n_val = round(len(pool_y) * val_fraction)
    if val_fraction > 0 and n_val == 0:  # a validation split was asked for: an empty one fails only later
        least = math.floor(0.5 / val_fraction) + 1
        raise ValueError(f"val_fraction={val_fraction} of {len(pool_y)} training images is no validation image; "
                         f"give at least {least} training images, or a larger val_fraction")
    if n_val == len(pool_y):
        raise ValueError(
            f"val_fraction={val_fraction} leaves no training images out of {len(pool_y)}; use a smaller val_fraction"
        )
    order = torch.from_numpy(rng.permutation(len(pool_y)))
    return (pool_x[order[n_val:]], pool_y[order[n_val:]]), (pool_x[order[:n_val]], pool_y[order[:n_val]])


def _load_npz_folder(folder: Path, val_fraction: float, image_size: int | None,
                     rng: np.random.Generator) -> DatasetSplits:
    """The user's own arrays, used as stored: train.npz and test.npz (val.npz, when present, is the validation
    split; otherwise ``val_fraction`` of train.npz is)."""
    missing = [name for name in _NPZ_FILES if not (folder / name).is_file()]
    if missing:
        where = _not_a_folder(folder) or f"is missing {', '.join(missing)}"
        inner = sorted(sub for sub in (folder.iterdir() if folder.is_dir() else ()) if (sub / "train.npz").is_file())
        if inner:
            where += f" (its subfolder {inner[0].name} holds train.npz: pass {inner[0]})"
        raise DatasetNotFoundError(
            f"dataset folder {folder} {where}. It must contain {' and '.join(_NPZ_FILES)} (and may contain "
            f"{_NPZ_VAL_FILE}), each written by np.savez(path, x=inputs, y=labels) with inputs as the network "
            "takes them and integer class labels (N,)."
        )
    pool_x, pool_y = _read_npz_split(folder / "train.npz")
    test_x, test_y = _read_npz_split(folder / "test.npz")
    if (folder / _NPZ_VAL_FILE).is_file():
        (train_x, train_y), (val_x, val_y) = (pool_x, pool_y), _read_npz_split(folder / _NPZ_VAL_FILE)
    else:
        (train_x, train_y), (val_x, val_y) = _split_validation(pool_x, pool_y, val_fraction, rng)
    for part, x in (("test", test_x), ("val", val_x)):
        if x.shape[1:] != train_x.shape[1:]:
            raise ValueError(f"{folder}: the inputs of train.npz are {tuple(train_x.shape[1:])} each but those of "
                             f"{part}.npz are {tuple(x.shape[1:])}; every split must hold inputs of one shape")
    num_classes = int(max(y.max() for y in (train_y, val_y, test_y) if len(y))) + 1
    if num_classes < 2:
        raise ValueError(f"{folder}: every label is 0, so there is nothing to classify; y must hold the classes")
    unseen = {part: sorted(set(y.tolist()) - set(train_y.tolist())) for part, y in (("val", val_y), ("test", test_y))}
    if any(unseen.values()):
        warnings.warn("; ".join(f"the {part} labels {', '.join(map(str, labels[:5]))}"
                                + (" ..." if len(labels) > 5 else "") for part, labels in unseen.items() if labels)
                      + f" of {folder} never occur in training: the network cannot learn those classes",
                      stacklevel=3)
    if image_size is not None and (train_x.dim() != 4 or train_x.shape[-2:] != (image_size, image_size)):
        # not resized here: the exported network would then need the same resizing of every input it is given
        raise ValueError(f"the network needs {image_size}x{image_size} images (N, C, {image_size}, {image_size}), but "
                         f"the inputs of {folder} are {tuple(train_x.shape[1:])} each; store them at that size, or "
                         "choose a network for inputs of this shape (npz data are used as stored)")
    return DatasetSplits.of("npz", num_classes, (train_x, train_y), (val_x, val_y), (test_x, test_y))


def _read_npz_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (float32, or int64 when stored as integers) and ``y`` (int64) from one .npz file, read without
    pickle, or an error naming the fix."""
    not_npz = f"{path} is not a readable .npz file ({{}}); write it with np.savez(path, x=inputs, y=labels)"
    try:
        arrays = np.load(path, allow_pickle=False)
        if not isinstance(arrays, np.lib.npyio.NpzFile):  # a single array saved by np.save
            raise ValueError(not_npz.format("it holds one array, not x and y"))
        with arrays:
            if not {"x", "y"} <= set(arrays.files):
                raise ValueError(f"{path} holds the arrays {', '.join(sorted(arrays.files)) or 'none'}; it must hold "
                                 "x (the inputs) and y (the integer labels): np.savez(path, x=inputs, y=labels)")
            x, y = arrays["x"], arrays["y"]
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(not_npz.format(error)) from None
    except ValueError as error:
        if "Object arrays" in str(error):  # their elements are pickles, which are never loaded
            raise ValueError(f"{path} holds an object array, which is stored as a pickle and is never loaded; "
                             "store numeric arrays (e.g. np.asarray(x, dtype=np.float32))") from None
        if "allow_pickle" in str(error):  # neither .npz nor .npy: numpy would try it as a pickle
            raise ValueError(not_npz.format("numpy would read it as a pickle, which is never loaded")) from None
        raise
    if x.ndim < 2 or len(x) == 0 or not any(np.issubdtype(x.dtype, kind) for kind in (np.integer, np.floating, bool)):
        raise ValueError(f"{path}: x must be an array of inputs (N, ...) with N >= 1, of integers, floats or "
                         f"booleans; got {x.dtype} {x.shape}")
    if y.shape != (len(x),):
        raise ValueError(f"{path}: y must hold one label per input, shape ({len(x)},); got {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        whole = np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all()
        if not whole:
            kind = ("text (strings)" if y.dtype.kind in "USO" else
                    "fractions" if np.issubdtype(y.dtype, np.floating) else f"{y.dtype}")
            raise ValueError(f"{path}: y must hold integer class labels 0, 1, ...; got {kind} (dtype {y.dtype}): map "
                             "each class to its index first")
    if y.min() < 0:
        raise ValueError(f"{path}: y must hold class labels 0, 1, ...; found {int(y.min())}")
    # integers stay integers (token ids or category indices for an nn.Embedding); other inputs become float32
    if np.issubdtype(x.dtype, np.integer):
        return torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))
    with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf, named below
        inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if not torch.isfinite(inputs).all():
        raise ValueError(f"{path}: x holds NaN or infinite values, or values beyond float32's range (about 3.4e38); "
                         "clean, impute or rescale them first")
    return inputs, torch.from_numpy(y.astype(np.int64))


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder is missing or lacks some of the files it must hold (IDX files, CIFAR-10 batches)."""


@dataclass(frozen=True)
class DatasetSplits:
    """Train / validation / test splits of one dataset: the named image sets normalised with train-split
    statistics, ``npz`` arrays as stored.

    Attributes
    ----------
    train, val, test : TensorDataset
        ``(x, y)`` with ``x`` float32 ``(N, C, H, W)`` images for the named sets, any ``(N, ...)`` for ``npz``
        (float32, or int64 for integer inputs), and ``y`` int64 ``(N,)``. ``val`` may have 0 rows.
    num_classes : int
        Number of label classes (ten for the named sets; the largest label plus one for ``npz``).
    input_shape : tuple of int
        The shape of one input, ``(C, H, W)`` for an image.
    name : str
        Dataset name, one of :data:`DATASETS`.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    name: str

    @classmethod
    def of(cls, name: str, num_classes: int, *splits: tuple[torch.Tensor, torch.Tensor]) -> DatasetSplits:
        """The splits of ``(inputs, labels)`` pairs, train, val and test in that order."""
        train, val, test = (TensorDataset(x, y) for x, y in splits)
        return cls(train, val, test, num_classes, tuple(train.tensors[0].shape[1:]), name)


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (gzip-compressed if the name ends in ``.gz``).

    Parameters
    ----------
    path : str or PathLike
        File to read. Only the IDX binary layout is parsed; nothing is unpickled.
    ndim : int, optional
        The number of dimensions the file must declare (3 for images, 1 for labels): another is refused as the
        wrong kind of file, before its header's shape is read from bytes that are not one.

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
    if ndim is not None and raw[3] != ndim:
        raise ValueError(f"{path}: its header declares {raw[3]} dimensions where this file has {ndim} ("
                         f"{'images (N, H, W)' if ndim == 3 else 'labels (N,)' if ndim == 1 else 'the data'}): "
                         "is it another file of the set under this name? Put the right file here")
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


def read_cifar10_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file of the binary version of CIFAR-10 (``data_batch_1.bin`` ... ``test_batch.bin``).

    The file is a run of 3073-byte records: one label byte (0-9), then 3072 pixel bytes, the 1024 red, 1024
    green and 1024 blue values of a 32x32 image, each plane row-major. The standard files hold 10000
    records, but any number is read.

    Parameters
    ----------
    path : str or PathLike
        File to read. Only the binary layout is parsed; nothing is unpickled.

    Returns
    -------
    images : numpy.ndarray
        uint8 ``(N, 3, 32, 32)``: ``images[n, c, row, col]`` with channels R, G, B.
    labels : numpy.ndarray
        uint8 ``(N,)`` in 0..9.

    Raises
    ------
    ValueError
        If the file is empty, its size is not a multiple of the record size, or a label is above 9.

    Example
    -------
    >>> images, labels = read_cifar10_batch("data/cifar-10-batches-bin/test_batch.bin")  # doctest: +SKIP
    >>> images.shape, labels.shape                                                        # doctest: +SKIP
    ((10000, 3, 32, 32), (10000,))
    """
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise ValueError(
            f"{path}: empty CIFAR-10 batch file (0 bytes); it should hold {_CIFAR10_RECORD_BYTES}-byte records. "
            f"Re-copy it, or extract {_CIFAR10_WHERE}"
        )
    count, stray = divmod(raw.size, _CIFAR10_RECORD_BYTES)
    if stray:
        raise ValueError(
            f"{path}: wrong-sized CIFAR-10 batch file: {raw.size} bytes is not a multiple of the "
            f"{_CIFAR10_RECORD_BYTES}-byte record (1 label byte + {_CIFAR10_RECORD_BYTES - 1} pixel bytes), so "
            f"the file is truncated or not from the binary version. Re-copy it, or extract {_CIFAR10_WHERE}"
        )
    records = raw.reshape(count, _CIFAR10_RECORD_BYTES)
    labels = records[:, 0].copy()
    bad = np.flatnonzero(labels >= _NUM_CLASSES)
    if bad.size:
        raise ValueError(
            f"{path}: record {bad[0]} has label {labels[bad[0]]} ({bad.size} of {count} records have labels "
            f"above {_NUM_CLASSES - 1}); CIFAR-10 labels are 0..{_NUM_CLASSES - 1}, so the file is corrupt or "
            f"not a CIFAR-10 batch. Re-copy it, or extract {_CIFAR10_WHERE}"
        )
    # C-order reshape maps the byte after the label at 1024*c + 32*row + col to [c, row, col].
    images = np.ascontiguousarray(records[:, 1:].reshape(count, *_CIFAR10_SHAPE))
    return images, labels


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
    permutation and the 10k ``t10k`` images are the test set. ``"cifar10"`` is read from the binary
    version's ``data_batch_1.bin`` ... ``data_batch_5.bin`` (train / val, split the same way) and
    ``test_batch.bin`` (test) in ``data_dir``; the pickled python version is refused. Pixels are scaled to
    [0, 1], optionally resized, then standardised per channel with the mean and std of the train split.
    ``"npz"`` is the user's own data: ``train.npz`` and ``test.npz`` in ``data_dir``, each written by
    ``np.savez(path, x=inputs, y=labels)``, read without pickle and used as stored (images of another size than
    ``image_size`` are refused); a ``val.npz`` there is the validation split, otherwise ``val_fraction`` of
    train.npz is.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    data_dir : str or PathLike, optional
        Folder holding the IDX files (raw or ``.gz``), the CIFAR-10 ``.bin`` batches or the ``.npz`` files.
        Required for every dataset but digits; refused for digits (a folder given there means the data set was not named).
    val_fraction : float
        Fraction in [0, 1) of the non-test images held out for validation; 0 gives an empty val split
        (ignored for ``npz`` with a ``val.npz``).
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
        If ``data_dir`` does not exist or lacks one of the expected files (or holds CIFAR-10's python version).

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
        if data_dir is not None:  # a folder given with the default data set: the data set was forgotten
            raise ValueError(f"data_dir {str(data_dir)!r} is given but the dataset is 'digits', which ships with "
                             "scikit-learn and reads no folder; name the folder's data set (--dataset mnist, "
                             "fashion-mnist, cifar10 or npz on the command line)")
        images, labels = _load_digits()
        order = torch.from_numpy(rng.permutation(len(labels)))
        n_test = round(len(labels) * _DIGITS_TEST_FRACTION)
        test_x, test_y = images[order[:n_test]], labels[order[:n_test]]
        pool_x, pool_y = images[order[n_test:]], labels[order[n_test:]]
    elif name == "npz":
        if data_dir is None:
            raise ValueError("dataset 'npz' is read from local .npz files: pass data_dir (--data-dir on the command "
                             f"line) pointing to the folder holding {' and '.join(_NPZ_FILES)} (and optionally "
                             f"{_NPZ_VAL_FILE}), each written by np.savez(path, x=inputs, y=labels)")
        return _load_npz_folder(Path(data_dir), val_fraction, image_size, rng)
    else:
        if data_dir is None:
            kind, files = ("binary CIFAR-10 batch", _CIFAR10_FILES) if name == "cifar10" else ("IDX", _IDX_FILES)
            raise ValueError(
                f"dataset {name!r} is read from local {kind} files: pass data_dir (--data-dir on the command line) "
                f"pointing to the folder holding {', '.join(files)}"
            )
        loader = _load_cifar10_folder if name == "cifar10" else _load_idx_folder
        pool_x, pool_y, test_x, test_y = loader(Path(data_dir))
        for part, labels in (("training", pool_y), ("test", test_y)):
            if len(labels) == 0:  # every metric is measured on the test split: refuse before any training
                raise ValueError(f"the {part} files of dataset {name!r} in {data_dir} hold no images; give a "
                                 "folder whose training and test files each hold at least one")

    (train_x, train_y), (val_x, val_y) = _split_validation(pool_x, pool_y, val_fraction, rng)
    del pool_x, pool_y  # the splits above are copies
    # Stored bytes become floats only now, so the split copies CIFAR-10's 50k images as uint8 (150 MB)
    # rather than as float32 (600 MB).
    train_x, val_x, test_x = (_to_unit_float(x) for x in (train_x, val_x, test_x))

    if image_size is not None and image_size != train_x.shape[-1]:
        train_x, val_x, test_x = (_resize(x, image_size) for x in (train_x, val_x, test_x))

    # Per channel (a single scalar pair for the greyscale sets), from the train split only.
    std, mean = torch.std_mean(train_x, dim=(0, 2, 3), correction=0, keepdim=True)
    flat = (std.flatten() == 0.0).nonzero().flatten().tolist()
    if flat:
        where = "every training pixel has" if std.numel() == 1 else f"every training pixel of channel(s) {flat} has"
        raise ValueError(f"{name}: {where} the same value, so the images cannot be normalised")
    for x in (train_x, val_x, test_x):  # in place: all three are fresh copies owned here
        x.sub_(mean).div_(std)

    return DatasetSplits.of(name, _NUM_CLASSES, (train_x, train_y), (val_x, val_y), (test_x, test_y))


class ShardedRandomSampler(Sampler[int]):
    """Rank ``rank``'s share of one shuffle of ``size`` indices that every rank draws alike (same generator
    seed): every ``world_size``-th index of the permutation from ``rank`` on, the permutation padded with its
    first indices to a multiple of ``world_size`` (as ``DistributedSampler`` pads). Batching each share by
    ``B / world_size`` makes the ranks' k-th batches together exactly the k-th batch of size ``B`` a single
    process draws from the same generator, and the generator advances by itself every epoch (no ``set_epoch``)."""

    def __init__(self, size: int, generator: torch.Generator, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.size, self.generator, self.rank, self.world_size = size, generator, rank, world_size

    def __len__(self) -> int:
        return -(-self.size // self.world_size)

    def __iter__(self):
        order = torch.randperm(self.size, generator=self.generator)
        padded = torch.cat([order, order[: len(self) * self.world_size - self.size]])
        return iter(padded[self.rank::self.world_size].tolist())


def make_loaders(
    splits: DatasetSplits,
    batch_size: int = 128,
    eval_batch_size: int = 1000,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
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
    rank, world_size : int
        For a distributed run: the train loader yields this rank's share of each batch of ``batch_size``
        (which ``world_size`` must divide; see :class:`ShardedRandomSampler`); validation and test stay whole.

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
    check_positive_int("world_size", world_size)
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is the global batch of {world_size} processes and must be a "
                         f"multiple of it; use e.g. --batch-size {batch_size - batch_size % world_size or world_size}")
    generator = torch.Generator().manual_seed(seed)
    shuffled = (RandomSampler(splits.train, generator=generator) if world_size == 1 else
                ShardedRandomSampler(len(splits.train), generator, rank, world_size))
    # batch_size=None turns off auto-collation: the sampler yields index lists and TensorDataset
    # answers each with one fancy-indexed (x, y) batch.
    train = DataLoader(splits.train, sampler=BatchSampler(shuffled, batch_size // world_size, drop_last=False),
                       batch_size=None)
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


def _to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """Byte pixels as float32 in [0, 1]; float images (digits) are already scaled."""
    return x.to(torch.float32).div_(_BYTE_MAX_PIXEL) if x.dtype == torch.uint8 else x


def _not_a_folder(folder: Path) -> str | None:
    """What is wrong with ``folder`` as a data folder when it is not one (None when it is)."""
    if folder.is_dir():
        return None
    return ("is a file, not a folder: give the folder that holds the data set's files" if folder.exists()
            else "does not exist")


def _load_idx_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read the four IDX files of ``folder`` as (train_x, train_y, test_x, test_y); x uint8 ``(N, 1, H, W)``."""
    paths = {stem: _find_idx_file(folder, stem) for stem in _IDX_FILES}
    missing = [stem for stem, path in paths.items() if path is None]
    if missing:
        where = _not_a_folder(folder) or f"is missing {', '.join(missing)}"
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


def _load_cifar10_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read the six binary CIFAR-10 batches of ``folder`` as (train_x, train_y, test_x, test_y), x uint8."""
    missing = [name for name in _CIFAR10_FILES if not (folder / name).is_file()]
    if missing:
        # The python version names the same batches without .bin; its files are pickles, which can run
        # arbitrary code when loaded, so they are refused rather than read.
        pickled = [name.removesuffix(".bin") for name in missing if (folder / name.removesuffix(".bin")).is_file()]
        if not folder.is_dir():
            problem = _not_a_folder(folder)
        elif pickled:
            problem = (
                f"holds {', '.join(pickled)} without .bin: that is the pickled python version of CIFAR-10, which "
                f"this toolkit does not read (only the binary version is read, never a pickle)"
            )
        else:
            problem = f"is missing {', '.join(missing)}"
            if (folder / "cifar-10-batches-bin").is_dir():
                problem += f" (it has a cifar-10-batches-bin subfolder: pass {folder / 'cifar-10-batches-bin'})"
        raise DatasetNotFoundError(
            f"CIFAR-10 folder {folder} {problem}. It must contain the binary batch files {', '.join(_CIFAR10_FILES)}, "
            f"i.e. {_CIFAR10_WHERE}. This toolkit never downloads data: copy the files there yourself."
        )
    batches = [read_cifar10_batch(folder / name) for name in _CIFAR10_TRAIN_FILES]
    train_x = torch.from_numpy(np.concatenate([images for images, _ in batches]))
    train_y = torch.from_numpy(np.concatenate([labels for _, labels in batches])).to(torch.int64)
    del batches
    test_images, test_labels = read_cifar10_batch(folder / _CIFAR10_TEST_FILE)
    return train_x, train_y, torch.from_numpy(test_images), torch.from_numpy(test_labels).to(torch.int64)


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    """Return ``folder/stem`` or ``folder/stem.gz`` (raw preferred: no decompression), or None."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _images_and_labels(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and cross-check one image / label IDX pair; images become uint8 ``(N, 1, H, W)``."""
    images, labels = read_idx(images_path, ndim=3), read_idx(labels_path, ndim=1)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if labels.size and labels.max() >= _NUM_CLASSES:
        raise ValueError(f"{labels_path}: labels must be in 0..{_NUM_CLASSES - 1}, found {labels.max()}")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).to(torch.int64)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinearly resize a ``(N, C, H, W)`` batch to ``size x size``."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
