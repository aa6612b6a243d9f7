"""Reference networks: architectures as specified, builder checks."""

import pytest
import torch
from torch import nn

from bayescompress.models import build_model, lenet5, lenet300, model_from_architecture


def _shapes(model):
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def test_lenet300_is_784_300_100_10():
    assert _shapes(lenet300()) == [(300, 784), (100, 300), (10, 100)]
    assert lenet300()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_lenet5_is_the_caffe_variant():
    assert _shapes(lenet5()) == [(20, 1, 5, 5), (50, 20, 5, 5), (500, 800), (10, 500)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in lenet5()) == 2
    assert lenet5()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_build_model_records_an_architecture_that_rebuilds_the_same_shapes():
    model, arch = build_model("mlp", (1, 8, 8), 10, hidden=(20, 10))
    assert _shapes(model_from_architecture(arch)) == _shapes(model) == [(20, 64), (10, 20), (10, 10)]


def test_lenets_refuse_the_wrong_image_size():
    with pytest.raises(ValueError, match="28x28"):
        build_model("lenet5", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("resnet", (1, 28, 28), 10)
