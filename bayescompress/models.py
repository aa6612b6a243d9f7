"""Reference networks, all plain ``nn.Sequential`` so they convert, prune and export without special cases.

Images arrive as (N, C, H, W); the MLPs flatten them first.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from bayescompress._validation import check_positive_int


def mlp(in_features: int = 64, hidden: Sequence[int] = (100,), num_classes: int = 10) -> nn.Sequential:
    """Flatten -> [Linear -> ReLU] per hidden width -> Linear.

    Example
    -------
    >>> mlp(64, (32, 16), 10)[1]
    Linear(in_features=64, out_features=32, bias=True)
    """
    check_positive_int("in_features", in_features)
    check_positive_int("num_classes", num_classes)
    widths = [in_features, *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, width in zip(widths[:-1], widths[1:]):
        check_positive_int("hidden width", width)
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)


def lenet300(num_classes: int = 10) -> nn.Sequential:
    """LeNet-300-100: the 784-300-100-10 ReLU MLP for 28x28 images."""
    return mlp(784, (300, 100), num_classes)


def lenet5(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """LeNet-5-Caffe for 28x28 images: conv 20@5x5, maxpool 2, conv 50@5x5, maxpool 2, FC 800-500, FC 500-10."""
    check_positive_int("in_channels", in_channels)
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )


MODELS = ("mlp", "lenet300", "lenet5")

# Input side length (pixels) each reference network needs; None = any (the MLP adapts its first layer).
REQUIRED_IMAGE_SIZE: dict[str, int | None] = {"mlp": None, "lenet300": 28, "lenet5": 28}


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (100,)
) -> tuple[nn.Sequential, dict]:
    """Build a reference network by name for inputs of shape (C, H, W).

    Returns the model and its architecture record, which :func:`model_from_architecture` rebuilds from.

    Example
    -------
    >>> model, arch = build_model("mlp", (1, 8, 8), 10, hidden=(32,))
    >>> arch
    {'model': 'mlp', 'kwargs': {'in_features': 64, 'hidden': [32], 'num_classes': 10}}
    """
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {name!r}")
    channels, height, width = (int(v) for v in input_shape)
    size = REQUIRED_IMAGE_SIZE[name]
    if size is not None and (height, width) != (size, size):
        raise ValueError(f"{name} needs {size}x{size} images; got {height}x{width} (resize the data first)")
    kwargs: dict
    if name == "mlp":
        kwargs = {"in_features": channels * height * width, "hidden": [int(h) for h in hidden], "num_classes": num_classes}
    elif name == "lenet300":
        if channels != 1:
            raise ValueError(f"lenet300 needs 1-channel images; got {channels} channels")
        kwargs = {"num_classes": num_classes}
    else:
        kwargs = {"in_channels": channels, "num_classes": num_classes}
    arch = {"model": name, "kwargs": kwargs}
    return model_from_architecture(arch), arch


def model_from_architecture(arch: dict) -> nn.Sequential:
    """Rebuild a reference network from the record :func:`build_model` returned."""
    factories = {"mlp": mlp, "lenet300": lenet300, "lenet5": lenet5}
    try:
        return factories[arch["model"]](**arch["kwargs"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"not a reference-model architecture record: {arch!r} ({error})") from error

