"""Image detail statistics, a diagnostic beside FID: FID on features learned from class labels
weighs what tells classes apart more than fine detail, so a blurry sampler can score well.

``sharpness`` measures detail directly, per image (any value range; ddkit's is [-1, 1]):

* ``grad``: the mean absolute difference between vertical neighbours plus that between
  horizontal neighbours (edge strength);
* ``hf_share``: the share of the image's spectral power, its mean removed, at radial
  frequencies above ``cutoff`` cycles per pixel (fine detail), channels summed.
"""

from __future__ import annotations

import torch


def sharpness(x: torch.Tensor, cutoff: float = 0.25) -> dict[str, torch.Tensor]:
    """Per-image ``grad`` and ``hf_share`` (float64, shape (N,)) of images (N, C, H, W)."""
    if x.ndim != 4 or min(x.shape[-2:]) < 2:
        raise ValueError(
            f"images of shape (N, C, H, W) with H, W >= 2 expected, got {tuple(x.shape)}"
        )
    if not 0.0 < cutoff < 0.5 * 2**0.5:
        raise ValueError(f"cutoff={cutoff!r} must lie in (0, 0.707) cycles per pixel")
    x = x.double()
    grad = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3))
    grad = grad + (x[..., :, 1:] - x[..., :, :-1]).abs().mean((1, 2, 3))
    h, w = x.shape[-2:]
    power = torch.fft.fft2(x - x.mean((-2, -1), keepdim=True)).abs().pow(2).sum(1)
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    high = (fy**2 + fx**2).sqrt() > cutoff
    total = power.flatten(1).sum(1)
    share = torch.where(total > 0, power[:, high].sum(1) / total.clamp_min(1e-300), 0.0)
    return {"grad": grad, "hf_share": share}
