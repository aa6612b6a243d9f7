"""The code paths of an accelerator run, on a machine without one: every method's compress, a Turbo-VBI resume and a
run from a saved posterior, on a virtual device that refuses CPU tensors as CUDA does (tests/helpers/
virtual_device.py). Before, ss-ghs crashed on conversion, the Bayesian export and the input gates after the
training, and Turbo-VBI on resume."""

import importlib

import pytest
import torch
from helpers.virtual_device import DeviceMixError, VirtualDevice
from torch import nn

from bayescompress import PipelineConfig, methods
from bayescompress.data import load_dataset, make_loaders
from bayescompress.inference import train as train_module

compress_module = importlib.import_module("bayescompress.compress")
SETTINGS = {"ssvi": {"update_interval": 2}}


@pytest.fixture
def on_the_device(monkeypatch):
    # the device checks know no meta device, and fused Adam is a kernel of real accelerators
    monkeypatch.setattr(compress_module, "check_device", lambda *args: None)
    monkeypatch.setattr(train_module, "check_device", lambda *args: None)
    monkeypatch.setattr(train_module, "_fused_adam_supported", lambda device: False)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    loaders = make_loaders(load_dataset("digits"), batch_size=256)
    optimiser = torch.optim.Adam(net.parameters(), 1e-2)
    for x, y in [batch for _ in range(8) for batch in loaders[0]]:
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    return net, loaders


def _compress(net, loaders, method, epochs=1, device="meta", **kwargs):
    train, val, test = loaders
    settings = {"epochs": epochs, "finetune_epochs": 1, **SETTINGS.get(method, {})}
    config_names = methods.get(method).config_class.names()
    chosen = methods.get(method)(**{k: v for k, v in settings.items() if k in config_names})
    pipeline = PipelineConfig(device=device, quiet=True, mc_samples=2, max_accuracy_loss=1.0, latency_budget=0.02)
    return compress_module.compress(net, train, val, chosen, test_loader=test, pipeline=pipeline, **kwargs)


def test_the_virtual_device_refuses_what_cuda_refuses():
    with VirtualDevice():
        on_device = torch.ones(3).to("meta")
        assert on_device.device.type == "meta" and (on_device * 2).device.type == "meta"
        assert float((on_device + torch.tensor(1.0)).sum()) == 6.0  # a 0-dim CPU tensor is a scalar: allowed
        with pytest.raises(DeviceMixError):
            on_device + torch.ones(3)


@pytest.mark.parametrize("method", methods.names())
def test_every_method_runs_end_to_end_on_an_accelerator(on_the_device, method, tmp_path):
    net, loaders = on_the_device
    with VirtualDevice():
        torch.manual_seed(0)
        result = _compress(net, loaders, method)
        result.save(tmp_path / "run", plots=False)  # brought back to the CPU to be written
    torch.manual_seed(0)
    on_cpu = _compress(net, loaders, method, device="cpu")
    # the device changes where, not what: the same numbers up to the float rounding of another softplus kernel
    for network in ("compressed", "exported"):
        assert result.metrics[network]["accuracy"] == pytest.approx(on_cpu.metrics[network]["accuracy"], abs=0.03)


def test_turbo_vbi_resumes_and_a_saved_posterior_is_pruned_on_an_accelerator(on_the_device, tmp_path, monkeypatch):
    net, loaders = on_the_device
    first_epoch = train_module.Trainer._train_epoch
    stopped = []

    def stop_after_the_first_epoch(trainer, position=None):  # as SIGINT does: checkpointed, then stopped
        record = first_epoch(trainer, position)
        if not stopped:
            stopped.append(True)
            trainer._interrupted = 2
        return record

    monkeypatch.setattr(train_module.Trainer, "_train_epoch", stop_after_the_first_epoch)
    with VirtualDevice():
        with pytest.raises(train_module.TrainingInterrupted):
            _compress(net, loaders, "turbo-vbi", checkpoint=tmp_path / "checkpoint", epochs=2)
        resumed = _compress(net, loaders, "turbo-vbi", checkpoint=tmp_path / "checkpoint", epochs=2)
        assert resumed.metrics["resumed_from"] is not None  # its BP messages came back from disk, on the CPU
        source = _compress(net, loaders, "ss-gl")
        source.save(tmp_path / "ss-gl", plots=False)
        _compress(net, loaders, "ss-gl", posterior=tmp_path / "ss-gl")  # no training moves its gates to the device
