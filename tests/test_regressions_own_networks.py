"""Regression tests for the ways a user's own network went wrong (issue 11), one per case."""

import json

import pytest
import torch
from torch import nn

from bayescompress.cli import main
from bayescompress.io import load_state_dict_file, save_weights, write_json
from bayescompress.metrics import latency_seconds
from bayescompress.models import build_model
from bayescompress.nn import BayesLinear, bayesianize_, output_layers
from bayescompress.priors import SpikeSlabGroupLasso
from bayescompress.pruning import InclusionPruning, Masks, SNRPruning, export_sequential, propagate
from bayescompress.pruning.masks import copy_network


def _folded_unit_chain(*between: nn.Module, bias: bool = True) -> tuple[nn.Sequential, Masks]:
    """A 4-6-3 chain whose first hidden unit has no incoming weights left (its constant ReLU(2) is folded)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), *between, nn.Linear(6, 3, bias=bias))
    with torch.no_grad():
        net[0].bias[0] = 2.0
    keep = torch.ones(6, 4, dtype=torch.bool)
    keep[0] = False
    return net, Masks({"0": keep}, {"0": torch.ones(6, dtype=torch.bool)})


def test_structure_propagation_runs_dropout_as_the_deployed_network_does():
    net, masks = _folded_unit_chain(nn.Dropout(0.5))
    net.train()  # as fit leaves it
    exported = export_sequential(net, propagate(net, masks, torch.randn(1, 4))).eval()
    assert exported[0].out_features == 5  # the constant unit was folded away
    masked = masks.apply_(copy_network(net)).eval()
    x = torch.randn(32, 4)
    assert (exported(x) - masked(x)).abs().max() <= 1e-5
    assert net.training  # the caller's mode is restored


def test_a_constant_folded_into_a_bias_free_layer_gives_it_a_bias():
    net, masks = _folded_unit_chain(bias=False)
    exported = export_sequential(net, propagate(net, masks, torch.randn(1, 4))).eval()
    assert exported[-1].bias is not None
    masked = masks.apply_(copy_network(net)).eval()
    x = torch.randn(32, 4)
    assert (exported(x) - masked(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("tokens", [3, 5])  # 3 == the layer's output units, where dim 1 broadcasts silently
def test_spike_and_slab_gates_act_on_the_features_of_token_inputs(tokens):
    torch.manual_seed(0)
    layer = BayesLinear(4, 3, prior=SpikeSlabGroupLasso(input_gates=True)).eval()
    with torch.no_grad():
        layer.prior.gate_logit.copy_(torch.tensor([3.0, -3.0, 3.0]))  # unit 1 is switched off
        layer.prior.input_gate_logit.copy_(torch.tensor([3.0, 3.0, -3.0, 3.0]))  # input 2 is switched off
    x = torch.randn(2, tokens, 4)
    out = layer(x)
    per_token = torch.stack([layer(x[:, t]) for t in range(tokens)], dim=1)
    assert torch.allclose(out, per_token, atol=1e-6)
    assert bool((out[..., 1] == 0).all())
    moved = x.clone()
    moved[..., 2] += 5.0
    assert torch.allclose(layer(moved), out, atol=1e-6)  # the gated-off input feature is ignored


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(dim=1))


def test_bayesianize_leaves_multihead_attention_alone_and_says_so():
    torch.manual_seed(0)
    net = _Attention().eval()
    x = torch.randn(2, 5, 8)
    before = net(x)
    with pytest.warns(UserWarning, match=r"attn\.out_proj \(NonDynamicallyQuantizableLinear\)"):
        bayesianize_(net, SpikeSlabGroupLasso())
    assert type(net.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert isinstance(net.head, BayesLinear)
    assert torch.allclose(net(x), before, atol=1e-5)  # out_proj's weight was not rescaled under MHA's feet


class _HeadFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6, 3)
        self.body = nn.Linear(4, 6)

    def forward(self, x):
        return self.head(self.body(x).relu())


def test_the_output_layer_is_the_one_whose_output_is_returned_wherever_it_is_registered():
    net = _HeadFirst()
    x = torch.randn(2, 4)
    assert output_layers(net, x) == ["head"]
    bayesianize_(net, SpikeSlabGroupLasso(), example_input=x)
    assert net.head.prior.gated is False and net.body.prior.gated is True
    with torch.no_grad():
        net.body.prior.gate_logit.fill_(-5.0)  # every body unit off: the head must still keep its classes
    masks = InclusionPruning().masks(net, output_layer="head")
    assert bool(masks.units["head"].all())


def test_strategies_keep_the_named_output_layer_whole():
    net = bayesianize_(_HeadFirst())
    masks = SNRPruning(threshold=1e9).masks(net, output_layer="head")  # nothing passes the threshold
    assert bool(masks.units["head"].all()) and not bool(masks.units["body"].any())
    with pytest.raises(ValueError, match="output_layer 'tail' is not one of the layers"):
        SNRPruning(threshold=1.0).masks(net, output_layer="tail")


class _ProjectionAfterHead(nn.Module):
    """A classifier that also computes an embedding after its head, kept on the module but not returned."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)
        self.proj = nn.Linear(8, 2)

    def forward(self, x):
        h = self.body(x).relu()
        logits = self.head(h)
        self.embedding = self.proj(h)
        return logits


class _TwoHeads(nn.Module):
    """Two averaged classifier heads (as distillation-token transformers have), behind an in-place ReLU."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 3)
        self.head_dist = nn.Linear(8, 3)

    def forward(self, x):
        h = self.act(self.body(x))
        return (self.head(h) + self.head_dist(h)) / 2


def test_output_layers_are_those_feeding_the_returned_tensor_not_the_last_run():
    x = torch.randn(2, 4)
    assert output_layers(_ProjectionAfterHead(), x) == ["head"]  # proj runs last but is not returned
    assert output_layers(_TwoHeads(), x) == ["head", "head_dist"]
    frozen = _ProjectionAfterHead().requires_grad_(False)  # no parameter records a graph: the input does
    assert output_layers(frozen, x) == ["head"]
    assert output_layers(_TwoHeads()) == ["head_dist"]  # without an example: the last registered


def test_every_output_layer_keeps_its_classes_through_unit_pruning_and_export():
    from bayescompress import GaussianSNR, PipelineConfig, compress

    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    for net in (_ProjectionAfterHead(), _TwoHeads()):
        method = GaussianSNR(epochs=1, level="unit", keep_fraction=0.3, finetune_epochs=0)
        result = compress(net, batches, batches, method, pipeline=PipelineConfig(quiet=True, max_accuracy_loss=1.0))
        heads = [name for name in ("head", "head_dist") if hasattr(net, name)]
        assert all(bool(result.masks.units[name].all()) for name in heads)
        assert not bool(result.masks.units["body"].all())  # the hidden layer was cut
        assert result.exported(x).shape == (64, 3)


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class _CostlyModel(nn.Module):
    """Advances a fake clock by ``per_item`` seconds per input item, and counts its calls."""

    def __init__(self, clock, per_item):
        super().__init__()
        self.clock, self.per_item, self.calls = clock, per_item, 0

    def forward(self, x):
        self.calls += 1
        self.clock.now += self.per_item * x.shape[0]
        return x


def test_latency_measurement_is_bounded_whatever_the_network_costs(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr("bayescompress.metrics.time.perf_counter", clock)
    slow, fast = _CostlyModel(clock, 0.01), _CostlyModel(clock, 0.001)  # 2.56 s and 0.26 s on 256 items
    times, batch_size = latency_seconds({"slow": slow, "fast": fast}, torch.zeros(256, 1), budget_seconds=1.0)
    assert batch_size == 32  # halved until one pass of the slowest fits a third of the budget
    assert times["slow"] == pytest.approx(0.32) and times["fast"] == pytest.approx(0.032)
    assert clock.now <= 2 * 1.0  # about the budget per network, not 21 passes of 256 items (59 s)


def test_latency_synchronises_cuda_around_every_pass(monkeypatch):
    from bayescompress import metrics

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    metrics._synchronize(torch.device("cuda:0"))
    metrics._synchronize(torch.device("cpu"))
    assert calls == [torch.device("cuda:0")]


def test_a_corrupt_or_truncated_safetensors_file_is_a_clear_error(tmp_path):
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    save_weights({"w": torch.randn(64, 64)}, tmp_path / "whole.safetensors")
    data = (tmp_path / "whole.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    for name in ("corrupt", "truncated"):
        with pytest.raises(ValueError, match="not a valid safetensors file, truncated or corrupt"):
            load_state_dict_file(tmp_path / f"{name}.safetensors")


def test_cli_reports_corrupt_weights_without_a_traceback(tmp_path, capsys):
    (tmp_path / "w.safetensors").write_bytes(b"garbage")
    code = main(["compress", "--model", "mlp", "--weights", str(tmp_path / "w.safetensors"), "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    assert "not a valid safetensors file" in capsys.readouterr().err


def test_cli_refuses_weights_pretrained_as_another_reference_model(tmp_path, capsys):
    model, architecture = build_model("lenet300", (1, 28, 28), 10)
    save_weights(model.state_dict(), tmp_path / "net.safetensors")
    write_json(tmp_path / "net.json", {"format_version": 1, "architecture": architecture, "dataset": "mnist"})
    code = main(["compress", "--model", "lenet5", "--weights", str(tmp_path / "net.safetensors"), "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "was pretrained as 'lenet300'" in err and "--model lenet300" in err


def test_cli_refuses_an_out_below_a_file_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["compress", "--model", "mlp", "--weights", str(tmp_path / "missing.safetensors"), "--epochs", "1",
                 "--out", str(tmp_path / "file" / "run"), "--quiet"])
    assert code == 2  # the destination is checked first: the missing weights are not even looked at
    assert "is a file, not a folder" in capsys.readouterr().err


def test_cli_refuses_a_folder_of_other_work(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    code = main(["demo", "--out", str(tmp_path), "--quiet"])
    assert code == 2
    assert "holds files compare did not write (mine.txt)" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", [["demo"], ["pretrain", "--model", "mlp", "--epochs", "1", "--out", "w.safetensors"]])
def test_cli_device_cuda_without_cuda_is_refused_before_any_work(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--device", "cuda", "--quiet"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_bad_device_name_is_refused():
    from bayescompress.compress import PipelineConfig

    with pytest.raises(ValueError, match="device must be"):
        PipelineConfig(device="tpu")


def test_a_graph_run_whose_architecture_changed_names_the_first_mismatching_tensor(tmp_path, monkeypatch):
    from bayescompress.compress import PipelineConfig, compress
    from bayescompress.methods import Magnitude
    from bayescompress.runs import load

    (tmp_path / "changing_net.py").write_text(
        "import torch.nn as nn\n"
        "WIDTH = 12\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.body = nn.Linear(4, WIDTH)\n"
        "        self.head = nn.Linear(WIDTH, 3)\n"
        "    def forward(self, x):\n"
        "        h = self.body(x).relu()\n"
        "        return self.head(h + h.relu())\n"
        "def build():\n"
        "    return Net()\n"
        "def broken():\n"
        "    raise RuntimeError('no GPU here')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    changing_net = importlib.import_module("changing_net")
    data = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
    result = compress(changing_net.build(), data, data, Magnitude(keep_fraction=0.5, finetune_epochs=0),
                      pipeline=PipelineConfig(latency_budget=0.05, quiet=True))
    result.source = {"kind": "factory", "spec": "changing_net:build"}
    folder = result.save(tmp_path / "run")
    assert load(folder).model.head.out_features == 3
    monkeypatch.setattr(changing_net, "WIDTH", 20)  # the user's code changed since the run was saved
    with pytest.raises(ValueError, match="'body.weight' has shape"):
        load(folder)
    record = json.loads((folder / "architecture.json").read_text())
    record["source"]["spec"] = "changing_net:broken"
    (folder / "architecture.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="the model factory 'changing_net:broken' raised RuntimeError: no GPU here"):
        load(folder)
    record["source"] = {"kind": "caller", "class": "changing_net.Net"}
    (folder / "architecture.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"pass the original architecture as model=, e.g. bayescompress.load\(folder, model="):
        load(folder)


def test_cli_factory_that_raises_is_a_clear_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "badnet.py").write_text("def build():\n    raise ImportError('needs torchvision')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    save_weights({"w": torch.zeros(1)}, tmp_path / "w.safetensors")
    code = main(["compress", "--model", "badnet:build", "--weights", str(tmp_path / "w.safetensors"),
                 "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    assert "the model factory 'badnet:build' raised ImportError: needs torchvision" in capsys.readouterr().err


class _TokenBatchNorm(nn.Module):
    """BatchNorm1d over the tokens of a (batch, tokens, features) Linear output: not per output unit."""

    def __init__(self, tokens, features):
        super().__init__()
        self.linear, self.bn, self.head = nn.Linear(features, features), nn.BatchNorm1d(tokens), nn.Linear(features, 3)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.linear(x))).mean(dim=1))


@pytest.mark.parametrize("tokens", [4, 8])  # 8 == features, where a fold on the wrong axis would go unnoticed
def test_batchnorm_over_tokens_is_not_folded_into_the_linear_before_it(tokens):
    from bayescompress.pruning.batchnorm import foldable_pairs

    net = _TokenBatchNorm(tokens, 8)
    with torch.no_grad():
        net.bn.running_mean.normal_()
    assert foldable_pairs(net.eval(), torch.randn(2, tokens, 8)) == []
    flat = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
    assert foldable_pairs(flat.eval(), torch.randn(2, 4)) == [("0", "1")]


class _InputDependentChannel(nn.Module):
    """Channels 0 and 2 of ``a`` get an input-dependent term that is not a layer (x.amax)."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.a(x) + x.amax(1, keepdim=True))).mean(dim=(2, 3))


def test_a_channel_constant_only_on_the_probe_is_caught_on_the_validation_data():
    from bayescompress.compress import PipelineConfig, compress
    from bayescompress.methods import Magnitude

    torch.manual_seed(0)
    net = _InputDependentChannel()
    with torch.no_grad():
        net.a.weight[[0, 2]] = 1e-6  # magnitude pruning empties rows 0 and 2 ...
        net.a.bias.fill_(-6.0)  # ... and relu(-6 + amax) is 0 for inputs in [0, 1): the probe's
    probe = torch.rand(8, 3, 5, 5)
    held_out = torch.rand(32, 3, 5, 5) * 10
    val = [(probe, torch.zeros(8, dtype=torch.long)), (held_out, torch.zeros(32, dtype=torch.long))]
    with pytest.warns(UserWarning, match="differs from the masked network"):
        result = compress(net, val, val, Magnitude(keep_fraction=0.5, finetune_epochs=0),
                      pipeline=PipelineConfig(latency_budget=0.05, quiet=True))
    assert result.metrics["export_max_abs_diff"] <= 1e-4


def _tied_chain() -> nn.Sequential:
    torch.manual_seed(0)
    shared = nn.Linear(16, 16)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(16, 3))


def test_a_chain_holding_one_layer_twice_is_exported_through_the_graph_and_computes_the_masked_network(tmp_path):
    from bayescompress import load
    from bayescompress.compress import PipelineConfig, compress
    from bayescompress.methods import Magnitude
    from bayescompress.pruning import UnsupportedGraphError, sequential_chain

    with pytest.raises(UnsupportedGraphError, match="module '4' is '2' again"):
        sequential_chain(_tied_chain())
    relu = nn.ReLU()
    assert len(sequential_chain(nn.Sequential(nn.Linear(2, 3), relu, nn.Linear(3, 3), relu)).layers) == 2
    x = torch.randn(64, 6)
    data = [(x, torch.randint(0, 3, (64,)))]
    with pytest.warns(UserWarning, match="export keeps units the masks switch off"):  # those the tie reads
        result = compress(_tied_chain(), data, data, Magnitude(keep_fraction=0.2, finetune_epochs=0),
                          pipeline=PipelineConfig(latency_budget=0.05, quiet=True))
    assert result.metrics["export_max_abs_diff"] <= 1e-4  # the old sequential export ran the shared layer once
    masked = result.compressed.eval()
    torch.testing.assert_close(result.exported(x), masked(x), atol=1e-4, rtol=0)
    assert result.exported[2] is result.exported[4]  # still one layer, tied
    loaded = load(result.save(tmp_path / "run"), model=_tied_chain()).model
    torch.testing.assert_close(loaded(x), masked(x), atol=1e-4, rtol=0)


def test_a_sequential_export_that_differs_from_the_masked_network_is_replaced_by_the_graph_export(monkeypatch):
    import importlib

    from bayescompress.methods import Magnitude

    export_module = importlib.import_module("bayescompress.pruning.export")
    compress_module = importlib.import_module("bayescompress.compress")  # the package's name is the function's
    real = export_module.export_sequential

    def off_by_one(network, structure, bayesian=False):
        exported = real(network, structure, bayesian=bayesian)
        if not bayesian:
            with torch.no_grad():
                exported[-1].bias.add_(1.0)
        return exported

    monkeypatch.setattr(export_module, "export_sequential", off_by_one)
    torch.manual_seed(0)
    data = [(torch.randn(32, 6), torch.randint(0, 3, (32,)))]
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.warns(UserWarning, match="sequential export differs from the masked network by 1"):
        result = compress_module.compress(net, data, data, Magnitude(keep_fraction=0.15, finetune_epochs=0),
                                          pipeline=compress_module.PipelineConfig(latency_budget=0.05, quiet=True))
    assert result.metrics["export_max_abs_diff"] <= 1e-4 and result.structure is None  # the graph export
    # the masks the run reports are those of the network it measured: the failed attempt left nothing behind
    assert result.masks.kept_weights() == result.metrics["weights"]["nonzero"]


class _TiedHead(nn.Module):
    """A language-model-style classifier whose output layer shares its weight with the input embedding."""

    def __init__(self):
        super().__init__()
        self.emb, self.body, self.head = nn.Embedding(16, 12), nn.Linear(12, 12), nn.Linear(12, 16)
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(self.body(self.emb(x).mean(1)).relu())


def test_a_sequential_chain_with_tied_layers_keeps_them_tied_under_a_bayesian_method():
    from bayescompress.compress import PipelineConfig, compress
    from bayescompress.methods import SparseVD

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                        nn.Linear(8, 3))
    net[4].weight = net[2].weight
    data = [(torch.randn(32, 6), torch.randint(0, 3, (32,)))]
    with pytest.warns(UserWarning, match="stays tied"):
        result = compress(net, data, data, SparseVD(epochs=1), pipeline=PipelineConfig(latency_budget=0.05,
                                                                                        quiet=True, mc_samples=2))
    assert set(result.masks.weight) == {"0", "6"}  # the tied pair is left whole
    assert result.exported[4].weight is result.exported[2].weight
    assert result.metrics["params"]["exported"] <= result.metrics["params"]["total"]


def test_a_parametrized_layer_inside_a_sequential_chain_is_kept_whole_by_the_graph_export():
    from torch.nn.utils.parametrizations import weight_norm

    from bayescompress.compress import PipelineConfig, compress
    from bayescompress.methods import Magnitude

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), weight_norm(nn.Linear(8, 8)), nn.ReLU(), nn.Linear(8, 3))
    data = [(torch.randn(32, 6), torch.randint(0, 3, (32,)))]
    # it failed in Masks.apply_; the warning named the wrong reason (an owner reading the weight) and torch's own
    # ParametrizationList beside the layer
    with pytest.warns(UserWarning, match=r"kept deterministic and unpruned \(only exact nn.Linear / nn.Conv2d layers "
                      r"are converted; a parametrized layer .* is kept whole\): 2 \(ParametrizedLinear\)$"):
        result = compress(net, data, data, Magnitude(keep_fraction=0.3, finetune_epochs=0),
                          pipeline=PipelineConfig(latency_budget=0.05, quiet=True))
    assert set(result.masks.weight) == {"0", "4"} and result.metrics["export_max_abs_diff"] <= 1e-4


def test_a_layer_tied_to_an_embedding_stays_tied_and_deterministic():
    from bayescompress.compress import PipelineConfig, compress
    from bayescompress.methods import SparseVD
    from bayescompress.nn import handled_layers

    torch.manual_seed(0)
    net = _TiedHead()
    assert [name for name, _ in handled_layers(net)] == ["body"]
    data = [(torch.randint(0, 16, (32, 5)), torch.randint(0, 16, (32,)))]
    with pytest.warns(UserWarning, match=r"a layer whose weight another module shares \(tied\) stays tied.*head"):
        result = compress(net, data, data, SparseVD(epochs=1), pipeline=PipelineConfig(latency_budget=0.05,
                                                                                        quiet=True, mc_samples=2))
    assert result.exported.head.weight is result.exported.emb.weight  # conversion used to untie them
    assert result.metrics["params"]["exported"] <= result.metrics["params"]["total"]


class _BatchBranch(nn.Module):
    """A forward that takes another path for a single input: the traced batch never shows it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = self.fc1(x).relu()
        if x.shape[0] > 1:
            h = self.fc2(h).relu()
        return self.head(h)


def test_an_export_that_fails_on_a_path_the_trace_did_not_take_keeps_every_channel():
    from bayescompress.compress import PipelineConfig, compress
    from bayescompress.methods import Magnitude

    torch.manual_seed(0)
    data = [(torch.randn(32, 6), torch.randint(0, 3, (32,)))]
    with pytest.warns(UserWarning, match="fails on one input alone"):
        result = compress(_BatchBranch(), data, data, Magnitude(keep_fraction=0.2, finetune_epochs=0),
                          pipeline=PipelineConfig(latency_budget=0.05, quiet=True))
    one = torch.randn(1, 6)
    torch.testing.assert_close(result.exported(one), result.compressed.eval()(one), atol=1e-4, rtol=0)


class _Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.fc2(self.fc1(x).relu().detach()).relu())


def test_a_layer_cut_off_from_the_outputs_by_detach_is_named_on_conversion():
    import warnings

    with pytest.warns(UserWarning, match=r"^the outputs of fc1 do not reach what the forward pass returns"):
        bayesianize_(_Detached(), example_input=torch.randn(2, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finding the output layers says nothing; nor does an ordinary network
        assert output_layers(_Detached(), torch.randn(2, 6)) == ["head"]
        bayesianize_(build_model("resnet20", (3, 32, 32), 10)[0], example_input=torch.randn(2, 3, 32, 32))


class _DenseFront(nn.Module):
    """A Conv1d (never converted: only Linear/Conv2d are) in front of a Linear head."""

    def __init__(self):
        super().__init__()
        self.front, self.head = nn.Conv1d(1, 4, 3), nn.Linear(24, 3)

    def forward(self, x):
        return self.head(self.front(x).relu().flatten(1))


def test_sparse_macs_count_the_layers_left_dense_in_full_so_they_compare_with_the_dense_count():
    from bayescompress.compress import PipelineConfig, compress
    from bayescompress.methods import Magnitude

    torch.manual_seed(0)
    data = [(torch.randn(32, 1, 8), torch.randint(0, 3, (32,)))]
    with pytest.warns(UserWarning, match="kept deterministic and unpruned"):
        result = compress(_DenseFront(), data, data, Magnitude(keep_fraction=0.5, finetune_epochs=0),
                          pipeline=PipelineConfig(latency_budget=0.05, quiet=True))
    macs = result.metrics["macs"]
    assert macs["dense"] == 4 * 3 * 6 + 24 * 3  # the Conv1d's 4 filters of 3 taps at 6 positions, the head
    assert macs["sparse"] == 4 * 3 * 6 + result.masks.kept_weights()  # the head's kept weights, once each


class _Skip(nn.Module):
    def __init__(self, width=12):
        super().__init__()
        self.a, self.b = nn.Linear(4, width), nn.Linear(width, 3)

    def forward(self, x):
        h = self.a(x).relu()
        return self.b(h + h.relu())


def _saved_graph_run(tmp_path):
    from bayescompress.compress import PipelineConfig, compress
    from bayescompress.methods import Magnitude

    torch.manual_seed(0)
    data = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
    result = compress(_Skip(), data, data, Magnitude(keep_fraction=0.5, finetune_epochs=0),
                      pipeline=PipelineConfig(latency_budget=0.05, quiet=True))
    return result, result.save(tmp_path / "run")


def test_overwrite_replaces_a_run_but_never_files_the_user_added_to_it(tmp_path):
    result, folder = _saved_graph_run(tmp_path)
    (folder / "notes.txt").write_text("my notes")
    with pytest.raises(ValueError, match=r"files it did not write \(notes.txt\)"):
        result.save(folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "my notes"
    (folder / "notes.txt").unlink()
    # beside the run's figures in plots/: they were deleted with the replaced run, without a word
    (folder / "plots" / "mine").mkdir()
    (folder / "plots" / "my_masks_v1.png").write_bytes(b"mine")
    with pytest.raises(ValueError, match=r"files it did not write \(plots/mine, plots/my_masks_v1.png\)"):
        result.save(folder, overwrite=True)
    assert (folder / "plots" / "my_masks_v1.png").read_bytes() == b"mine"
    for mine in ("mine", "my_masks_v1.png"):
        path = folder / "plots" / mine
        path.rmdir() if path.is_dir() else path.unlink()
    result.save(folder, overwrite=True)  # the run's own figures are replaced


def test_loading_a_graph_run_into_another_architecture_says_it_does_not_match(tmp_path):
    from bayescompress.runs import load

    _, folder = _saved_graph_run(tmp_path)
    with pytest.raises(ValueError, match="does not match|do not fit|names layer"):
        load(folder, model=nn.Sequential(nn.Linear(4, 3)))
    with pytest.raises(ValueError, match="do not fit the model: tensor 'a.weight'"):
        load(folder, model=_Skip(width=20))
    record = json.loads((folder / "architecture.json").read_text())
    del record["surgery"]
    (folder / "architecture.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="lacks 'surgery'"):
        load(folder, model=_Skip())


class _InputSkip(nn.Module):
    """x + a(x) on the network input (which Torch-Pruning cannot shrink), then an ordinary hidden layer c."""

    def __init__(self):
        super().__init__()
        self.a, self.c, self.head = nn.Linear(12, 12), nn.Linear(12, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.c(x + self.a(x)).relu())


def test_a_group_that_breaks_the_graph_is_left_whole_and_the_others_still_shrink():
    from bayescompress.compress import PipelineConfig, compress
    from bayescompress.methods import Magnitude

    torch.manual_seed(0)
    net = _InputSkip()
    with torch.no_grad():
        net.c.weight[:, :6] = 1e-6  # magnitude pruning leaves channels 0-5 of the skip sum unread by c ...
        net.c.weight[:6] = 1e-6  # ... and empties c's rows 0-5 (constant channels read by the head)
    data = [(torch.randn(32, 12), torch.randint(0, 3, (32,)))]
    with pytest.warns(UserWarning, match="channels of a were kept"):
        result = compress(net, data, data, Magnitude(keep_fraction=0.3, finetune_epochs=0),
                      pipeline=PipelineConfig(latency_budget=0.05, quiet=True))
    assert result.exported.a.out_features == 12 and result.exported.c.out_features <= 10
    assert result.metrics["export_max_abs_diff"] <= 1e-4


def test_plot_draws_a_graph_run_saved_from_python_without_its_architecture(tmp_path):
    _, folder = _saved_graph_run(tmp_path)
    assert main(["plot", str(folder), "--quiet"]) == 0
    assert (folder / "plots" / "masks.png").stat().st_size > 0


def _quick_compress(net, data, method, **pipeline):
    from bayescompress.compress import PipelineConfig, compress

    return compress(net, data, data, method,
                    pipeline=PipelineConfig(latency_budget=0.05, quiet=True, max_accuracy_loss=1.0, **pipeline))


@pytest.fixture
def no_training(monkeypatch):
    """Refusals "before any work": a training step taken first fails the test."""
    from bayescompress.inference.train import Trainer

    monkeypatch.setattr(Trainer, "__init__", lambda *args, **kwargs: pytest.fail("trained before refusing"))


def test_a_linear_layer_applied_per_token_in_a_chain_goes_to_the_graph_export():
    """Its units are on the last dimension: the sequential export's constant folding read them on dim 1 and
    crashed after training with a shape error."""
    from bayescompress.methods import GaussianSNR
    from bayescompress.pruning import UnsupportedGraphError

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Flatten(), nn.Linear(15, 3))
    keep = torch.ones(6, 4, dtype=torch.bool)
    keep[0] = False  # unit 0 of the first layer becomes a constant to fold
    masks = Masks({"0": keep}, {"0": torch.ones(6, dtype=torch.bool)})
    with pytest.raises(UnsupportedGraphError, match="per token or position, output \\(3, 6\\)"):
        propagate(net, masks, torch.randn(1, 3, 4))
    # a chain of per-token layers alone is read by the built-in export: the constant unit stays, unfolded
    tokens = nn.Sequential(net[0], nn.ReLU(), nn.Linear(6, 5), nn.Flatten())
    structure = propagate(tokens, masks, torch.randn(1, 3, 4))
    assert bool(structure.masks.units["0"][0])
    exported = export_sequential(tokens, structure).eval()
    masked = masks.apply_(copy_network(tokens)).eval()
    x3 = torch.randn(8, 3, 4)
    torch.testing.assert_close(exported(x3), masked(x3), atol=1e-5, rtol=0)
    x = torch.randn(48, 3, 4)
    data = [(x[i:i + 16], torch.randint(0, 3, (16,))) for i in range(0, 48, 16)]
    result = _quick_compress(net, data, GaussianSNR(epochs=1, level="unit", keep_fraction=0.5, finetune_epochs=0))
    assert result.metrics["export_max_abs_diff"] <= 1e-4
    torch.testing.assert_close(result.exported(x), result.compressed.eval()(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("hook", ["scalar", "per_feature"])
def test_a_users_forward_pre_hook_on_a_layer_is_carried_into_the_export_and_the_saved_run(hook, tmp_path):
    """The exports rebuilt the layer without it (another function, returned unchecked); a hook that reads the
    layer's width crashed the sequential export after the training once carried."""
    from bayescompress import load
    from bayescompress.methods import GaussianSNR, Magnitude

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    scale = torch.full((16,), 2.0) if hook == "per_feature" else 2.0
    net[2].register_forward_pre_hook(lambda _layer, inputs: (inputs[0] * scale,))  # part of the function
    x = torch.randn(64, 6)
    data = [(x, torch.randint(0, 3, (64,)))]
    for method in (Magnitude(keep_fraction=0.3, finetune_epochs=0),
                   GaussianSNR(epochs=1, level="unit", keep_fraction=0.5, finetune_epochs=0)):
        result = _quick_compress(net, data, method)
        masked = result.compressed.eval()
        assert result.metrics["export_max_abs_diff"] <= 1e-4
        torch.testing.assert_close(result.exported(x), masked(x), atol=1e-4, rtol=0)
        if method.name == "gaussian-snr":
            torch.testing.assert_close(result.export(bayesian=True).eval()(x), masked(x), atol=1e-4, rtol=0)
        # the export's layer holds the user's hook only, not a Bayesian layer's or torch's prune hooks
        assert len(result.exported.get_submodule("2")._forward_pre_hooks) == 1
        loaded = load(result.save(tmp_path / f"{hook}-{method.name}", plots=False), model=net).model
        torch.testing.assert_close(loaded(x), masked(x), atol=1e-4, rtol=0)


def test_a_forward_random_in_eval_mode_is_refused_before_any_work(no_training):
    from bayescompress.methods import GaussianSNR

    class MCDropout(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(6, 16), nn.Linear(16, 3)

        def forward(self, x):
            return self.head(nn.functional.dropout(torch.relu(self.body(x)), 0.3, training=True))

    data = [(torch.randn(32, 6), torch.randint(0, 3, (32,)))]
    with pytest.raises(ValueError, match="random in eval mode.*F.dropout\\(x, p, self.training\\)"):
        _quick_compress(MCDropout(), data, GaussianSNR(epochs=1))


@pytest.mark.parametrize("old", ["weight_norm", "spectral_norm"])
def test_the_old_hook_based_weight_and_spectral_norm_are_refused_before_any_work(old, no_training):
    from bayescompress.methods import GaussianSNR

    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    getattr(nn.utils, old)(net[2])
    data = [(torch.randn(32, 6), torch.randint(0, 3, (32,)))]
    with pytest.raises(ValueError, match=f"layer 2 uses torch.nn.utils.{old}.*remove_{old}\\(layer\\)"):
        _quick_compress(net, data, GaussianSNR(epochs=1))


def test_auxiliary_logits_in_training_mode_are_named_at_the_first_step():
    from bayescompress.methods import Magnitude

    class WithAux(nn.Module):  # torchvision's GoogLeNet / Inception-v3 pattern
        def __init__(self):
            super().__init__()
            self.body, self.head, self.aux = nn.Linear(6, 16), nn.Linear(16, 3), nn.Linear(16, 3)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return (self.head(h), self.aux(h)) if self.training else self.head(h)

    data = [(torch.randn(32, 6), torch.randint(0, 3, (32,)))]
    with pytest.raises(ValueError, match="returns a tuple in training mode.*aux_logits=False"):
        _quick_compress(WithAux(), data, Magnitude(finetune_epochs=1))


@pytest.mark.parametrize("which", ["val_loader", "test_loader"])
def test_a_validation_or_test_loader_used_up_after_one_pass_is_refused_before_any_work(which, no_training):
    from bayescompress.compress import PipelineConfig, compress
    from bayescompress.methods import GaussianSNR

    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    data = [(torch.randn(32, 6), torch.randint(0, 3, (32,)))]
    loaders = {"val_loader": data, "test_loader": None, which: (batch for batch in data)}
    with pytest.raises(ValueError, match=f"{which} is a generator, used up after one pass"):
        compress(net, data, method=GaussianSNR(epochs=1), pipeline=PipelineConfig(quiet=True), **loaders)

    class OneIterator:  # iterable, but every pass is the same, spent iterator
        def __init__(self, batches):
            self.batches = iter(batches)

        def __iter__(self):
            return self.batches

    loaders[which] = OneIterator(data)
    with pytest.raises(ValueError, match=f"{which} is a OneIterator, used up after one pass"):
        compress(net, data, method=GaussianSNR(epochs=1), pipeline=PipelineConfig(quiet=True), **loaders)


class _UnusedHead(nn.Module):
    """A head registered but never called (kept for another task): its masked weight had no forward to renew it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 6)
        self.heads = nn.ModuleDict({"main": nn.Linear(6, 3), "aux": nn.Linear(6, 3)})

    def forward(self, x):
        return self.heads["main"](torch.relu(self.body(x)))


def test_a_layer_the_forward_never_calls_trains_under_masks_step_after_step():
    from bayescompress.nn import kl_divergence
    from bayescompress.priors import GaussianPrior

    torch.manual_seed(0)
    net = bayesianize_(_UnusedHead(), GaussianPrior())
    Masks({name: torch.rand_like(layer.weight) > 0.3 for name, layer in net.named_modules()
           if isinstance(layer, BayesLinear)}).apply_(net)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):  # the second backward failed: "Trying to backward through the graph a second time"
        optimiser.zero_grad()
        (net(torch.randn(4, 8)).logsumexp(1).mean() + kl_divergence(net)).backward()
        optimiser.step()
    assert net.heads["aux"].weight_rho.grad is not None  # its KL still trains its posterior


def test_compress_names_layers_the_forward_never_calls():
    import importlib

    from bayescompress import Magnitude, PipelineConfig

    compress = importlib.import_module("bayescompress.compress").compress
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    with pytest.warns(UserWarning, match=r"the eval-mode forward pass never calls heads\.aux: the data never reach it"):
        compress(_UnusedHead(), loader, loader, Magnitude(keep_fraction=0.5, finetune_epochs=0),
                 pipeline=PipelineConfig(mc_samples=2, quiet=True, max_accuracy_loss=1.0, latency_budget=0.02))


def test_a_save_removes_the_staging_folder_a_killed_save_left_and_nothing_else(tmp_path):
    import json
    import socket
    import subprocess
    import sys

    from bayescompress.inference.checkpoint import OWNER_FILE

    result, folder = _saved_graph_run(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    abandoned = tmp_path / ".run.k1ll3d"  # what a SIGKILL during the writing of the run folder leaves
    abandoned.mkdir()
    (abandoned / OWNER_FILE).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    (abandoned / "model.safetensors").write_bytes(b"half")
    users = tmp_path / ".run.mine"  # a dot-folder of the user's: no claim
    users.mkdir()
    result.save(folder, overwrite=True)
    assert not abandoned.exists() and users.is_dir()
    assert not (folder / OWNER_FILE).exists()  # the staging claim does not travel into the run folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.mine", "run"]
