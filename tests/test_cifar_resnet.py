"""CIFAR-10 binary reader and the reference ResNet-20, on tiny synthetic batch files (no real CIFAR-10)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bayescompress.data import DATASETS, DatasetNotFoundError, load_dataset, read_cifar10_batch
from bayescompress.models import MODELS, REQUIRED_IMAGE_SIZE, build_model, model_from_architecture, resnet20

TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
PER_FILE = 7  # records per batch file (the real files hold 10000)
N_TRAIN, N_TEST = 5 * PER_FILE, PER_FILE
RECORD_BYTES = 1 + 3 * 32 * 32


def known_planes() -> np.ndarray:
    """Three distinct 32x32 patterns: R varies by row only, G by column only, B is a checkerboard."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([rows * 8, cols * 8 + 3, (rows + cols) % 2 * 200 + 20]).astype(np.uint8)


def record_bytes(label: int, planes: np.ndarray) -> bytes:
    """One record spelled out from the file format, byte by byte (deliberately not via reshape/tobytes)."""
    out = bytearray([label])
    for channel in range(3):  # 1024 R bytes, then 1024 G, then 1024 B
        for row in range(32):  # each plane row-major
            for col in range(32):
                out.append(int(planes[channel, row, col]))
    return bytes(out)


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write records with numpy (fast); the byte layout itself is checked against :func:`record_bytes`."""
    records = np.concatenate([labels[:, None], images.reshape(len(labels), -1)], axis=1).astype(np.uint8)
    path.write_bytes(records.tobytes())


def random_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Channels with different ranges, so per-channel and scalar normalisation give different results."""
    return np.stack([rng.integers(0, 256, (n, 32, 32)), rng.integers(0, 128, (n, 32, 32)),
                     rng.integers(128, 256, (n, 32, 32))], axis=1).astype(np.uint8)


@pytest.fixture
def cifar_dir(tmp_path: Path) -> dict[str, np.ndarray]:
    """Six batch files of 7 records. Train record i has R pixel (0, 0) = i, so it can be traced through the
    split permutation; the first test record carries :func:`known_planes`."""
    rng = np.random.default_rng(7)
    train_x = random_images(rng, N_TRAIN)
    train_x[:, 0, 0, 0] = np.arange(N_TRAIN)
    train_y = (np.arange(N_TRAIN) * 3 % 10).astype(np.uint8)
    test_x = random_images(rng, N_TEST)
    test_x[0] = known_planes()
    test_y = rng.integers(0, 10, N_TEST).astype(np.uint8)
    for k, name in enumerate(TRAIN_FILES):
        part = slice(k * PER_FILE, (k + 1) * PER_FILE)
        write_batch(tmp_path / name, train_x[part], train_y[part])
    write_batch(tmp_path / TEST_FILE, test_x, test_y)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


# --- the binary reader ----------------------------------------------------------------------------------------------


def test_writer_matches_the_documented_byte_layout(tmp_path: Path) -> None:
    write_batch(tmp_path / "one.bin", known_planes()[None], np.array([4], dtype=np.uint8))
    assert (tmp_path / "one.bin").read_bytes() == record_bytes(4, known_planes())


def test_read_cifar10_batch_puts_planes_rows_and_columns_in_place(tmp_path: Path) -> None:
    planes = known_planes()
    other = np.full((3, 32, 32), 9, dtype=np.uint8)
    (tmp_path / "b.bin").write_bytes(record_bytes(3, planes) + record_bytes(9, other))
    images, labels = read_cifar10_batch(tmp_path / "b.bin")
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8 and images.flags.c_contiguous
    np.testing.assert_array_equal(labels, [3, 9])
    # R depends on the row only, G on the column only: a transposed or channel-interleaved reading fails here.
    assert images[0, 0, 5, 0] == images[0, 0, 5, 31] == 40 and images[0, 0, 6, 0] == 48
    assert images[0, 1, 0, 5] == images[0, 1, 31, 5] == 43
    assert images[0, 2, 0, 0] == 20 and images[0, 2, 0, 1] == 220
    np.testing.assert_array_equal(images[0], planes)
    np.testing.assert_array_equal(images[1], other)


def test_cifar10_splits_shapes_labels_and_sizes(tmp_path: Path, cifar_dir: dict[str, np.ndarray]) -> None:
    assert "cifar10" in DATASETS
    splits = load_dataset("cifar10", tmp_path, val_fraction=0.2, seed=1)
    assert splits.name == "cifar10" and splits.num_classes == 10 and splits.input_shape == (3, 32, 32)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (28, 7, N_TEST)
    for ds in (splits.train, splits.val, splits.test):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        assert y.dtype == torch.int64 and y.shape == (len(x),)
    np.testing.assert_array_equal(splits.test.tensors[1].numpy(), cifar_dir["test_y"])  # test keeps file order
    every = load_dataset("cifar10", tmp_path, val_fraction=0.0)
    assert (len(every.train), len(every.val), len(every.test)) == (N_TRAIN, 0, N_TEST)


def test_cifar10_is_normalised_per_channel_with_train_statistics(
    tmp_path: Path, cifar_dir: dict[str, np.ndarray]
) -> None:
    splits = load_dataset("cifar10", tmp_path, val_fraction=0.2, seed=1)
    std, mean = torch.std_mean(splits.train.tensors[0], dim=(0, 2, 3), correction=0)
    np.testing.assert_allclose(mean.numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(std.numpy(), 1.0, atol=1e-5)

    # Invert the normalisation channel by channel: a linear fit of written on loaded test pixels.
    written_test = cifar_dir["test_x"] / 255.0
    x_test = splits.test.tensors[0].double().numpy()
    fits = [np.polyfit(x_test[:, c].ravel(), written_test[:, c].ravel(), 1) for c in range(3)]
    scale = np.array([s for s, _ in fits]).reshape(1, 3, 1, 1)
    shift = np.array([m for _, m in fits]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(x_test * scale + shift, written_test, atol=1e-5)
    np.testing.assert_array_equal(np.rint((x_test[0] * scale[0] + shift[0]) * 255), known_planes())

    # Train and val together are the five train batches; the statistics are those of the train split alone.
    ids = []
    for ds in (splits.train, splits.val):
        x, y = ds.tensors
        pixels = x.double().numpy() * scale + shift
        idx = np.rint(pixels[:, 0, 0, 0] * 255).astype(int)
        np.testing.assert_allclose(pixels, cifar_dir["train_x"][idx] / 255.0, atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), cifar_dir["train_y"][idx])
        ids.append(idx)
    np.testing.assert_array_equal(np.sort(np.concatenate(ids)), np.arange(N_TRAIN))
    train_pixels = cifar_dir["train_x"][ids[0]] / 255.0
    np.testing.assert_allclose(shift.ravel(), train_pixels.mean(axis=(0, 2, 3)), atol=1e-5)
    np.testing.assert_allclose(scale.ravel(), train_pixels.std(axis=(0, 2, 3)), atol=1e-5)


def test_cifar10_image_size_resizes_all_three_channels(tmp_path: Path, cifar_dir: dict[str, np.ndarray]) -> None:
    splits = load_dataset("cifar10", tmp_path, image_size=28)
    assert splits.input_shape == (3, 28, 28) and splits.test.tensors[0].shape == (N_TEST, 3, 28, 28)


# --- bad inputs -----------------------------------------------------------------------------------------------------


def test_cifar10_without_data_dir_asks_for_data_dir() -> None:
    with pytest.raises(ValueError, match=r"data_dir \(--data-dir.*data_batch_1\.bin.*test_batch\.bin"):
        load_dataset("cifar10")


def test_cifar10_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"absent does not exist.*data_batch_1\.bin.*never downloads"):
        load_dataset("cifar10", tmp_path / "absent")


@pytest.mark.parametrize("dropped", [("data_batch_3.bin",), ("test_batch.bin",), ("data_batch_1.bin", "test_batch.bin")])
def test_cifar10_missing_batch_files_are_named(
    tmp_path: Path, cifar_dir: dict[str, np.ndarray], dropped: tuple[str, ...]
) -> None:
    for name in dropped:
        (tmp_path / name).unlink()
    with pytest.raises(DatasetNotFoundError, match=rf"is missing {', '.join(dropped)}\. It must contain") as info:
        load_dataset("cifar10", tmp_path)
    assert isinstance(info.value, FileNotFoundError) and "cifar-10-binary.tar.gz" in str(info.value)


def test_cifar10_parent_folder_points_to_the_subfolder(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-bin").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"subfolder: pass .*cifar-10-batches-bin"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_python_version_is_refused_unread(tmp_path: Path) -> None:
    # Not even valid pickles: reading them at all would fail differently.
    for name in (*TRAIN_FILES, TEST_FILE):
        (tmp_path / name.removesuffix(".bin")).write_bytes(b"\x80\x04 not read")
    (tmp_path / "batches.meta").write_bytes(b"\x80\x04 not read")
    with pytest.raises(DatasetNotFoundError, match=r"data_batch_1, .*test_batch without \.bin: that is the pickled "
                                                   r"python version.*only the binary version is read") as info:
        load_dataset("cifar10", tmp_path)
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in str(info.value)


def test_cifar10_wrong_sized_batch(tmp_path: Path, cifar_dir: dict[str, np.ndarray]) -> None:
    path = tmp_path / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-5])
    size = PER_FILE * RECORD_BYTES - 5
    with pytest.raises(ValueError, match=rf"data_batch_2\.bin: wrong-sized .*{size} bytes is not a multiple of the "
                                         rf"{RECORD_BYTES}-byte record"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_empty_batch(tmp_path: Path, cifar_dir: dict[str, np.ndarray]) -> None:
    (tmp_path / TEST_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match=r"test_batch\.bin: empty CIFAR-10 batch file \(0 bytes\)"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("label", [10, 255])
def test_cifar10_label_above_9(tmp_path: Path, cifar_dir: dict[str, np.ndarray], label: int) -> None:
    path = tmp_path / "data_batch_5.bin"
    raw = bytearray(path.read_bytes())
    raw[4 * RECORD_BYTES] = label
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"data_batch_5\.bin: record 4 has label {label} .*labels are 0\.\.9"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_constant_channel_cannot_be_normalised(tmp_path: Path, cifar_dir: dict[str, np.ndarray]) -> None:
    for name in TRAIN_FILES:
        images, labels = read_cifar10_batch(tmp_path / name)
        images[:, 2] = 50
        write_batch(tmp_path / name, images, labels)
    with pytest.raises(ValueError, match=r"channel\(s\) \[2\] has the same value"):
        load_dataset("cifar10", tmp_path)


# --- resnet20 -------------------------------------------------------------------------------------------------------


def _conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k  # bias-free


def _bn(c: int) -> int:
    return 2 * c  # weight and bias; running statistics are buffers


def test_resnet20_parameter_count_by_hand() -> None:
    def block(c_in: int, c_out: int) -> int:
        body = _conv(c_in, c_out, 3) + _bn(c_out) + _conv(c_out, c_out, 3) + _bn(c_out)
        projection = _conv(c_in, c_out, 1) + _bn(c_out) if c_in != c_out else 0  # option B
        return body + projection

    stem = _conv(3, 16, 3) + _bn(16)
    stages = [(16, 16)] * 3 + [(16, 32)] + [(32, 32)] * 2 + [(32, 64)] + [(64, 64)] * 2
    head = 64 * 10 + 10
    expected = stem + sum(block(*s) for s in stages) + head
    assert expected == 272_474
    assert sum(p.numel() for p in resnet20().parameters()) == expected
    # Option A (the paper's 0.27M) replaces the two projections by zero-padded identities without parameters.
    projections = _conv(16, 32, 1) + _bn(32) + _conv(32, 64, 1) + _bn(64)
    assert expected - projections == 269_722


def test_resnet20_layout_and_output_shape() -> None:
    model = resnet20().eval()
    assert not isinstance(model, nn.Sequential)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.kernel_size == (3, 3) for c in convs) == 19 and sum(c.kernel_size == (1, 1) for c in convs) == 2
    assert all(c.bias is None for c in convs)
    shapes = {}
    hooks = [getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.update({name: o.shape[1:]}))
             for name in ("layer1", "layer2", "layer3")]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    for hook in hooks:
        hook.remove()
    assert shapes == {"layer1": (16, 32, 32), "layer2": (32, 16, 16), "layer3": (64, 8, 8)}
    assert isinstance(model.layer1[0].shortcut, nn.Identity) and isinstance(model.layer2[1].shortcut, nn.Identity)
    projection = model.layer3[0].shortcut
    assert isinstance(projection[0], nn.Conv2d) and projection[0].stride == (2, 2) and isinstance(projection[1], nn.BatchNorm2d)


def test_resnet20_width_channels_and_classes() -> None:
    model = resnet20(in_channels=1, num_classes=4, width=8)
    assert model.conv1.in_channels == 1 and model.layer3[0].conv1.out_channels == 32 and model.fc.in_features == 32
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"num_classes": -1}, {"in_channels": True}, {"width": 2.0}])
def test_resnet20_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be an integer >= 1"):
        resnet20(**kwargs)


@pytest.mark.parametrize("stage, index", [("layer1", 1), ("layer2", 0)])
def test_resnet20_blocks_sum_the_shortcut(stage: str, index: int) -> None:
    model = resnet20().eval()
    block = getattr(model, stage)[index]
    x = torch.randn(2, block.conv1.in_channels, 16, 16)
    with torch.no_grad():
        shortcut = torch.relu(block.shortcut(x))
        assert not torch.allclose(block(x), shortcut)  # the residual branch contributes
        block.conv2.weight.zero_()  # the branch now ends in bn2(0) = its bias, 0 at initialisation
        torch.testing.assert_close(block(x), shortcut)
    if stage == "layer1":
        torch.testing.assert_close(shortcut, torch.relu(x))


def test_build_model_resnet20_round_trips_through_its_record() -> None:
    assert "resnet20" in MODELS and REQUIRED_IMAGE_SIZE["resnet20"] == 32
    model, arch = build_model("resnet20", (3, 32, 32), 10)
    assert arch == {"model": "resnet20", "kwargs": {"in_channels": 3, "num_classes": 10, "width": 16}}
    rebuilt = model_from_architecture(json.loads(json.dumps(arch)))  # as read back from a run folder
    state = model.state_dict()
    assert list(rebuilt.state_dict()) == list(state)
    assert all(rebuilt.state_dict()[k].shape == v.shape for k, v in state.items())
    rebuilt.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


def test_build_model_resnet20_refuses_28x28() -> None:
    with pytest.raises(ValueError, match=r"resnet20 needs 32x32 images; got 28x28 \(resize the data first\)"):
        build_model("resnet20", (1, 28, 28), 10)


def test_cifar10_splits_feed_resnet20(tmp_path: Path, cifar_dir: dict[str, np.ndarray]) -> None:
    splits = load_dataset("cifar10", tmp_path, image_size=REQUIRED_IMAGE_SIZE["resnet20"])
    model, _ = build_model("resnet20", splits.input_shape, splits.num_classes)
    assert model.eval()(splits.test.tensors[0][:2]).shape == (2, 10)
