"""Methods as plug-ins: the registry, typed per-method settings, presets, CLI flags built from them, a method
registered from outside the package, and defaults that never silently wreck a network."""

import dataclasses
import json

import pytest
import torch

from bayescompress import AccuracyLossWarning, PipelineConfig, compress, methods
from bayescompress.cli import main
from bayescompress.data import load_dataset, make_loaders
from bayescompress.methods import (
    GaussianSNR,
    Magnitude,
    Method,
    MethodConfig,
    SpikeSlabGHS,
    SpikeSlabGL,
    TurboVBI,
    TurboVBIConfig,
)
from bayescompress.models import lenet5, mlp
from bayescompress.pruning import PruningStrategy
from bayescompress.runs import load
from bayescompress.settings import Choice, Integer, Real, describe, setting
from bayescompress.workflows import pretrain


@pytest.fixture(scope="module")
def pretrained():
    return pretrain("mlp", "digits", epochs=15, lr=3e-3, batch_size=64, hidden=(32,), quiet=True).model


def _digits():
    """Fresh loaders: the training loader's shuffle generator advances with every epoch it serves."""
    return make_loaders(load_dataset("digits"), batch_size=64)


# --- a method from outside the package -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class RowNormConfig(MethodConfig):
    unit_fraction: float = setting(0.5, "fraction of each hidden layer's units kept",
                                   Real(0.0, 1.0, low_open=True, high_open=True))


class _LargestRows(PruningStrategy):
    def __init__(self, fraction):
        self.fraction = fraction

    def masks(self, model, output_layer=None):
        layers = self._layers(model, bayesian=False)
        keep = []
        for _, layer in layers:
            norms = layer.weight.detach().flatten(1).norm(dim=1)
            keep.append(norms >= norms.topk(max(1, round(self.fraction * len(norms)))).values[-1])
        return self._from_unit_masks(layers, keep, self._output(layers, output_layer))


class RowNorm(Method):
    """Keeps the hidden units with the largest incoming-weight norm: no training before pruning."""

    name = "toy-row-norm"
    config_class = RowNormConfig
    bayesian = False

    def prepare(self, network, config, context):
        pass

    def train(self, network, config, context):
        return []

    def strategy(self, config):
        return _LargestRows(config.unit_fraction)


@pytest.fixture
def toy_method():
    methods.register(RowNorm)
    yield RowNorm
    methods.unregister(RowNorm.name)


def test_a_method_registered_from_outside_runs_end_to_end_from_python_and_the_cli(toy_method, pretrained, tmp_path,
                                                                                 capsys):
    assert "toy-row-norm" in methods.names()
    train, val, test = _digits()
    result = compress(pretrained, train, val, "toy-row-norm", config=RowNormConfig(unit_fraction=0.25,
                                                                                   finetune_epochs=2),
                      test_loader=test, pipeline=PipelineConfig(quiet=True, max_accuracy_loss=1.0))
    assert result.metrics["architecture"]["exported"] == [8, 10]  # a quarter of 32 units
    assert result.posterior is None and result.metrics["mc_samples"] == 0
    assert result.exported(next(iter(test))[0]).shape[1] == 10
    weights = tmp_path / "mlp.safetensors"
    assert main(["pretrain", "--model", "mlp", "--epochs", "2", "--hidden", "16", "--out", str(weights),
                 "--quiet"]) == 0
    code = main(["compress", "--model", "mlp", "--weights", str(weights), "--method", "toy-row-norm",
                 "--unit-fraction", "0.5", "--finetune-epochs", "0", "--max-accuracy-loss", "1",
                 "--out", str(tmp_path / "run"), "--quiet", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["architecture"]["exported"] == [8, 10]
    assert load(tmp_path / "run").metrics["config"]["method"]["unit_fraction"] == 0.5


def test_two_registrations_under_one_name_are_refused(toy_method):
    class Impostor(RowNorm):
        pass

    with pytest.raises(ValueError, match="a method named 'toy-row-norm' is already registered"):
        methods.register(Impostor)
    methods.register(RowNorm)  # registering the same class again changes nothing
    assert methods.get("toy-row-norm") is RowNorm


def test_an_unknown_method_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown method 'turbo'; registered methods: gaussian-snr, ss-gl, ss-ghs, "
                                         "turbo-vbi, magnitude"):
        methods.get("turbo")


def test_a_setting_of_another_method_names_the_methods_it_belongs_to():
    with pytest.raises(ValueError, match="keep_fraction is a setting of gaussian-snr, magnitude, not of turbo-vbi"):
        TurboVBI(keep_fraction=0.1)
    with pytest.raises(ValueError, match="pi0 is a setting of turbo-vbi, not of ss-gl"):
        SpikeSlabGL(pi0=0.01)
    with pytest.raises(ValueError, match="colour is not a setting of magnitude"):
        Magnitude(colour="red")


def test_a_config_of_another_method_is_refused(pretrained):
    train, val, _ = _digits()
    with pytest.raises(ValueError, match="config is a TurboVBIConfig, the settings of turbo-vbi; the gaussian-snr "
                                         "method takes a GaussianSNRConfig"):
        compress(pretrained, train, val, "gaussian-snr", config=TurboVBIConfig())
    with pytest.raises(ValueError, match="pass config only with a method name"):
        compress(pretrained, train, val, TurboVBI(), config=TurboVBIConfig())


def test_the_cli_names_the_method_a_flag_belongs_to(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "--model", "mlp", "--weights", "w.safetensors", "--method", "turbo-vbi",
              "--keep-fraction", "0.1", "--out", str(tmp_path / "run")])
    code = exit_info.value.code
    assert code == 2
    err = capsys.readouterr().err
    assert "--keep-fraction is a setting of gaussian-snr, magnitude, not of turbo-vbi" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", methods.names())
def test_compress_help_lists_exactly_the_methods_settings_with_defaults_and_ranges(name, capsys):
    with pytest.raises(SystemExit):
        main(["compress", "--method", name, "--help"])
    text = capsys.readouterr().out
    own = describe(methods.get(name).config_class)
    for info in own:
        flag = "--" + info.name.replace("_", "-")
        assert flag in text
    section = " ".join(text.split(f"settings of {name}:")[1].split("pipeline settings")[0].split())
    assert section.count("; default ") == len(own)  # every setting states its default ...
    for info in own:  # ... and its range
        assert info.allowed.describe() in section
    others = {n for m in methods.names() for n in methods.get(m).config_class.names()} - {i.name for i in own}
    for other in others:
        assert "--" + other.replace("_", "-") + " " not in text


def test_settings_check_and_describe_their_values():
    assert Real(0.0, 1.0, low_open=True).describe() == "in (0, 1]"
    assert Real(0.0, low_open=True, optional=True).describe() == "> 0, or none"
    assert Real(0.0, low_open=True, optional=True).parse("none") is None
    assert Integer(1).describe() == "an integer >= 1"
    with pytest.raises(ValueError, match="n must be an integer >= 1; got 0"):
        Integer(1).check("n", 0)
    with pytest.raises(ValueError, match="graph must be one of 'grid'"):
        Choice(("grid",)).check("graph", "ring")
    with pytest.raises(ValueError, match="pi0 must be in"):
        TurboVBIConfig(pi0=1.0)
    assert Integer(0, high=9).describe() == "an integer in [0, 9]"
    assert Integer(1).parse("1e4") == 10000 and Integer(1).parse("150000.0") == 150000
    with pytest.raises(ValueError):
        Integer(1).parse("2.5")


@pytest.mark.parametrize("make, message", [
    (lambda: PipelineConfig(latency_budget=float("inf")), "latency_budget must be finite"),
    (lambda: PipelineConfig(latency_batch=10**9), r"latency_batch must be an integer in \[1, 65536\]"),
    (lambda: PipelineConfig(seed=2**70), r"seed must be an integer in \[0, 9223372036854775807\]"),
    (lambda: methods.get("gaussian-snr")(init_rho=100.0), r"init_rho must be in \[-30.0, 10.0\]"),
    (lambda: methods.get("gaussian-snr")(prior_scale=float("inf")), "prior_scale must be finite"),
], ids=["latency-budget-inf", "latency-batch", "seed", "init-rho", "prior-scale-inf"])
def test_a_setting_that_would_fail_mid_run_is_refused_on_construction(make, message):
    """Each of these used to be accepted and then failed after the training (or, for the seed, at its start)."""
    with pytest.raises(ValueError, match=message):
        make()


def test_the_preset_follows_the_network_and_given_settings_win():
    method = TurboVBI(pi0=0.02)
    cnn, mlp_config = method.configure(lenet5()), method.configure(mlp(64, (16,), 10))
    assert cnn.pi0 == mlp_config.pi0 == 0.02  # given
    assert cnn.epochs == TurboVBI.presets["cnn"]["epochs"] and mlp_config.epochs == TurboVBIConfig().epochs
    explicit = TurboVBI(config=TurboVBIConfig(epochs=3))
    assert explicit.configure(lenet5()).epochs == 3  # a config object is used as it is
    assert GaussianSNR().configure(lenet5()).keep_fraction == GaussianSNR.presets["cnn"]["keep_fraction"]
    for name in methods.names():  # every preset names settings of its own method, with valid values
        method_class = methods.get(name)
        for preset in method_class.presets.values():
            method_class.config_class(**preset)


def test_every_default_recipe_watches_validation_accuracy_before_pruning():
    for name in methods.names():
        method_class = methods.get(name)
        if not method_class.bayesian:
            continue
        for kind in ("mlp", "cnn"):
            config = method_class.config_class(**method_class.presets.get(kind, {}))
            assert config.max_val_drop is not None, (name, kind)


def test_a_destructive_setting_stops_early_or_warns_and_the_report_says_how_much_was_lost(pretrained):
    destructive = dict(prior_inclusion=1e-6, epochs=30, prior_lr=3e-2, rho_lr=3e-2, finetune_epochs=3)
    quick = PipelineConfig(mc_samples=4, quiet=True)
    train, val, test = _digits()
    # the early stopping's budget alone (the weights inside the units would spend a budget of their own)
    stopped = compress(pretrained, train, val, SpikeSlabGL(**destructive, within_unit_drop=None), test_loader=test,
                       pipeline=quick)
    vi = [r for r in stopped.history if "early_stopping/kept_step" in r]
    assert len(vi) < 30 and vi[-1]["early_stopping/kept_step"] < len(vi) * len(train)  # stopped, an earlier state
    assert stopped.metrics["accuracy_loss"]["compressed"] < 0.05
    train, val, test = _digits()
    with pytest.warns(AccuracyLossWarning, match=r"lost \d+\.\d\d points of accuracy against the original"):
        wrecked = compress(pretrained, train, val, SpikeSlabGL(**destructive, max_val_drop=None), test_loader=test,
                           pipeline=quick)
    loss = wrecked.metrics["accuracy_loss"]
    assert loss["exceeded"] and loss["compressed"] > 0.3 and loss["limit"] == quick.max_accuracy_loss
    assert f"WARNING: the compressed network lost {100 * loss['compressed']:.2f} points" in wrecked.report() or \
        f"WARNING: the exported network lost {100 * loss['exported']:.2f} points" in wrecked.report()


@pytest.mark.parametrize("method, settings, expected", [
    ("ssvi", {}, "keep more (density), or stop the training before the network degrades (max_val_drop), or "
                 "fine-tune longer (finetune_epochs)"),
    ("turbo-vbi", dict(target_macs=5000), "keep more (pi0, target_macs), or stop"),
])
def test_the_accuracy_loss_advice_names_only_the_runs_own_settings(method, settings, expected):
    from bayescompress.compress import accuracy_loss_advice

    config = methods.get(method)(**settings).configure(mlp(4, (3,), 2))
    assert accuracy_loss_advice(dataclasses.asdict(config)).startswith(expected)


def test_the_cli_warns_loudly_when_the_compressed_network_lost_too_much(tmp_path, capsys):
    weights = tmp_path / "mlp.safetensors"
    assert main(["pretrain", "--model", "mlp", "--epochs", "5", "--hidden", "16", "--out", str(weights),
                 "--quiet"]) == 0
    code = main(["compress", "--model", "mlp", "--weights", str(weights), "--method", "magnitude",
                 "--keep-fraction", "0.01", "--finetune-epochs", "0", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0  # the run folder is written ...
    err = capsys.readouterr().err
    assert "!!! WARNING: the compressed network lost" in err and "--max-accuracy-loss 0.01" in err  # ... loudly
    # the advice names magnitude's own flags only
    assert "keep more (--keep-fraction), or fine-tune longer (--finetune-epochs)" in err
    assert "--pi0" not in err and "--max-val-drop" not in err
    assert "**WARNING" in (tmp_path / "run" / "report.md").read_text()


def test_early_stopping_that_never_stops_leaves_the_run_unchanged(pretrained):
    runs = []
    for drop in (1.0, None):  # a budget no drop exceeds vs no early stopping at all
        train, val, test = _digits()
        method = TurboVBI(epochs=3, pi0=0.05, finetune_epochs=1, max_val_drop=drop)
        runs.append(compress(pretrained, train, val, method, test_loader=test,
                             pipeline=PipelineConfig(mc_samples=2, quiet=True, max_accuracy_loss=1.0)))
    watched, plain = runs
    assert watched.metrics["compressed"] == plain.metrics["compressed"]
    for name, probs in plain.inclusion.items():  # Turbo-VBI's last module A update stands
        assert torch.equal(watched.inclusion[name], probs)


def test_epochs_is_refused_for_a_method_without_training_before_pruning(pretrained):
    train, val, _ = _digits()
    with pytest.raises(ValueError, match="epochs is a setting of gaussian-snr, ss-gl, ss-ghs, turbo-vbi.*, not of "
                                         "magnitude"):
        compress(pretrained, train, val, "magnitude", epochs=3)


def test_methods_are_found_by_name_with_their_config_class():
    for name, method_class, config_class in [("gaussian-snr", GaussianSNR, methods.GaussianSNRConfig),
                                             ("ss-ghs", SpikeSlabGHS, methods.SpikeSlabHorseshoeConfig),
                                             ("turbo-vbi", TurboVBI, TurboVBIConfig)]:
        assert methods.get(name) is method_class and method_class.config_class is config_class


def test_the_methods_page_lists_every_setting_of_every_method_with_its_default():
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    for name in methods.names():
        table = page.split(f"### `{name}`")[1].split("###")[0]
        for info in describe(methods.get(name).config_class):
            row = next(line for line in table.splitlines() if line.startswith(f"| `{info.name}` |"))
            assert row.split("|")[2].strip() == _shown(info.default), (name, info.name)
            preset = methods.get(name).presets.get("cnn", {}).get(info.name, info.default)
            if preset != info.default:
                assert row.split("|")[3].strip() == _shown(preset), (name, info.name)


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "":
        return "(empty)"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def test_the_cli_lists_the_registered_methods_for_an_unknown_one(capsys):
    with pytest.raises(SystemExit):
        main(["compress", "--model", "mlp", "--weights", "w.safetensors", "--method", "turbo", "--out", "run"])
    err = capsys.readouterr().err
    assert "invalid choice: 'turbo'" in err and "gaussian-snr" in err and "magnitude" in err


def test_cli_flags_reach_the_method_typed_and_switches_turn_off(tmp_path, capsys):
    weights = tmp_path / "mlp.safetensors"
    assert main(["pretrain", "--model", "mlp", "--epochs", "2", "--hidden", "16", "--out", str(weights),
                 "--quiet"]) == 0
    code = main(["compress", "--model", "mlp", "--weights", str(weights), "--method", "ss-ghs", "--epochs", "1",
                 "--no-input-gates", "--input-gate-lr", "none", "--slab-regulariser", "none", "--finetune-epochs",
                 "0", "--mc-samples", "2", "--max-accuracy-loss", "1", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0
    record = load(tmp_path / "run").metrics["config"]
    assert record["method"]["input_gates"] is False and record["method"]["slab_regulariser"] is None
    assert record["method"]["epochs"] == 1 and record["method"]["slab_kl"] == "mean-field"  # the rest: the recipe
    assert record["pipeline"]["mc_samples"] == 2
