"""Users' own networks end to end: a ResNet with BatchNorm, an MLP with Dropout, a transformer encoder, and a
model whose head is registered before its body, through every method of compress, save and load."""

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bayescompress import methods
from bayescompress.compress import PipelineConfig, compress
from bayescompress.metrics import evaluate
import bayescompress.models as reference_models
from bayescompress.runs import load


class DropoutMLP(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 16), nn.ReLU(),
                         nn.Dropout(0.3), nn.Linear(16, 4))


class TinyTransformer(nn.Module):
    """Token embeddings -> one nn.TransformerEncoderLayer -> mean over tokens -> head."""

    def __init__(self, vocab=12, width=8, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.encoder = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=16, dropout=0.1, batch_first=True)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


class HeadFirst(nn.Module):
    """The classifier head is registered before the body: registration order is not the forward order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 4)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU())

    def forward(self, x):
        return self.head(self.body(x))


def _images(n, shape, classes, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=generator)
    y = (x.flatten(1)[:, : x[0].numel() // 2].mean(1) > 0).long() + 2 * (x.flatten(1)[:, -5:].mean(1) > 0).long()
    return x, y % classes


def _tokens(n, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 12, (n, 6), generator=generator)
    return x, (x == 3).sum(dim=1).clamp(max=2)


CASES = {
    "resnet20": (lambda: reference_models.resnet20(in_channels=3, num_classes=4), lambda n, s: _images(n, (3, 32, 32), 4, s)),
    "dropout-mlp": (DropoutMLP, lambda n, s: _images(n, (1, 8, 8), 4, s)),
    "transformer": (TinyTransformer, _tokens),
    "head-first": (HeadFirst, lambda n, s: _images(n, (1, 8, 8), 4, s)),
}


def _loader(data, batch_size=16):
    return DataLoader(TensorDataset(*data), batch_size=batch_size)


def _pretrained(case):
    factory, data = CASES[case]
    torch.manual_seed(0)
    model = factory()
    x, y = data(64, 0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(3):  # a little training, so BatchNorm statistics and weights are not the initial ones
        for xb, yb in _loader((x, y)):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            optimiser.step()
    return model.eval()


_RESULTS: dict = {}


def _compressed(case, method):
    """One compress run per (model, method), shared by the tests below."""
    if (case, method) not in _RESULTS:
        _, data = CASES[case]
        train, val, test = (_loader(data(n, seed)) for n, seed in ((32, 1), (16, 2), (24, 3)))
        # two steps: SSVI's subspace moves once, after the first
        quick = dict(epochs=1, finetune_epochs=1, keep_fraction=0.3, update_interval=1, end_fraction=1.0)
        method_class = methods.get(method)
        configured = method_class(**{k: v for k, v in quick.items() if k in method_class.config_class.names()})
        pipeline = PipelineConfig(mc_samples=3, latency_batch=8, latency_budget=0.05, quiet=True, seed=4)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = compress(_pretrained(case), train, val, configured, test_loader=test, pipeline=pipeline)
        _RESULTS[case, method] = (result, test, [str(w.message) for w in caught])
    return _RESULTS[case, method]


@pytest.mark.parametrize("method", methods.names())
@pytest.mark.parametrize("case", CASES)
def test_every_method_compresses_saves_and_loads_every_model(case, method, tmp_path):
    result, test, _ = _compressed(case, method)
    # the exported network computes the masked posterior-mean network, on held-out inputs
    assert result.metrics["export_max_abs_diff"] <= 1e-4
    x = next(iter(test))[0]
    with torch.no_grad():  # the output layer keeps every class, wherever it is registered
        assert result.exported(x).shape == result.original(x).shape
    folder = result.save(tmp_path / "run", plots=method == "gaussian-snr")  # the figures: once per network
    if method == "gaussian-snr":
        drawn = {p.name for p in (folder / "plots").iterdir()}
        assert {"masks.png", "units.png", "scores.png", "reliability.png", "training.png"} <= drawn
    run = load(folder, model=CASES[case][0]())  # the original architecture, with fresh weights
    with torch.no_grad():
        assert torch.equal(run.model(x), result.exported(x))
    if result.posterior is None:  # magnitude pruning is not Bayesian
        assert method == "magnitude"
        return
    with torch.no_grad():  # the posterior's mean is the exported network
        assert (run.posterior.eval()(x) - result.exported(x)).abs().max() <= 1e-4
    again = evaluate(run.posterior, test, samples=result.metrics["mc_samples"], seed=result.config["pipeline"]["seed"])
    assert again == result.metrics["compressed"]


@pytest.mark.parametrize("case", CASES)
def test_a_runs_posterior_is_pruned_again_on_every_model(case):
    result, test, _ = _compressed(case, "gaussian-snr")
    _, data = CASES[case]
    train, val = (_loader(data(n, seed)) for n, seed in ((32, 1), (16, 2)))
    pipeline = PipelineConfig(mc_samples=0, latency_batch=8, latency_budget=0.05, quiet=True, seed=4)
    method = methods.get("gaussian-snr")
    # the run's own pruning, without its fine-tuning: the same masks, BatchNorms folded as the run folded them
    again = compress(_pretrained(case), train, val, method(finetune_epochs=0), posterior=result, pipeline=pipeline)
    assert again.masks.to_tensors().keys() == result.masks.to_tensors().keys()
    assert all(torch.equal(mask, result.masks.to_tensors()[name]) for name, mask in again.masks.to_tensors().items())
    sparser = compress(_pretrained(case), train, val, method(keep_fraction=0.15, finetune_epochs=0),
                       posterior=result, pipeline=pipeline)
    assert sparser.masks.kept_weights() < result.masks.kept_weights()


def test_transformer_modules_that_cannot_be_handled_are_named_in_a_warning():
    _, _, messages = _compressed("transformer", "gaussian-snr")
    skipped = next(m for m in messages if "kept deterministic and unpruned" in m)
    for name in ("embed (Embedding)", "encoder.self_attn (MultiheadAttention)",
                 "encoder.self_attn.out_proj (NonDynamicallyQuantizableLinear)"):
        assert name in skipped


def test_the_feed_forward_units_of_a_transformer_can_be_removed():
    result, _, _ = _compressed("transformer", "ss-gl")
    linear1 = result.exported.encoder.linear1
    assert result.exported.encoder.linear2.in_features == linear1.out_features
    assert result.metrics["export_max_abs_diff"] <= 1e-4


def test_resnet20_channels_whose_gates_close_are_removed_and_the_function_is_kept():
    from bayescompress.metrics import dense_macs
    from bayescompress.nn import bayesianize_, fold_multipliers_
    from bayescompress.priors import SpikeSlabGroupLasso
    from bayescompress.pruning import InclusionPruning, export_with_torch_pruning, to_plain_network
    from bayescompress.pruning.batchnorm import fold_batchnorm_, foldable_pairs

    model = _pretrained("resnet20")
    probe, held_out = _images(8, (3, 32, 32), 4, 5)[0], _images(16, (3, 32, 32), 4, 6)[0]
    fold_batchnorm_(model, foldable_pairs(model, probe))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    net = bayesianize_(model, SpikeSlabGroupLasso(), example_input=probe).eval()
    closed = {"layer1.0.conv1": [0, 3, 5], "layer2.1.conv1": [1, 2], "layer3.2.conv1": list(range(0, 64, 2))}
    # channel 7 of stage 1's residual stream: off in every layer that writes into that sum
    closed.update({name: [7] for name in ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")})
    with torch.no_grad():
        for name, channels in closed.items():
            net.get_submodule(name).prior.gate_logit[channels] = -8.0
    masks = InclusionPruning().masks(net, output_layer="fc")
    fold_multipliers_(net)  # the closed gates zero their filters' weights and biases
    masks.apply_(net)
    exported, _ = export_with_torch_pruning(net, masks, probe, output_layer="fc")
    assert exported.layer1[0].conv1.out_channels == 16 - 3
    assert exported.layer2[1].conv1.out_channels == 32 - 2 and exported.layer2[1].conv2.in_channels == 32 - 2
    assert exported.layer3[2].conv1.out_channels == 64 - 32
    # the residual channel goes from every coupled layer: the stem, each block's conv2 and the stage-2 readers
    assert exported.conv1.out_channels == 15
    assert all(exported.layer1[i].conv2.out_channels == 15 and exported.layer1[i].conv1.in_channels == 15
               for i in range(3))
    assert exported.layer2[0].conv1.in_channels == 15 and exported.layer2[0].shortcut[0].in_channels == 15
    assert exported.layer2[0].conv2.out_channels == 32  # untouched elsewhere
    assert dense_macs(exported, probe) < dense_macs(to_plain_network(net), probe)
    with torch.no_grad():
        assert (exported(held_out) - net(held_out)).abs().max() <= 1e-4


def test_cli_pretrains_and_compresses_resnet20_on_cifar10_and_the_run_rebuilds_from_its_record(tmp_path, capsys):
    import json

    import numpy as np

    from bayescompress.cli import main

    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, (8, 1))
        (folder / name).write_bytes(np.concatenate([labels, rng.integers(0, 256, (8, 3072))], 1)
                                    .astype(np.uint8).tobytes())
    weights = tmp_path / "resnet20.safetensors"
    assert main(["pretrain", "--model", "resnet20", "--dataset", "cifar10", "--data-dir", str(folder),
                 "--epochs", "1", "--batch-size", "16", "--out", str(weights), "--quiet"]) == 0
    code = main(["compress", "--model", "resnet20", "--weights", str(weights), "--dataset", "cifar10",
                 "--data-dir", str(folder), "--method", "magnitude", "--keep-fraction", "0.2",
                 "--finetune-epochs", "0", "--batch-size", "16", "--out", str(tmp_path / "run"), "--quiet",
                 "--json"])
    assert code == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = load(tmp_path / "run")  # no model passed: the folder's reference record rebuilds resnet20
    assert run.architecture["source"]["architecture"]["model"] == "resnet20"
    assert printed["export_max_abs_diff"] <= 1e-4
