"""Nearest-neighbour x2 upsampling followed by a 3x3 convolution, computed on the low-resolution
grid as four 2x2 convolutions (one per output phase): 16 instead of 36 multiply-adds per input
pixel and output channel, the same function up to rounding.

Seen from the low-resolution grid, output row 2i + a takes input rows (i - 1, i) for a = 0 with
filter rows (0, 1 + 2), and rows (i, i + 1) for a = 1 with filter rows (0 + 1, 2); likewise for
columns.  The matrices ``_SUBPIXEL[a]`` fold the 3 filter rows into those 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .gn_silu import memory_format_of

_SUBPIXEL = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))

# where the four 2x2 convolutions beat the upsampled 3x3 one (BENCHMARKS.md): inputs with at least
# this many channels and pixels
SUBPIXEL_MIN_CHANNELS = 32
SUBPIXEL_MIN_PIXELS = 49


def subpixel_pays(x: torch.Tensor) -> bool:
    """Whether :func:`upsample_conv` is faster for ``x`` [N, C, H, W]: C >= 32 and H W >= 49.
    Below that (few channels, or a 4x4 grid, whose 2x2 convolutions cover a 5x5 grid) the
    upsampled 3x3 convolution wins."""
    return x.shape[1] >= SUBPIXEL_MIN_CHANNELS and x.shape[2] * x.shape[3] >= SUBPIXEL_MIN_PIXELS


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` as four
    2x2 convolutions on x.  x [N, C, H, W] -> [N, C_out, 2H, 2W] in x's memory format;
    differentiable (twice)."""
    _, _, h, w = x.shape
    c_out = weight.shape[0]
    p = torch.tensor(_SUBPIXEL, dtype=weight.dtype, device=weight.device)
    # phase filters [(a, b, c_out), C, 2, 2]: P_a g P_b^T
    k = torch.einsum("aph,bqw,oihw->aboipq", p, p, weight).reshape(4 * c_out, -1, 2, 2)
    b4 = None if bias is None else bias.repeat(4)
    z = F.conv2d(x, k, b4, padding=1)  # [N, 4 C_out, H + 1, W + 1]
    return _Interleave.apply(z, h, w)


class _Interleave(torch.autograd.Function):
    """out[:, c, 2i + a, 2j + b] = z[:, (a, b, c), i + a, j + b] for z [N, 4 C, H + 1, W + 1]: the
    four phases woven into the 2H x 2W grid in one pass, in z's memory format, and scattered back
    in one pass in the backward (slicing, ``stack`` and ``pixel_shuffle`` take three passes each
    way)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n, c4 = z.shape[:2]
        fmt = memory_format_of(z)
        out = torch.empty(
            n, c4 // 4, 2 * h, 2 * w, dtype=z.dtype, device=z.device, memory_format=fmt
        )
        grid = out.unflatten(3, (w, 2)).unflatten(2, (h, 2))  # [N, C, H, 2, W, 2], a view
        phases = z.unflatten(1, (2, 2, c4 // 4))
        for a in range(2):
            for b in range(2):
                grid[:, :, :, a, :, b].copy_(phases[:, a, b, :, a : a + h, b : b + w])
        ctx.shape, ctx.hw, ctx.fmt = z.shape, (h, w), fmt
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # slice copies, so differentiable again
        h, w = ctx.hw
        c4 = ctx.shape[1]
        dz = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.fmt)
        grid = grad.unflatten(3, (w, 2)).unflatten(2, (h, 2))
        phases = dz.unflatten(1, (2, 2, c4 // 4))
        for a in range(2):
            for b in range(2):
                phase = phases[:, a, b]
                phase[:, :, a : a + h, b : b + w].copy_(grid[:, :, :, a, :, b])
                # the row and the column of z that this phase does not read get no gradient
                phase[:, :, h - h * a].zero_()
                phase[:, :, :, w - w * b].zero_()
        return dz, None, None
