"""Torch-Pruning export of general graphs: a residual block, exactness, and compress() falling back to it."""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from bayescompress.compress import PipelineConfig, compress
from bayescompress.methods import GaussianSNR
from bayescompress.nn import bayesianize_
from bayescompress.pruning import SNRPruning, export_with_torch_pruning


class ResidualNet(nn.Module):
    """stem -> [conv1 -> BN -> ReLU -> conv2] + skip -> ReLU -> global mean -> fc."""

    def __init__(self, channels=8, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = F.relu(h + self.conv2(F.relu(self.bn1(self.conv1(h)))))
        return self.fc(h.mean(dim=(2, 3)))


def _trained_bn(net):
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 1, 8, 8))
    return net.eval()


def test_unread_channels_are_removed_through_batchnorm_and_the_function_is_kept():
    net = bayesianize_(_trained_bn(ResidualNet())).eval()
    masks = SNRPruning(keep_fraction=0.6).masks(net)
    masks.weight["conv2"][:, [1, 4, 6]] = False  # conv1's channels 1, 4, 6 are read by nobody
    x = torch.randn(6, 1, 8, 8)
    small, _ = export_with_torch_pruning(net, masks, x)
    assert small.conv1.out_channels == 8 - 3 and small.bn1.num_features == 5 and small.conv2.in_channels == 5
    masked = masks.apply_(copy.deepcopy(net)).eval()
    assert (small(x) - masked(x)).abs().max() <= 1e-4
    assert small.stem.out_channels == 8  # stem channels feed the skip sum, which fc reads


def test_channels_coupled_by_the_residual_sum_go_only_when_every_reader_drops_them():
    net = bayesianize_(_trained_bn(ResidualNet())).eval()
    masks = SNRPruning(keep_fraction=0.9).masks(net)
    masks.weight["fc"][:, 2] = False     # the sum's channel 2 is not read by fc ...
    masks.weight["conv1"][:, 2] = False  # ... nor by conv1
    x = torch.randn(6, 1, 8, 8)
    small, _ = export_with_torch_pruning(net, masks, x)
    # so stem and conv2 both lose output channel 2, conv1 loses input channel 2
    assert small.stem.out_channels == 7 and small.conv2.out_channels == 7 and small.conv1.in_channels == 7
    masked = masks.apply_(copy.deepcopy(net)).eval()
    assert (small(x) - masked(x)).abs().max() <= 1e-4


def test_compress_falls_back_to_torch_pruning_for_a_residual_network():
    torch.manual_seed(0)
    x = torch.randn(256, 1, 8, 8)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, :4].mean(dim=(1, 2)) > 0).long()
    dataset = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64)
    result = compress(ResidualNet(classes=4), loader, loader, GaussianSNR(epochs=1, keep_fraction=0.3, finetune_epochs=0),
                      pipeline=PipelineConfig(mc_samples=2, latency_batch=8, quiet=True))
    assert result.structure is None
    assert result.metrics["export_max_abs_diff"] <= 1e-4
    bayesian = result.export(bayesian=True).eval()  # the posterior, for any graph
    assert (bayesian(x[:32]) - result.exported(x[:32])).abs().max() <= 1e-4
