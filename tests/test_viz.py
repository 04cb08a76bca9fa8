"""Pictures: the uint8 mapping, the grid layout, and that every figure is written as a PNG."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddkit import viz


def test_to_uint8_maps_the_8bit_grid_exactly():
    k = torch.arange(256, dtype=torch.float32)
    x = (k / 127.5 - 1).reshape(1, 1, 16, 16)
    assert (viz.to_uint8(x).reshape(-1) == np.arange(256)).all()
    assert viz.to_uint8(torch.full((1, 3, 2, 2), 5.0)).max() == 255  # clipped, not wrapped


def test_grid_places_each_image_at_its_cell():
    x = torch.stack([torch.full((1, 4, 4), v) for v in (-1.0, 0.0, 1.0)])
    g = viz.image_grid(x, nrow=2, pad=1)
    assert g.shape == (2 * 5 + 1, 2 * 5 + 1, 1)
    assert (g[1:5, 1:5] == 0).all() and (g[1:5, 6:10] == 128).all() and (g[6:10, 1:5] == 255).all()
    assert (g[0] == 255).all()  # padding is white


def test_pictures_are_pngs(tmp_path):
    imgs = torch.rand(5, 3, 8, 8) * 2 - 1
    viz.save_samples(imgs, tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").size == (3 * 34 + 2, 2 * 34 + 2)  # 8 px -> 32 px
    big = torch.rand(2, 1, 40, 40) * 2 - 1
    viz.save_image_grid(big, tmp_path / "big.png")
    assert Image.open(tmp_path / "big.png").size == (2 * 42 + 2, 42 + 2)  # not enlarged
    pts = torch.randn(100, 2) * 0.3
    viz.save_samples(pts, tmp_path / "pts.png", reference=pts)
    frames = [("t=0", pts), ("t=500", pts * 2)]
    viz.save_trajectory(frames, frames[::-1], tmp_path / "traj2d.png")
    viz.save_trajectory([("t=0", imgs)], [("t=0", imgs)], tmp_path / "traj_img.png")
    recs = [
        {"step": s, "loss": 1.0 / s, "loss_by_t": {"0-99": 0.5, "100-199": 0.1}} for s in (1, 2, 3)
    ]
    viz.save_loss_curve(recs, tmp_path / "loss.png")
    for name in ("pts.png", "traj2d.png", "traj_img.png", "loss.png"):
        assert Image.open(tmp_path / name).format == "PNG"


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="cannot draw samples of shape"):
        viz.save_samples(torch.zeros(3, 5), "x.png")
    with pytest.raises(ValueError, match=r"\[N, 1 or 3, H, W\]"):
        viz.to_uint8(torch.zeros(2, 2, 4, 4))
