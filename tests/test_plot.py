"""Mask pictures: one panel per layer showing exactly the mask; the CLI draws a saved run."""

import numpy as np
import pytest
import torch
from matplotlib import pyplot

from bayescompress.cli import main
from bayescompress.plot import masks as plot_masks
from bayescompress.pruning import Masks


def _masks():
    conv = torch.rand(4, 2, 3, 3) > 0.5
    linear = torch.zeros(3, 8, dtype=torch.bool)
    linear[:, :2] = True
    return Masks({"0": conv, "3": linear}, {"0": conv.flatten(1).any(1), "3": torch.ones(3, dtype=torch.bool)})


def test_each_layer_panel_shows_its_mask_and_title(tmp_path):
    m = _masks()
    figure = plot_masks(m, tmp_path / "masks.png")
    panels = [ax for ax in figure.axes if ax.get_images()]
    assert len(panels) == 2
    np.testing.assert_array_equal(panels[0].get_images()[0].get_array(), m.weight["0"].flatten(1).float().numpy())
    assert panels[1].get_title() == "3: 25.0% kept\nunits 3/3, inputs 2/8"
    shade = panels[1].get_images()[1].get_array()  # red over the inputs no kept weight reads
    assert (shade[:, 2:, 3] > 0).all() and (shade[:, :2, 3] == 0).all()
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["kept weight", "pruned weight",
                                                                     "removed unit / input"]
    assert (tmp_path / "masks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pyplot.close(figure)


def test_units_the_export_keeps_tied_are_shaded_apart_from_removed_ones():
    weight = torch.ones(4, 6, dtype=torch.bool)
    weight[1:3] = False
    m = Masks({"a": weight, "b": weight.clone()}, {"a": weight.any(1), "b": weight.any(1)})
    figure = plot_masks(m, exported={"a": 4, "b": 2})  # a's switched-off units stay, tied by a residual sum
    (a, b) = [ax.get_images()[1].get_array() for ax in figure.axes if ax.get_images()]
    np.testing.assert_allclose(a[1, 0], [0.95, 0.55, 0.0, 0.35])  # orange: still in the exported network
    np.testing.assert_allclose(b[1, 0], [0.85, 0.1, 0.1, 0.35])  # red: removed
    assert (a[0, :, 3] == 0).all() and (b[3, :, 3] == 0).all()  # kept rows unshaded
    titles = [ax.get_title() for ax in figure.axes if ax.get_images()]
    assert "units 2/4 (exported 4)" in titles[0] and "exported" not in titles[1]
    assert "unit switched off; the export keeps some of these" in [t.get_text() for t in figure.legends[0].get_texts()]
    pyplot.close(figure)
    # an export narrower than the masks (units nothing reads dropped too) is named as well
    figure = plot_masks(Masks({"a": weight}, {"a": torch.ones(4, dtype=torch.bool)}), exported={"a": 2})
    assert "units 4/4 (exported 2)" in figure.axes[0].get_title()
    pyplot.close(figure)


def test_no_masks_is_a_clear_error():
    with pytest.raises(ValueError, match="no weight masks"):
        plot_masks(Masks({}))


def test_cli_plots_a_saved_run(tmp_path, capsys):
    from bayescompress import GaussianSNR, PipelineConfig, compress
    from bayescompress.data import load_dataset, make_loaders
    from bayescompress.workflows import pretrain

    net = pretrain("mlp", "digits", epochs=5, hidden=(16,), quiet=True).model
    train, val, test = make_loaders(load_dataset("digits"), batch_size=64)
    result = compress(net, train, val, GaussianSNR(epochs=2, finetune_epochs=1), test_loader=test,
                      pipeline=PipelineConfig(mc_samples=2, quiet=True, max_accuracy_loss=1.0, latency_budget=0.02))
    result.save(tmp_path / "run")
    expected = {"masks.png", "units.png", "scores.png", "reliability.png", "training.png", "pixels.png"}
    assert {p.name for p in (tmp_path / "run" / "plots").iterdir()} == expected  # compress drew them
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "figures"), "--quiet"]) == 0
    assert {p.name for p in (tmp_path / "figures").iterdir()} == expected
    assert all((tmp_path / "figures" / name).read_bytes()[:4] == b"\x89PNG" for name in expected)
    assert capsys.readouterr().out == ""
    # another folder's figures of the same names are replaced only with --overwrite
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "masks.png").write_text("my figure")
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "mine"), "--quiet"]) == 2
    assert "already holds masks.png; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "mine" / "masks.png").read_text() == "my figure"
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "mine"), "--overwrite", "--quiet"]) == 0
    # a damaged file stops the command before any figure is drawn
    (tmp_path / "run" / "scores.safetensors").write_bytes(b"not a safetensors file")
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "fresh"), "--quiet"]) == 2
    assert not (tmp_path / "fresh").exists()


def test_inclusion_panels_show_the_probabilities_and_the_kept_fraction(tmp_path):
    from bayescompress.plot import inclusion

    probabilities = {"fc1": torch.tensor([[0.9, 0.1, 0.6, 0.2]]), "conv": torch.full((2, 1, 2, 2), 0.75)}
    figure = inclusion(probabilities, tmp_path / "inclusion.png")
    panels = [ax for ax in figure.axes if ax.get_images()]
    np.testing.assert_allclose(panels[0].get_images()[0].get_array(), [[0.9, 0.1, 0.6, 0.2]])
    assert panels[0].get_title() == "fc1: 50.0% with pi~ >= 1/2"
    assert panels[1].get_images()[0].get_array().shape == (2, 4)  # the conv kernel flattened into its row
    assert (tmp_path / "inclusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pyplot.close(figure)
    with pytest.raises(ValueError, match="Turbo-VBI"):
        inclusion({})


def test_mrf_sample_panel_is_a_binary_draw_beside_iid_draws_of_its_density(tmp_path):
    from bayescompress.plot import mrf_samples
    from bayescompress.priors import HierarchicalPrior

    figure = mrf_samples(HierarchicalPrior(pi0=0.5), shape=(24, 32), sweeps=30, path=tmp_path / "mrf.png")
    mrf, iid = (ax.get_images()[0].get_array() for ax in figure.axes)
    assert mrf.shape == iid.shape == (24, 32)
    assert set(np.unique(mrf)) <= {0.0, 1.0} and set(np.unique(iid)) <= {0.0, 1.0}
    assert "MRF (grid)" in figure.axes[0].get_title()
    assert (tmp_path / "mrf.png").exists()
    pyplot.close(figure)


def test_filters_draw_one_image_per_filter_and_mark_the_removed(tmp_path):
    from bayescompress.plot import filters

    kernels = torch.randn(6, 3, 5, 5)
    units = torch.tensor([True, False, True, True, False, True])
    figure = filters(kernels, units, "conv1", tmp_path / "f.png")
    panels = [ax for ax in figure.axes if ax.get_images()]
    assert len(panels) == 6
    np.testing.assert_allclose(panels[0].get_images()[0].get_array(), kernels[0].mean(0).numpy(), rtol=1e-6)
    assert [ax.get_title(loc="center") for ax in panels] == [str(i) for i in range(6)]
    assert [bool(ax.get_lines()) for ax in panels] == [False, True, False, False, True, False]  # struck through
    assert "4 of 6 filters switched on" in figure._suptitle.get_text()
    pyplot.close(figure)


def test_score_histograms_draw_the_threshold_the_masks_imply():
    from bayescompress.plot import score_histograms

    scores = {"fc": torch.tensor([[0.1, 0.5, 2.0, 10.0]]), "out": torch.tensor([[0.0, 3.0]])}
    kept = Masks({"fc": scores["fc"] >= 2.0, "out": scores["out"] > 0})
    figure = score_histograms(scores, kept, label="SNR", log=True)
    first, second = figure.axes[:2]
    assert first.get_lines()[0].get_xdata()[0] == pytest.approx(np.log10(2.0))
    assert first.get_xlabel() == "log10 SNR" and "50.0% kept" in first.get_title()
    assert "(1 at 0)" in second.get_title()  # a zero score is left out of a log histogram, and counted
    assert sum(p.get_height() for p in first.patches) == 4
    pyplot.close(figure)


def test_units_kept_bars_are_the_counts_with_their_fractions():
    from bayescompress.plot import units_kept

    figure = units_kept([300, 100, 10], [60, 25, 10], ["fc1", "fc2", "fc3"])
    ax = figure.axes[0]
    assert [round(p.get_height()) for p in ax.patches] == [300, 100, 10, 60, 25, 10]
    assert [t.get_text() for t in ax.texts] == ["20%", "25%", "100%"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fc1", "fc2", "fc3"]
    assert ax.get_ylabel() == "units (neurons / filters)"
    pyplot.close(figure)
    with pytest.raises(ValueError, match="must match"):
        units_kept([3, 2], [1])


def test_the_reliability_diagram_plots_each_network_against_the_diagonal():
    from bayescompress.metrics import reliability
    from bayescompress.plot import reliability_diagram

    probs = torch.tensor([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 0, 0])
    bins = reliability(probs, labels, n_bins=5)
    assert bins["count"] == [0, 0, 2, 0, 2] and bins["accuracy"][2] == 1.0 and bins["accuracy"][4] == 0.5
    figure = reliability_diagram({"original": bins, "compressed": bins})
    top = figure.axes[0]
    labels_drawn = [line.get_label() for line in top.get_lines()]
    assert labels_drawn == ["perfect calibration", "original", "compressed"]
    np.testing.assert_allclose(top.get_lines()[1].get_ydata(), [1.0, 0.5])
    np.testing.assert_allclose(top.get_lines()[1].get_xdata(), [0.575, 0.925])
    assert figure.axes[1].get_xlabel() == "confidence (top-class probability)"
    pyplot.close(figure)


def test_training_curves_have_one_panel_per_recorded_quantity_and_mark_the_fine_tuning():
    from bayescompress.plot import training_curves

    history = [{"epoch": 1, "loss": 3.0, "nll": 1.0, "kl": 50.0, "val_accuracy": 0.9, "kept_fraction": 0.5},
               {"epoch": 2, "loss": 2.0, "nll": 0.8, "kl": 40.0, "val_accuracy": 0.92, "kept_fraction": 0.3},
               {"epoch": 1, "loss": 0.5, "nll": 0.5, "kl": 10.0, "val_accuracy": 0.95, "kept_fraction": 0.3}]
    figure = training_curves(history)
    assert [ax.get_ylabel() for ax in figure.axes] == ["loss per example", "KL (nats)", "validation accuracy",
                                                      "fraction of weights kept"]
    loss = figure.axes[0].get_lines()[0]
    np.testing.assert_allclose(loss.get_ydata(), [3.0, 2.0, 0.5])
    assert figure.axes[1].get_lines()[-1].get_xdata()[0] == 2.5  # the dashed line before the fine-tuning
    assert "fine-tuning" in figure._suptitle.get_text()
    figure.canvas.draw()
    ticks = figure.axes[0].get_xticks()
    assert np.allclose(ticks, np.round(ticks))  # whole epochs only
    pyplot.close(figure)


def test_kept_pixels_counts_kept_weights_per_pixel():
    from bayescompress.plot import kept_pixels

    mask = torch.zeros(3, 784, dtype=torch.bool)
    mask[:, 0] = True
    mask[0, 783] = True
    figure = kept_pixels(mask, (28, 28))
    image = figure.axes[0].get_images()[0].get_array()
    assert image.shape == (28, 28) and image[0, 0] == 3 and image[27, 27] == 1 and image.sum() == 4
    assert figure.axes[0].get_title() == "input layer: 2 of 784 pixels read"
    pyplot.close(figure)
    with pytest.raises(ValueError, match="not an image"):
        kept_pixels(mask, (20, 20))


def test_pareto_draws_every_method_and_labels_the_published_anchors():
    from bayescompress.plot import pareto

    points = {"a": [{"compression": 10, "error": 0.02, "exported_macs": 5e4},
                    {"compression": 50, "error": 0.03, "exported_macs": 1e4}],
              "b": [{"compression": 20, "error": 0.025, "exported_macs": 2e4}]}
    runs = {"a": [{"compression": 30, "error": 0.018, "exported_macs": 3e4}]}
    anchors = [{"label": "Sparse VD", "compression": 68, "error": 0.0192}]
    figure = pareto(points, runs, anchors)
    left, right = figure.axes
    np.testing.assert_allclose(left.get_lines()[0].get_xdata(), [10, 50])
    np.testing.assert_allclose(left.get_lines()[0].get_ydata(), [2.0, 3.0])  # error in percent
    assert [t.get_text() for t in left.texts] == ["Sparse VD (published)"]
    assert len(right.texts) == 0  # the anchor gives no MACs
    assert left.get_xscale() == right.get_xscale() == "log"
    assert left.get_ylabel() == "test error (%)"
    assert [t.get_text() for t in figure.legends[0].get_texts()] == [
        "a (re-pruned, no fine-tuning)", "a (runs)", "b (re-pruned, no fine-tuning)"]
    pyplot.close(figure)


def test_pareto_marks_runs_above_its_zoomed_error_axis_on_the_top_edge():
    from bayescompress.plot import pareto

    runs = {"good": [{"compression": 10, "error": 0.02, "exported_macs": 5e4}],
            "poor": [{"compression": 12, "error": 0.387, "exported_macs": 4e4}]}
    figure = pareto({}, runs)
    left, right = figure.axes
    top = left.get_ylim()[1]
    assert top < 38.7  # zoomed on the good run: 4 x 2 % = 8 %
    for ax in (left, right):
        edge = [c for c in ax.collections if c.get_offsets().shape[0] and np.allclose(c.get_offsets()[:, 1], top)]
        assert len(edge) == 1 and edge[0].get_offsets()[0, 0] == (12 if ax is left else 4e4)
        assert [t.get_text() for t in ax.texts] == ["poor 38.7 %"]  # which method, in its colour
    pyplot.close(figure)


def test_pareto_keeps_an_anchor_more_accurate_than_every_run_inside_its_error_axis():
    from bayescompress.plot import pareto

    runs = {"short": [{"compression": 10, "error": 0.06, "exported_macs": 5e4}]}
    figure = pareto({}, runs, [{"label": "pub", "compression": 20, "error": 0.02}])
    low, high = figure.axes[0].get_ylim()
    assert low <= 2.0 <= high and low <= 6.0 <= high  # it was 5.5-24 %: the star vanished below
    pyplot.close(figure)


def test_labels_of_neighbouring_runs_above_the_axis_are_stacked_not_overlaid():
    from bayescompress.plot import pareto

    runs = {"good": [{"compression": 10, "error": 0.02, "exported_macs": 5e4}],
            "poor": [{"compression": 12, "error": 0.815, "exported_macs": 4e4},
                     {"compression": 13, "error": 0.835, "exported_macs": 3.9e4},
                     {"compression": 40, "error": 0.5, "exported_macs": 1e4}]}
    figure = pareto({}, runs)
    left, _ = figure.axes
    offsets = {t.get_text(): t.xyann[1] for t in left.texts}
    assert offsets["poor 81.5 %"] != offsets["poor 83.5 %"]  # 12x and 13x: one label below the other
    assert offsets["poor 50.0 %"] == offsets["poor 81.5 %"]  # 40x is far enough for the first row
    pyplot.close(figure)


class _HeadFirst(torch.nn.Module):
    """Head registered before a body of more than ten numbered layers: sorting the names by text puts "body.10"
    before "body.2" and "body.8", and neither order is the network's."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(6, 10)
        widths = [64, 24, 20, 16, 12, 8, 6]
        layers = []
        for a, b in zip(widths, widths[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        self.body = torch.nn.Sequential(torch.nn.Flatten(), *layers)

    def forward(self, x):
        return self.head(self.body(x))


def test_a_saved_run_gives_back_its_layers_in_network_order_and_the_unit_figure_pairs_names_with_counts(tmp_path,
                                                                                                       monkeypatch):
    from bayescompress import Magnitude, PipelineConfig, compress
    from bayescompress import plot as plot_module
    from bayescompress.data import load_dataset, make_loaders
    from bayescompress.plot import draw_run
    from bayescompress.pruning.masks import prunable_layers
    from bayescompress.runs import read_masks

    torch.manual_seed(0)
    net = _HeadFirst()
    train, val, _ = make_loaders(load_dataset("digits"), batch_size=64)
    result = compress(net, train, val, Magnitude(keep_fraction=0.5, finetune_epochs=0),
                      pipeline=PipelineConfig(mc_samples=2, quiet=True, max_accuracy_loss=1.0, latency_budget=0.02))
    result.save(tmp_path / "run", plots=False)
    names = [name for name, _ in prunable_layers(net)]
    assert names[0] == "head" and names[-1] == "body.11"  # module order, as the metrics' architecture counts
    masks, _ = read_masks(tmp_path / "run")
    assert list(masks.weight) == names
    drawn = {}
    monkeypatch.setattr(plot_module, "units_kept", lambda original, exported, labels, path: drawn.update(
        original=original, labels=labels) or pyplot.figure())
    draw_run(tmp_path / "run", tmp_path / "figures")
    assert drawn["labels"] == names
    assert drawn["original"] == [masks.units[name].numel() for name in names]  # each bar's count is its layer's


def test_masks_written_before_their_order_was_recorded_come_back_in_numeric_order():
    tensors = {f"weight/features.{i}": torch.ones(2, 2, dtype=torch.uint8) for i in (0, 2, 10, 12)}
    tensors = dict(sorted(tensors.items()))  # as a safetensors file returns them: "10" and "12" before "2"
    assert list(Masks.from_tensors(tensors).weight) == ["features.0", "features.2", "features.10", "features.12"]
    order = ["features.12", "features.0", "features.10", "features.2"]
    assert list(Masks.from_tensors(tensors, order).weight) == order


def test_plotting_a_folder_that_does_not_exist_says_so():
    from bayescompress.plot import draw_run

    with pytest.raises(FileNotFoundError, match="nowhere is not a folder; give a run folder"):
        draw_run("nowhere")


def test_pareto_spans_what_it_draws_not_a_curves_end_off_the_top():
    from bayescompress.plot import pareto

    points = {"a": [{"compression": c, "error": e, "exported_macs": 1e6 / c}
                    for c, e in ((2, 0.02), (10, 0.021), (40, 0.03), (500, 0.6))]}  # 500x is far above the axis
    figure = pareto(points, {"a": [{"compression": 20, "error": 0.019, "exported_macs": 5e4}]})
    left, right = figure.axes
    assert left.get_ylim()[1] < 60
    np.testing.assert_allclose(left.get_xlim(), (2 / 1.25, 40 * 1.25))
    np.testing.assert_allclose(right.get_xlim(), (1e6 / 2 * 1.25, 1e6 / 40 / 1.25))  # inverted: fewer MACs right
    pyplot.close(figure)


def test_pareto_draws_a_runs_own_masks_beside_the_curve_not_on_it():
    from bayescompress.plot import pareto

    points = {"a": [{"compression": 2, "error": 0.02, "exported_macs": 5e5},
                    {"compression": 10, "error": 0.03, "exported_macs": 1e5},
                    {"compression": 4, "error": 0.26, "exported_macs": 2e5, "own": True}]}
    figure = pareto(points)
    left, _ = figure.axes
    np.testing.assert_allclose(left.get_lines()[0].get_xdata(), [2, 10])  # the curve skips the own point
    diamonds = [c for c in left.collections if c.get_offsets().shape[0] == 1]
    np.testing.assert_allclose(diamonds[0].get_offsets(), [[4, 26.0]])
    assert "a run's own masks, no fine-tuning" in [t.get_text() for t in figure.legends[0].get_texts()]
    pyplot.close(figure)


def test_a_run_whose_architecture_lists_a_layer_left_whole_is_drawn_by_name(tmp_path, monkeypatch):
    """A transformer's out_proj is a Linear the masks do not cover: matched by position, nothing lined up, so
    units.png named no layer and masks.png shaded units the export keeps as removed."""
    from bayescompress import plot
    from bayescompress.io import write_json

    weight = {"enc.linear1": torch.ones(16, 8, dtype=torch.bool), "enc.linear2": torch.ones(8, 16, dtype=torch.bool),
              "head": torch.ones(3, 8, dtype=torch.bool)}
    weight["enc.linear1"][10:] = False
    units = {name: w.any(1) for name, w in weight.items()}
    units["enc.linear2"][2:] = False  # switched off, but the residual sum keeps all 8 in the export
    run = tmp_path / "run"
    run.mkdir()
    Masks(weight, units).save(run / "masks.safetensors")
    layers = ["enc.self_attn.out_proj", "enc.linear1", "enc.linear2", "head"]
    write_json(run / "metrics.json", {"format_version": 2, "method": "magnitude", "architecture": {
        "layers": layers, "original": [8, 16, 8, 3], "exported": [8, 10, 8, 3]}})
    seen = {}
    real_masks, real_units = plot.masks, plot.units_kept
    monkeypatch.setattr(plot, "masks", lambda m, p, exported=None: seen.setdefault("widths", exported)
                        and real_masks(m, p, exported=exported))
    monkeypatch.setattr(plot, "units_kept", lambda o, e, names, p: seen.setdefault("names", names)
                        and real_units(o, e, names, p))
    plot.draw_run(run)
    assert seen["widths"] == {"enc.self_attn.out_proj": 8, "enc.linear1": 10, "enc.linear2": 8, "head": 3}
    assert seen["names"] == layers
    assert {p.name for p in (run / "plots").iterdir()} == {"masks.png", "units.png"}
    figure = plot_masks(Masks(weight, units), exported=seen["widths"])
    assert "units 2/8 (exported 8)" in [ax.get_title() for ax in figure.axes if ax.get_images()][1]
    pyplot.close(figure)


def test_a_score_threshold_is_drawn_only_where_one_score_separates_kept_from_pruned():
    from bayescompress.plot import score_histograms

    scores = {"fc": torch.arange(1.0, 13.0).view(3, 4)}
    by_score = Masks({"fc": scores["fc"] >= 7})
    by_unit = Masks({"fc": torch.tensor([[True] * 4, [False] * 4, [True] * 4])})  # row 1 holds scores 5-8
    nothing = Masks({"fc": torch.ones(3, 4, dtype=torch.bool)})
    lines = [len(score_histograms(scores, m).axes[0].get_lines()) for m in (by_score, by_unit, nothing)]
    assert lines == [1, 0, 0]
    pyplot.close("all")


def test_training_curves_of_one_epoch_without_a_posterior_have_no_kl_panel_and_whole_epoch_ticks():
    from bayescompress.plot import training_curves

    figure = training_curves([{"epoch": 1, "loss": 0.3, "nll": 0.3, "kl": 0.0, "val_accuracy": 0.9}])
    assert [ax.get_ylabel() for ax in figure.axes] == ["loss per example", "validation accuracy"]
    assert figure.axes[0].get_xlim() == (0.5, 1.5) and list(figure.axes[0].get_xticks()) == [1]
    pyplot.close(figure)
    with pytest.raises(ValueError, match="records no loss, KL, accuracy or kept fraction"):
        training_curves([{"epoch": 1, "loss": None, "kl": 0.0}])
    spread = training_curves([{"epoch": e, "loss": 2e4 / e, "nll": 0.5 / e} for e in (1, 2, 3)])
    assert spread.axes[0].get_yscale() == "log"  # the NLL is not flattened against a loss 4e4 times larger
    pyplot.close(spread)


def test_kept_pixels_colour_from_zero_and_tabular_features_are_not_an_image(tmp_path):
    from bayescompress.io import save_weights
    from bayescompress.plot import _input_image_shape, kept_pixels

    mask = torch.ones(5, 16, dtype=torch.bool)
    mask[:3, 0] = False  # every pixel read at least twice: the colours still start at 0
    image = kept_pixels(mask, (4, 4)).axes[0].get_images()[0]
    assert image.get_clim()[0] == 0
    pyplot.close("all")
    for features, shape in ((16, None), (64, (8, 8))):
        save_weights({"input": torch.zeros(2, features)}, tmp_path / "probe.safetensors")
        assert _input_image_shape(tmp_path) == shape


def test_a_run_folder_missing_a_figures_file_says_which_figure_was_not_drawn(tmp_path):
    from bayescompress.io import write_json
    from bayescompress.plot import draw_run

    weight = torch.ones(3, 8, dtype=torch.bool)
    Masks({"fc": weight}).save(tmp_path / "masks.safetensors")
    write_json(tmp_path / "metrics.json", {"format_version": 2, "method": "magnitude", "architecture": {
        "layers": ["fc"], "original": [3], "exported": [3]}})
    with pytest.warns(UserWarning, match=r"not drawn: scores\.png \(no scores\.safetensors\); reliability\.png "
                                         r"\(metrics\.json has no reliability bins\); training\.png \(no history\.json\)"):
        written = draw_run(tmp_path)
    assert [p.name for p in written] == ["masks.png", "units.png"]


def test_a_wide_mask_shades_each_block_by_the_share_of_its_units_removed():
    weight = torch.ones(1000, 30, dtype=torch.bool)
    weight[500] = False  # one removed unit among 1000: resampled, it faded to a faint line
    figure = plot_masks(Masks({"fc": weight}))
    kept, shade = figure.axes[0].get_images()
    assert kept.get_array().shape == (334, 30)  # blocks of 3 rows: at most 400 per panel
    red = np.nonzero(shade.get_array()[:, 0, 3] > 0)[0]
    assert red.tolist() == [500 // 3]
    # a third as red as a removed unit's row: one of its block's three units (red for any overstated removal 2x)
    np.testing.assert_allclose(shade.get_array()[500 // 3, 0, 3], 0.35 / 3, rtol=1e-6)
    np.testing.assert_allclose(kept.get_array()[500 // 3, 0], 2 / 3)  # the block's mean: 2 of its 3 rows kept
    assert kept.get_extent() == [-0.5, 29.5, 999.5, -0.5]  # axes still count units and inputs
    pyplot.close(figure)


def test_mask_panels_tick_whole_units_only():
    figure = plot_masks(Masks({"fc": torch.ones(3, 4, dtype=torch.bool)}))
    figure.canvas.draw()
    for ticks in (figure.axes[0].get_xticks(), figure.axes[0].get_yticks()):
        assert all(float(t).is_integer() for t in ticks)
    pyplot.close(figure)


def test_plots_given_scores_or_points_they_cannot_draw_say_so_or_leave_them_out():
    from bayescompress.plot import inclusion, pareto, score_histograms

    scores = torch.tensor([[1.0, float("nan"), 3.0, float("inf")]])
    figure = score_histograms({"fc": scores}, Masks({"fc": scores.isfinite()}), log=True)
    assert "2 not finite (not drawn)" in figure.axes[0].get_title()
    pyplot.close(figure)
    with pytest.raises(ValueError, match=r"inclusion probabilities of fc have shape \(4,\); give one per weight"):
        inclusion({"fc": torch.rand(4)})
    figure = pareto({"a": [{"compression": 2.0, "error": 0.02}, {"compression": 4.0, "error": 0.03}]})
    assert len(figure.axes[0].get_lines()) == 1 and not figure.axes[1].get_lines()  # no MACs: left panel only
    pyplot.close(figure)
    with pytest.raises(ValueError, match="a run of a has no error or compression"):
        pareto({}, {"a": [{"compression": 2.0}]})


def test_a_methods_curve_wholly_above_the_zoomed_axis_says_so_in_the_legend():
    from bayescompress.plot import pareto

    points = {"good": [{"compression": c, "error": 0.01, "exported_macs": 1e4} for c in (2, 4)],
              "poor": [{"compression": c, "error": 0.5, "exported_macs": 1e4} for c in (2, 4)]}
    figure = pareto(points)
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels == ["good (re-pruned, no fine-tuning)", "poor (re-pruned, no fine-tuning): above 6 % error"]
    pyplot.close(figure)


def test_the_share_of_inputs_axis_ends_near_one():
    from bayescompress.metrics import reliability
    from bayescompress.plot import reliability_diagram

    probabilities = torch.softmax(torch.randn(300, 3) * 3, dim=1)
    figure = reliability_diagram({"original": reliability(probabilities, torch.randint(0, 3, (300,)))})
    assert figure.axes[1].get_ylim()[1] <= 1.5
    pyplot.close(figure)


def test_plot_of_a_folder_that_is_not_a_finished_run_says_what_it_is(tmp_path, capsys):
    from bayescompress.io import write_json
    from bayescompress.plot import draw_run

    interrupted = tmp_path / "run"
    (interrupted / "checkpoint").mkdir(parents=True)
    (interrupted / "checkpoint" / "run.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds a run that has not finished; finish it with `bayescompress "
                                         r"compress --resume .*run`"):
        draw_run(interrupted)
    method = tmp_path / "cmp" / "magnitude"  # a comparison's method folder, one level above its runs
    for seed in ("seed0", "seed1"):
        (method / seed).mkdir(parents=True)
        write_json(method / seed / "metrics.json", {"format_version": 2, "method": "magnitude"})
        write_json(method / seed / "architecture.json", {"format_version": 2})
    with pytest.raises(ValueError, match=r"holds a comparison's runs of one method \(seed0, seed1\): plot one"):
        draw_run(method)
    assert main(["plot", str(interrupted / "checkpoint" / "run.json")]) == 2  # a file: it offered to write into it
    assert "run.json is not a folder; give a run folder" in capsys.readouterr().err
