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
