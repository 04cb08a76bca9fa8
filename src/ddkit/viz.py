"""Pictures: sample grids, 2-D scatter plots, forward/reverse trajectory figures, loss curves.

Images are tensors [N, C, H, W] in [-1, 1] (C = 1 or 3); 2-D data are [N, 2].  Every file is
written atomically (temporary file, then rename).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .paths import atomic_write_bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (x + 1) * 127.5, rounded and clipped."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1 or 3, H, W], got {tuple(x.shape)}")
    u = ((x.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return u.permute(0, 2, 3, 1).numpy()


def image_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile images into one uint8 array [H', W', C] with ``nrow`` images per row (default
    about square) and ``pad`` pixels of white between them."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    if n == 0:
        raise ValueError("no images to tile")
    ncol = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / ncol)
    grid = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        y, xx = pad + r * (h + pad), pad + k * (w + pad)
        grid[y : y + h, xx : xx + w] = imgs[i]
    return grid


def _png_bytes_of_array(arr: np.ndarray) -> bytes:
    from PIL import Image

    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def save_image_grid(
    x: torch.Tensor, path: str | Path, nrow: int | None = None, min_cell: int = 32
) -> None:
    """A PNG grid; images smaller than ``min_cell`` pixels are enlarged by an integer factor
    (nearest neighbour, every pixel kept as a square block) so that 8x8 data stay visible."""
    factor = max(1, min_cell // max(x.shape[-2:]))
    if factor > 1:
        x = x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    atomic_write_bytes(Path(path), _png_bytes_of_array(image_grid(x, nrow)))


def save_scatter(
    x: torch.Tensor, path: str | Path, *, reference: torch.Tensor | None = None, title: str = ""
) -> None:
    """Scatter of 2-D points (optionally over a grey reference sample)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 4))
    if reference is not None:
        r = reference.detach().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, c="0.8", label="data")
    p = x.detach().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=2, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    ax.set_xlim(-1.25, 1.25)
    ax.set_ylim(-1.25, 1.25)
    if title:
        ax.set_title(title)
    _save_figure(fig, path)


def class_grid(x: torch.Tensor, labels: torch.Tensor, num_classes: int, grid: int):
    """(images, per_row): up to ``grid`` of the samples ``x`` with one row per class (the first
    ``max(1, grid // num_classes)`` of each class that has any)."""
    per_row = max(1, grid // num_classes)
    rows = [x[labels == c][:per_row] for c in range(num_classes)]
    rows = [r for r in rows if len(r)]
    if any(len(r) < per_row for r in rows):  # pad short rows with white
        rows = [
            torch.cat([r, torch.ones_like(r[:1]).expand(per_row - len(r), *r.shape[1:])])
            for r in rows
        ]
    return torch.cat(rows), per_row


def save_samples(x: torch.Tensor, path: str | Path, **kwargs) -> None:
    """A grid for images [N, C, H, W], a scatter plot for 2-D points [N, 2]."""
    if x.ndim == 2 and x.shape[1] == 2:
        save_scatter(x, path, **kwargs)
    elif x.ndim == 4:
        save_image_grid(x, path)
    else:
        raise ValueError(
            f"cannot draw samples of shape {tuple(x.shape)}: need [N, 2] or [N, C, H, W]"
        )


def save_trajectory(
    forward: Sequence[tuple[str, torch.Tensor]],
    reverse: Sequence[tuple[str, torch.Tensor]],
    path: str | Path,
    *,
    max_images: int = 8,
) -> None:
    """Sohl-Dickstein et al. (2015) Fig. 1 style: the top row shows the forward process q at
    several t, the bottom row the reverse process p at several t (labels as given).  2-D data
    are scatter panels; images are columns of ``max_images`` examples per panel."""
    if not forward or not reverse:
        raise ValueError("a trajectory figure needs at least one forward and one reverse frame")
    plt = _plt()
    cols = max(len(forward), len(reverse))
    fig, axes = plt.subplots(2, cols, figsize=(2.2 * cols, 4.6), squeeze=False)
    for row, (name, frames) in enumerate((("q (forward)", forward), ("p (reverse)", reverse))):
        for k in range(cols):
            ax = axes[row][k]
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(frames):
                ax.axis("off")
                continue
            label, x = frames[k]
            if x.ndim == 2:
                p = x.detach().cpu().numpy()
                ax.scatter(p[:, 0], p[:, 1], s=1, c="tab:blue" if row else "tab:red")
                ax.set_xlim(-1.6, 1.6)
                ax.set_ylim(-1.6, 1.6)
                ax.set_aspect("equal")
            else:
                img = image_grid(x[:max_images].clamp(-1, 1), nrow=math.ceil(max_images / 2))
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
            ax.set_title(label, fontsize=9)
            if k == 0:
                ax.set_ylabel(name)
    _save_figure(fig, path)


def save_loss_curve(records: Sequence[dict], path: str | Path) -> None:
    """Loss against step from metrics records (``{"step", "loss", "loss_by_t"?}``); a second
    panel shows the last record's loss by timestep bucket when present."""
    pts = [(r["step"], r["loss"]) for r in records if "loss" in r and "step" in r]
    if not pts:
        raise ValueError("no loss records to plot")
    plt = _plt()
    buckets = next((r["loss_by_t"] for r in reversed(records) if r.get("loss_by_t")), None)
    fig, axes = plt.subplots(
        1, 2 if buckets else 1, figsize=(9 if buckets else 5, 3.5), squeeze=False
    )
    steps, losses = zip(*pts)
    ax = axes[0][0]
    ax.plot(steps, losses)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    if min(losses) > 0:
        ax.set_yscale("log")
    if buckets:
        names = list(buckets)
        ax2 = axes[0][1]
        ax2.bar(range(len(names)), [buckets[k] for k in names])
        ax2.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
        ax2.set_ylabel("loss")
        ax2.set_title("loss by timestep (last log interval)", fontsize=9)
        if min(buckets.values()) > 0:
            ax2.set_yscale("log")
    _save_figure(fig, path)


def save_guidance_curve(rows: list[dict], path: str | Path, title: str = "") -> None:
    """FID (left axis) and class accuracy (right axis) against the guidance scale w, from rows
    with ``guidance``, ``fid``, ``metric`` and ``class_accuracy`` (None: not plotted)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    w = [r["guidance"] for r in rows]
    ax.plot(w, [r["fid"] for r in rows], "o-", color="tab:blue")
    ax.set_xlabel("guidance scale w")
    ax.set_ylabel(rows[0]["metric"], color="tab:blue")
    acc = [(r["guidance"], r["class_accuracy"]) for r in rows if r["class_accuracy"] is not None]
    if acc:
        right = ax.twinx()
        right.plot(*zip(*acc, strict=True), "s--", color="tab:red")
        right.set_ylabel("class accuracy of samples", color="tab:red")
    ax.set_title(title, fontsize=9)
    _save_figure(fig, Path(path))
