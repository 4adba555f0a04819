"""PNG output: the encoder round-trips through our decoder and the data package's independent one."""

import numpy as np
import pytest
import torch

from flowgen.viz import image_grid_png, read_png, render_image_grid, render_scatter, scatter_png, write_png


@pytest.mark.parametrize("shape", [(7, 5), (4, 9, 3)])
def test_png_round_trip(tmp_path, shape):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    f = write_png(tmp_path / "x.png", img)
    assert np.array_equal(read_png(f), img)
    from flowgen.data.files import read_image  # independent decoder (float in [0, 1], HWC)

    other = read_image(f)
    ref = img if img.ndim == 3 else img[..., None]
    assert np.allclose(other * 255.0, ref, atol=0.5)


def test_scatter_draws_points_where_they_are(tmp_path):
    pts = torch.tensor([[-1.0, -1.0], [1.0, 1.0]]).repeat(50, 1)
    canvas = render_scatter([("", [pts])], size=64, limits=(-1.2, 1.2, -1.2, 1.2), alpha=0.5)
    assert canvas.shape == (64 + 16, 64 + 16, 3)
    panel = canvas[8:72, 8:72].mean(-1)
    dark = np.argwhere(panel < 0.5)
    # point (1, 1) lands top-right, (-1, -1) bottom-left (y axis points up)
    assert any((r < 16 and c > 48) for r, c in dark) and any((r > 48 and c < 16) for r, c in dark)
    f = scatter_png(tmp_path / "s.png", [("DATA", [pts]), ("SAMPLES", [pts * 0.5])])
    assert read_png(f).shape[1] > read_png(f).shape[0]  # two panels side by side


def test_image_grid_layout_and_values(tmp_path):
    imgs = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, 1.0, 0.0)])
    grid = render_image_grid(imgs, nrow=3, scale=2, pad=1)
    assert grid.shape == (1 + 4 + 1, 1 + 3 * 5, 3)
    assert grid[1, 1, 0] == 0.0 and grid[1, 6, 0] == 1.0 and grid[1, 11, 0] == 0.5
    f = image_grid_png(tmp_path / "g.png", torch.rand(10, 3, 4, 4) * 2 - 1)
    assert read_png(f).ndim == 3


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        render_scatter([("", [torch.zeros(3, 3)])])
    with pytest.raises(ValueError, match="images"):
        render_image_grid(torch.zeros(2, 5, 4, 4))
