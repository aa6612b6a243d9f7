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
    assert panels[1].get_title().startswith("3: 25.0% kept, units 3/3")
    assert (tmp_path / "masks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pyplot.close(figure)


def test_no_masks_is_a_clear_error():
    with pytest.raises(ValueError, match="no weight masks"):
        plot_masks(Masks({}))


def test_cli_plots_a_saved_run(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["plot", str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "run" / "masks.png").stat().st_size > 1000
    assert capsys.readouterr().out == ""


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
