"""Operating points: re-pruning a run's trained posterior reproduces the run where the budgets agree, reads the
same from a run folder as from the result, and ranks by the method's own score."""

import warnings

import pytest
import torch

from bayescompress import PipelineConfig, compress, load
from bayescompress.data import load_dataset, make_loaders
from bayescompress.methods import SSVI, SparseVD, TurboVBI
from bayescompress.nn import bayesianize_
from bayescompress.operating_points import operating_points
from bayescompress.pruning.importance import sweep_scores
from bayescompress.priors import SpikeSlabGroupLasso
from bayescompress.workflows import pretrain

QUICK = PipelineConfig(mc_samples=2, quiet=True, max_accuracy_loss=1.0, latency_budget=0.02)


@pytest.fixture(scope="module")
def setup():
    net = pretrain("mlp", "digits", epochs=10, lr=3e-3, batch_size=64, hidden=(32,), quiet=True).model
    return net, make_loaders(load_dataset("digits"), batch_size=64)


@pytest.fixture(scope="module")
def ssvi_run(setup):
    net, (train, val, test) = setup
    return compress(net, train, val, SSVI(epochs=4, update_interval=10, kl_warmup_epochs=2), test_loader=test,
                    pipeline=QUICK)


def test_re_pruning_an_ssvi_run_at_its_density_gives_back_the_run(ssvi_run, setup):
    _, (_, _, test) = setup
    point, sparser = operating_points(ssvi_run, test, [0.1, 0.05])
    assert point["accuracy"] == ssvi_run.metrics["exported"]["accuracy"]
    assert point["compression"] == pytest.approx(ssvi_run.metrics["compression_rate"])
    assert point["units"] == ssvi_run.metrics["architecture"]["exported"]
    assert sparser["compression"] > point["compression"]


def test_a_run_folder_gives_the_same_points_as_the_result(ssvi_run, setup, tmp_path):
    net, (_, _, test) = setup
    ssvi_run.save(tmp_path / "run")
    assert (tmp_path / "run" / "trained.safetensors").is_file()
    fractions = [0.3, 0.1, 0.02]
    assert operating_points(tmp_path / "run", test, fractions, model=net) == operating_points(ssvi_run, test, fractions)
    # as the docs call it, on a run read back (it raised TypeError: expected str ... not SavedRun)
    saved = load(tmp_path / "run", model=net)
    assert operating_points(saved, test, fractions, model=net) == operating_points(ssvi_run, test, fractions)


def test_a_turbo_vbi_sweep_keeps_the_weights_of_highest_inclusion_and_compression_grows(setup):
    net, (train, val, test) = setup
    run = compress(net, train, val, TurboVBI(epochs=3, finetune_epochs=1), test_loader=test, pipeline=QUICK)
    points = operating_points(run, test, [0.5, 0.2, 0.05, 0.01])
    compressions = [p["compression"] for p in points]
    assert compressions == sorted(compressions) and compressions[-1] >= 50
    assert all(0.0 <= p["accuracy"] <= 1.0 and p["error"] == pytest.approx(1 - p["accuracy"]) for p in points)
    assert all(p["exported_macs"] <= run.metrics["macs"]["dense"] for p in points)


def test_spike_slab_scores_put_a_gated_off_unit_last():
    torch.manual_seed(0)
    net = bayesianize_(torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)),
                       SpikeSlabGroupLasso())
    layer = net[0]
    inclusion = layer.prior.inclusion(layer)
    assert inclusion.unit is not None
    with torch.no_grad():  # unit 2's gate far below the others'
        layer.prior.gate_logit[2] = -20.0
    scores = sweep_scores(layer)
    assert scores[2].max() < scores[[0, 1, 3]].min()


def test_bad_keep_fractions_are_refused(ssvi_run, setup):
    _, (_, _, test) = setup
    with pytest.raises(ValueError, match="keep_fractions"):
        operating_points(ssvi_run, test, [0.1, 1.5])


@pytest.mark.parametrize("method", [SparseVD(epochs=4), SSVI(epochs=3, update_interval=10)])
def test_the_point_at_the_methods_own_threshold_reproduces_the_run(setup, method):
    """Both methods have no fine-tuning, so re-pruning at the run's own masks is the run itself."""
    net, (train, val, test) = setup
    run = compress(net, train, val, method, test_loader=test, pipeline=QUICK)
    own = operating_points(run, test, [0.5], own=True)[-1]
    assert own["own"] and own["accuracy"] == run.metrics["exported"]["accuracy"]
    assert own["nll"] == pytest.approx(run.metrics["exported"]["nll"], rel=1e-6)
    assert own["compression"] == pytest.approx(run.metrics["compression_rate"])
    assert own["exported_macs"] == run.metrics["macs"]["exported"]


def test_a_run_folder_missing_a_file_names_it(ssvi_run, setup, tmp_path):
    from bayescompress.cli import main

    net, (_, _, test) = setup
    folder = ssvi_run.save(tmp_path / "run", plots=False)
    (folder / "trained.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="trained.safetensors is missing"):
        operating_points(folder, test, [0.1], model=net)
    (folder / "masks.safetensors").unlink()
    assert main(["plot", str(folder), "--quiet"]) == 2


def test_a_point_whose_ranking_empties_a_layer_is_marked_and_warned_about(ssvi_run, setup):
    _, (_, _, test) = setup
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mild budget empties nothing and says nothing
        (mild,) = operating_points(ssvi_run, test, [0.5])
    assert "emptied_layers" not in mild
    # one weight of the two layers' 2368 kept: exactly one layer has none
    with pytest.warns(UserWarning, match=r"keep fraction 0.0004: (0|1)\b.*cut network"):
        (extreme,) = operating_points(ssvi_run, test, [0.0004])
    assert len(extreme["emptied_layers"]) == 1


def test_budgets_beyond_what_the_posterior_holds_give_one_point_not_copies(ssvi_run, setup):
    """SSVI keeps 10 %: weights outside its subspace score 0 and are never kept, so the budgets of 50 % and
    20 % are the same masks (they were two points labelled 0.5 and 0.2)."""
    _, (_, _, test) = setup
    points = operating_points(ssvi_run, test, [0.5, 0.2, 0.05])
    assert [p["keep_fraction"] for p in points] == [0.2, 0.05]  # the smallest budget of the same weights
    assert points[0]["compression"] < points[1]["compression"]
