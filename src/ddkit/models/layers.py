"""Building blocks shared by the U-Net and the MLP, in plain PyTorch.

Notation: N batch, C channels, H x W spatial size, E time-embedding width, D feature width.
Three blocks have a faster CPU route to the same function, taken where
:func:`ddkit.cpu.fast_path` admits the call: :class:`GroupNormSiLU` (one fused kernel),
:class:`Conv3x3` (Winograd, where it pays) and :class:`Upsample` (four 2x2 convolutions).
Everything else, and those three elsewhere, is the code as written here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import cpu

GROUPNORM_EPS = 1e-6  # the official DDPM code (tf.contrib.layers.group_norm's default)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps, as in the DDPM code (Ho et al. 2020,
    ``get_timestep_embedding``).

    ``t``: [N] timestep indices (long, or float for fractional steps).  Returns [N, dim] float32:
    with half = dim // 2 and frequencies f_k = max_period ** (-k / (half - 1)), k = 0 .. half - 1,

        emb[:, k] = sin(t * f_k),    emb[:, half + k] = cos(t * f_k),

    so f_0 = 1 and f_{half-1} = 1 / max_period.  For odd ``dim`` the last column is zero.
    Every entry lies in [-1, 1].
    """
    if t.ndim != 1:
        raise ValueError(f"timesteps must be a [N] tensor, got shape {tuple(t.shape)}")
    if dim < 4:
        raise ValueError(f"embedding dim must be >= 4, got {dim}")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def class_labels(y: torch.Tensor | None, n: int, num_classes: int, device) -> torch.Tensor | None:
    """The labels a class-conditional network embeds: ``y`` [n] long in 0..num_classes, the index
    ``num_classes`` being the null label of the unconditional branch (``y=None``: all null).
    None for an unconditional network (``num_classes=0``), which refuses labels."""
    if num_classes == 0:
        if y is not None:
            raise ValueError("this model is unconditional (num_classes = 0); it takes no labels")
        return None
    if y is None:
        return torch.full((n,), num_classes, dtype=torch.long, device=device)
    if not torch.is_tensor(y) or y.dtype != torch.long or tuple(y.shape) != (n,):
        shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"labels must be a long tensor of shape [{n}], got {shape}")
    return y


def time_label_embedding(
    time_embed: nn.Sequential, label_emb: nn.Embedding | None, sinusoid: torch.Tensor, y
) -> torch.Tensor:
    """The block embedding of the U-Net and the MLP: ``time_embed`` (Linear, SiLU, Linear, SiLU)
    of the sinusoidal features, with the label embedding of a class-conditional model added
    before the last SiLU (where improved-diffusion and diffusers add it)."""
    linear1, act, linear2, act_out = time_embed
    emb = linear2(act(linear1(sinusoid)))
    if y is not None:
        emb = emb + label_emb(y).to(emb.dtype)
    return act_out(emb)


def zero_(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (the DDPM code's ``init_scale=0``); returns it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNormSiLU(nn.GroupNorm):
    """GroupNorm followed by SiLU (the pair that precedes every conv in the DDPM U-Net), with two
    optional neighbours folded in: a per-channel ``shift`` [N, C] added before the norm (the
    residual block's time embedding) and a dropout applied after the SiLU:

        y = dropout(SiLU(GroupNorm(x + shift[:, :, None, None])))

    Its parameters are those of ``nn.GroupNorm`` (weight, bias).  On the CPU fast path this is
    one fused kernel (:func:`ddkit.cpu.group_norm_silu`), whose dropout mask is its own
    counter-based draw (p rounded to a multiple of 2**-24, seeded from torch's generator).
    """

    def forward(
        self,
        x: torch.Tensor,
        shift: torch.Tensor | None = None,
        dropout: nn.Dropout | None = None,
    ) -> torch.Tensor:
        """x [N, C, H, W], shift [N, C] or None -> [N, C, H, W]; ``dropout`` only in training."""
        p = dropout.p if dropout is not None and dropout.training else 0.0
        if cpu.fast_path("gn_silu", x, shift, self.weight, self.bias) and cpu.kernel_applies(
            x, self.weight, self.num_groups, shift
        ):
            return cpu.group_norm_silu(
                x, shift, self.weight, self.bias, self.num_groups, self.eps, p
            )
        if shift is not None:
            x = x + shift[:, :, None, None]
        y = F.silu(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))
        return y if p == 0.0 else dropout(y)


class Conv3x3(nn.Conv2d):
    """3x3 convolution, stride 1, padding 1: an ``nn.Conv2d`` (same parameters and state dict).

    On the CPU fast path, where :func:`ddkit.cpu.winograd_pays` (AVX2 CPUs, many channels and
    tiles), it runs as :func:`ddkit.cpu.winograd_conv3x3`: the same function up to rounding.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C_in, H, W] -> [N, C_out, H, W]."""
        if cpu.fast_path("winograd", x, self.weight, self.bias) and cpu.winograd_pays(
            x, self.in_channels, self.out_channels
        ):
            return cpu.winograd_conv3x3(x, self.weight, self.bias)
        return super().forward(x)


class ResBlock(nn.Module):
    """The DDPM residual block, [N, C_in, H, W] x [N, E] -> [N, C_out, H, W].

        h = conv1(SiLU(GN(x))) + Linear(emb)[:, :, None, None]
        h = conv2(dropout(SiLU(GN(h))))          (conv2 zero-initialised)
        out = skip(x) + h                         (skip: 1x1 conv if C_in != C_out, else identity)

    ``emb`` is the time embedding *after* its SiLU (the DDPM code applies SiLU to the shared
    embedding inside every block; the U-Net computes it once and passes it in).  The embedding's
    add, GN, SiLU and dropout of the second line are one :class:`GroupNormSiLU` call.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        *,
        dropout: float = 0.0,
        groups: int = 32,
    ):
        super().__init__()
        self.norm1 = GroupNormSiLU(groups, in_channels, eps=GROUPNORM_EPS)
        self.conv1 = Conv3x3(in_channels, out_channels)
        self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = GroupNormSiLU(groups, out_channels, eps=GROUPNORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(Conv3x3(out_channels, out_channels))
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x [N, C_in, H, W], emb [N, E] (after its SiLU) -> [N, C_out, H, W]."""
        h = self.conv1(self.norm1(x))
        h = self.conv2(self.norm2(h, shift=self.emb_proj(emb), dropout=self.dropout))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, [N, C, H, W] -> [N, C, H, W].

        tokens = GN(x) as [N, H*W, C];  q, k, v = tokens W_qkv + b  (per head, d = C / num_heads)
        out = x + (softmax(q k^T / sqrt(d)) v) W_o + b_o          (W_o, b_o zero-initialised)

    The attention itself is ``F.scaled_dot_product_attention``.  With ``num_heads=1`` this is the
    DDPM block (its q, k, v, proj_out "NIN" layers are these dense maps over channels).
    """

    def __init__(self, channels: int, *, num_heads: int = 1, groups: int = 32):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels, eps=GROUPNORM_EPS)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C, H, W]: x plus the attention output."""
        n, c, h, w = x.shape
        heads = self.num_heads
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [N, H*W, C]
        # q, k, v: [N, heads, H*W, d] each, views of the [N, H*W, 3C] projection
        q, k, v = (
            t.unflatten(-1, (heads, c // heads)).transpose(1, 2)
            for t in self.qkv(tokens).chunk(3, dim=-1)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # [N, heads, H*W, d]
        out = self.proj(out.transpose(1, 2).reshape(n, h * w, c))
        # back to [N, C, H, W], added to the input
        return x + out.transpose(1, 2).view(n, c, h, w)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution, [N, C, H, W] -> [N, C, H/2, W/2] (H, W even).

    ``padding=1`` pads one pixel on every side; ``padding=0`` pads only the bottom row and right
    column, as TensorFlow's "SAME" does for this stride (the official DDPM code, and diffusers'
    ``downsample_padding=0`` of the google/ddpm-* checkpoints)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C, H/2, W/2]."""
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution, [N, C, H, W] -> [N, C, 2H, 2W].

    On the CPU fast path, where :func:`ddkit.cpu.subpixel_pays`, it runs as
    :func:`ddkit.cpu.upsample_conv` (four 2x2 convolutions on the low-resolution grid: the same
    function up to rounding, 16 instead of 36 multiply-adds per input pixel and output channel).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C, 2H, 2W]."""
        if cpu.fast_path("subpixel", x, self.conv.weight) and cpu.subpixel_pays(x):
            return cpu.upsample_conv(x, self.conv.weight, self.conv.bias)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
