"""Reference networks: sequential MLPs and LeNets, and the CIFAR ResNet-20.

The MLPs and LeNets are plain ``nn.Sequential``, so the built-in sequential export handles them without
special cases. :func:`resnet20` has residual sums, so it is an ordinary ``nn.Module``; compression exports
it through the general graph path (:func:`~bayescompress.pruning.export_with_torch_pruning`).

Images arrive as (N, C, H, W); the MLPs flatten them first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
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


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    The shortcut is the identity when the shape is kept and a strided 1x1 conv + BN otherwise (option B
    of He et al. 2016). Each ReLU is its own module, so hooks and pruning see one activation per site.

    Example
    -------
    >>> block = BasicBlock(16, 32, stride=2)
    >>> block(torch.zeros(1, 16, 8, 8)).shape
    torch.Size([1, 32, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, three stages of basic blocks (``width``, 2x, 4x channels), pool, Linear.

    Stages 2 and 3 start with stride 2, so a 32x32 input ends as 8x8 before the global average pool.
    Build it with :func:`resnet20`.
    """

    def __init__(self, blocks_per_stage: int, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        for field, value in (("blocks_per_stage", blocks_per_stage), ("in_channels", in_channels),
                             ("num_classes", num_classes), ("width", width)):
            check_positive_int(field, value)
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages, channels = [], width
        for stage in range(3):
            out_channels = width * 2**stage
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        # He et al.'s initialisation (fan-out Kaiming normal) rather than PyTorch's default, as in the paper.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet20(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-20 for 32x32 images (He et al. 2016, section 4.2) with option-B (projection) shortcuts.

    Three stages of three basic blocks with ``width``, ``2 * width`` and ``4 * width`` channels; 272,474
    parameters at the standard width 16 and 10 classes (the paper's 0.27M counts option A, whose
    zero-padded identity shortcuts have no parameters: 269,722).

    Example
    -------
    >>> net = resnet20()
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> sum(p.numel() for p in net.parameters())
    272474
    """
    return CifarResNet(3, in_channels, num_classes, width)


MODELS = ("mlp", "lenet300", "lenet5", "resnet20")

# Input side length (pixels) each reference network needs; None = any (the MLP adapts its first layer).
REQUIRED_IMAGE_SIZE: dict[str, int | None] = {"mlp": None, "lenet300": 28, "lenet5": 28, "resnet20": 32}


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (100,)
) -> tuple[nn.Module, dict]:
    """Build a reference network by name for inputs of shape (C, H, W) (the MLP: any shape, flattened).

    Returns the model and its architecture record, which :func:`model_from_architecture` rebuilds from.
    ``hidden`` is used by the MLP only; ``resnet20`` is built at its standard width 16.

    Example
    -------
    >>> model, arch = build_model("mlp", (1, 8, 8), 10, hidden=(32,))
    >>> arch
    {'model': 'mlp', 'kwargs': {'in_features': 64, 'hidden': [32], 'num_classes': 10}}
    >>> build_model("resnet20", (3, 32, 32), 10)[1]
    {'model': 'resnet20', 'kwargs': {'in_channels': 3, 'num_classes': 10, 'width': 16}}
    """
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {name!r}")
    kwargs = ({"in_features": math.prod(int(v) for v in input_shape), "hidden": [int(h) for h in hidden],
               "num_classes": num_classes} if name == "mlp" else _image_network_kwargs(name, input_shape, num_classes))
    arch = {"model": name, "kwargs": kwargs}
    return model_from_architecture(arch), arch


def _image_network_kwargs(name: str, input_shape: Sequence[int], num_classes: int) -> dict:
    """The constructor arguments of a reference network for images of ``input_shape``, or why it cannot take them."""
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs images (C, H, W); got inputs of shape {tuple(input_shape)} (the mlp takes "
                         "any shape, or build your own network for these inputs)")
    channels, height, width = (int(v) for v in input_shape)
    size = REQUIRED_IMAGE_SIZE[name]
    if size is not None and (height, width) != (size, size):
        raise ValueError(f"{name} needs {size}x{size} images; got {height}x{width} (resize the data first)")
    if name == "lenet300":
        if channels != 1:
            raise ValueError(f"lenet300 needs 1-channel images; got {channels} channels")
        return {"num_classes": num_classes}
    if name == "resnet20":
        # The width is recorded although it is the default, so a record rebuilds the same network even if
        # the default ever changes.
        return {"in_channels": channels, "num_classes": num_classes, "width": 16}
    return {"in_channels": channels, "num_classes": num_classes}


def model_from_architecture(arch: dict) -> nn.Module:
    """Rebuild a reference network from the record :func:`build_model` returned."""
    factories = {"mlp": mlp, "lenet300": lenet300, "lenet5": lenet5, "resnet20": resnet20}
    try:
        return factories[arch["model"]](**arch["kwargs"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"not a reference-model architecture record: {arch!r} ({error})") from error
