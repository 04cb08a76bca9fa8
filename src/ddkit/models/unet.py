"""The DDPM U-Net (Ho et al. 2020, the official TF code's ``diffusion_utils/models/unet.py``).

    conv_in -> per resolution: num_res_blocks x [ResBlock (+ attention)], then Downsample (not at
    the last) -> middle: ResBlock, attention, ResBlock -> per resolution, reversed:
    (num_res_blocks + 1) x [concat skip, ResBlock (+ attention)], then Upsample (not at the first)
    -> GroupNorm, SiLU, conv_out.

The time embedding is sinusoidal(t, base_channels) -> Linear(4 base) -> SiLU -> Linear(4 base).
With the ``ddpm-cifar10`` preset this is the paper's CIFAR-10 model: 35,746,307 parameters.

Two deliberate, documented differences from the TF code, neither changing the parameter count:
Downsample pads one pixel on every side (TF's "SAME" pads only bottom/right), and weights use
PyTorch's default initialisation except for the zero-initialised last conv of each residual branch,
the attention output and conv_out (as in the TF code).

Speed on CPU, all of it default behaviour and exact up to rounding (no setting to turn on): on AVX2
CPUs (where it was measured to pay), 3x3 convolutions with many channels and enough tiles run as
Winograd F(2x2, 3x3) (``winograd.py``); the upsampling convs from 7x7 and 32 channels up run as
four 2x2 convolutions on the low-resolution grid (``layers.upsample_conv``); dropout draws two
15-bit mask fields per random number (``layers.keep_mask``: p rounded to a multiple of 2**-15,
unbiased); the time embedding's SiLU is computed once per forward, and attention is one fused q/k/v
projection plus ``scaled_dot_product_attention``.  In fp32 on CPU every GroupNorm + SiLU of the
residual blocks and the output (with the time-embedding add before it and the dropout after it)
is one C kernel compiled on first use (``cpu_kernels.py``, ``gn_silu.c``: two passes over the
activations each way instead of about ten; PyTorch ops where it does not apply).  A residual
block's first kernel call also takes the skip concatenation's two inputs and hands back its input
for the block's skip path, so its backward adds that path's gradient itself and returns dense
gradients for both inputs (no autograd add, no slice copies).  In fp32 on
AVX-512 CPUs, levels with at most 128 channels run in channels_last memory order
(:meth:`UNetConfig.channels_last_levels`), where the whole training step is faster; elsewhere
everything stays NCHW.  Activations change layout once, where they are made, and gradients reach
every convolution dense in its own layout (``_DenseGrad``), so no convolution copies its input or
its gradient.  Input may be in either memory format; the output is a contiguous
[N, C_out, H, W] tensor.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch._C._functorch import is_functorch_wrapped_tensor
from torch.autograd import forward_ad

from .layers import (
    GROUPNORM_EPS,
    AttentionBlock,
    Downsample,
    GroupNormSiLU,
    ResBlock,
    Upsample,
    has_hooks,
    memory_format_of,
    timestep_embedding,
    zero_,
)


@functools.cache
def cpu_favours_channels_last() -> bool:
    """Whether this CPU is one where oneDNN's fp32 convolutions were measured to train faster in
    channels_last at few channels and many pixels: torch's CPU capability "AVX512".  On an Intel
    Xeon with AVX-512 (2026-11-30, ``benchmarks/conv_paths.py``) a 3x3 conv's forward + backward at
    32x32 with 128 channels took 35 ms instead of 43, at 28x28 with 32 channels 16 ms instead of
    24, while at 256 channels or 8x8 and below channels_last was slower; on an AMD Zen 5 it was
    0-24% faster per conv (a whole-model NHWC there was level end to end).  On the AVX2 CPU
    measured, NCHW was faster.
    ``DDKIT_CHANNELS_LAST=0`` / ``1`` overrides the check."""
    env = os.environ.get("DDKIT_CHANNELS_LAST")
    if env in ("0", "1"):
        return env == "1"
    return torch.backends.cpu.get_cpu_capability() == "AVX512"


# Levels at most this wide run in channels_last (where cpu_favours_channels_last).  Measured on
# whole training steps (A/Bs as in benchmarks/step_variants.py, Intel Xeon, AVX-512, 2026-11-30):
# ddpm-28 with its 7x7 level (64 channels) in channels_last too trained 0.4-1.5% faster per
# round than with it in NCHW (three 101-round runs, two of them with intervals above 1), ddpm-8
# (8x8 and 4x4, 32 and 64 channels) 6-10% faster than all NCHW, although a lone 3x3 convolution
# at 8x8 or below is faster in NCHW: the fused GroupNorm kernel, attention's token view and the
# absent layout changes outweigh it.  ddpm-cifar10 with its 256-channel levels in channels_last
# too trained 0.93x as fast by the ratio of medians (31 rounds, interval 0.88-1.00; per round
# 0.975, 0.92-1.00).
CHANNELS_LAST_MAX_WIDTH = 128


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`; ``build()`` makes the module.

    image_size: H = W of the input (must be divisible by 2 ** (len(channel_mult) - 1)).
    in_channels: C of the input; the output has C channels, or 2C with ``learn_sigma``.
    base_channels, channel_mult: level i has base_channels * channel_mult[i] channels and
        resolution image_size / 2**i.
    num_res_blocks: ResBlocks per level on the way down (num_res_blocks + 1 on the way up).
    attention_resolutions: resolutions (e.g. 16 for 16x16) with self-attention after each ResBlock.
    dropout: in every ResBlock, before its second conv.
    num_heads: attention heads (every attention width must be divisible by it).
    learn_sigma: output [eps, v] with v the log-variance interpolation of improved DDPM.
    groups: GroupNorm groups (every channel width must be divisible by it).
    """

    image_size: int
    in_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_heads: int = 1
    learn_sigma: bool = False
    groups: int = 32

    def __post_init__(self):
        # lists (e.g. from JSON) become tuples, so configs stay hashable and compare equal
        for name in ("channel_mult", "attention_resolutions"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)):
                raise ValueError(f"{name} must be a tuple of ints, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("image_size", "in_channels", "base_channels", "num_heads", "groups"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not _is_int(self.num_res_blocks) or self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be an int >= 1, got {self.num_res_blocks!r}")
        if not self.channel_mult or not all(_is_int(m) and m >= 1 for m in self.channel_mult):
            raise ValueError(
                f"channel_mult must be a non-empty tuple of ints >= 1, got {self.channel_mult!r}"
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.learn_sigma, bool):
            raise ValueError(f"learn_sigma must be a bool, got {self.learn_sigma!r}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by {factor} "
                f"(2 ** (len(channel_mult) - 1) for channel_mult {self.channel_mult})"
            )
        for m in self.channel_mult:
            width = self.base_channels * m
            if width % self.groups:
                raise ValueError(
                    f"channel width {width} (base_channels {self.base_channels} x mult {m}) "
                    f"must be divisible by groups {self.groups}"
                )
        reached = self.resolutions()
        for r in self.attention_resolutions:
            if r not in reached:
                raise ValueError(
                    f"attention resolution {r!r} is not reached; the resolutions are {reached}"
                )
        for level, r in enumerate(reached):
            width = self.base_channels * self.channel_mult[level]
            attended = r in self.attention_resolutions or level == len(reached) - 1  # + middle
            if attended and width % self.num_heads:
                raise ValueError(
                    f"attention width {width} at resolution {r} must be divisible by "
                    f"num_heads {self.num_heads}"
                )

    def resolutions(self) -> tuple[int, ...]:
        """The spatial size of each level, e.g. (32, 16, 8, 4)."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mult)))

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        return (self.in_channels, self.image_size, self.image_size)

    def channels_last_levels(self) -> frozenset[int]:
        """Levels (0 = full resolution) that :class:`UNet` runs in channels_last on a CPU that
        :func:`cpu_favours_channels_last` accepts: those with at most ``CHANNELS_LAST_MAX_WIDTH``
        channels (``ddpm-cifar10``: the 32x32 level; ``ddpm-28`` and ``ddpm-8``: all)."""
        return frozenset(
            level
            for level, mult in enumerate(self.channel_mult)
            if self.base_channels * mult <= CHANNELS_LAST_MAX_WIDTH
        )

    def replace(self, **changes) -> UNetConfig:
        return dataclasses.replace(self, **changes)

    def build(self) -> UNet:
        return UNet(self)


class _DenseGrad(torch.autograd.Function):
    """The identity, whose backward passes the gradient on dense in the input's layout.

    Placed before every layout change and concatenation of the U-Net, so that each convolution's
    backward receives its output gradient dense in its own layout.  Otherwise the gradient comes
    strided (a channel slice from a concatenation's backward) or in the other layout (through a
    layout change), and a residual block's output, which feeds two convolutions (``conv2`` and
    the 1x1 ``skip``), would be copied by each."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.memory_format = memory_format_of(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=ctx.memory_format)


class UNet(nn.Module):
    """The DDPM U-Net: ``model(x [N, C, H, W] float, t [N] long) -> [N, C_out, H, W]``.

    C_out = C, or 2C with ``learn_sigma`` (channels [0, C): eps; [C, 2C): the variance
    interpolation v of improved DDPM, Sigma = exp(v log beta + (1 - v) log beta-tilde) with v
    mapped from [-1, 1] to [0, 1] by the loss).
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        cfg = config
        ch = cfg.base_channels
        emb_dim = 4 * ch
        resolutions = cfg.resolutions()

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout=cfg.dropout, groups=cfg.groups)

        def attn(width: int) -> AttentionBlock:
            return AttentionBlock(width, num_heads=cfg.num_heads, groups=cfg.groups)

        self.time_embed = nn.Sequential(
            nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU()
        )
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        # down path: a flat list of stages; each stage's output is kept as a skip
        self.down = nn.ModuleList()
        self._down_levels: list[int] = []  # the level each stage runs at (its input resolution)
        skip_widths = [ch]
        width = ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                stage = nn.ModuleList([res(width, ch * mult)])
                width = ch * mult
                if resolutions[level] in cfg.attention_resolutions:
                    stage.append(attn(width))
                self.down.append(stage)
                self._down_levels.append(level)
                skip_widths.append(width)
            if level != len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(width)]))
                self._down_levels.append(level)
                skip_widths.append(width)

        self.middle = nn.ModuleList([res(width, width), attn(width), res(width, width)])

        # up path: each stage concatenates one skip, then ResBlock (+ attention) (+ Upsample)
        self.up = nn.ModuleList()
        self._up_levels: list[int] = []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                stage = nn.ModuleList([res(width + skip_widths.pop(), ch * mult)])
                width = ch * mult
                if resolutions[level] in cfg.attention_resolutions:
                    stage.append(attn(width))
                if level != 0 and i == cfg.num_res_blocks:
                    stage.append(Upsample(width))
                self.up.append(stage)
                self._up_levels.append(level)
        assert not skip_widths
        self._last_level = len(cfg.channel_mult) - 1
        self._channels_last_levels = cfg.channels_last_levels()

        self.norm_out = GroupNormSiLU(cfg.groups, width, eps=GROUPNORM_EPS)
        self.conv_out = zero_(nn.Conv2d(width, cfg.out_channels, 3, padding=1))

    def _res_blocks(self) -> list[ResBlock]:
        """The ResBlocks in the order forward() runs them (looked up on each call, so a block
        replaced after construction is the one used)."""
        return [
            block
            for stage in (*self.down, self.middle, *self.up)
            for block in stage
            if isinstance(block, ResBlock)
        ]

    def _time_shifts(self, emb: torch.Tensor) -> Iterator[torch.Tensor | None]:
        """Every ResBlock's ``emb_proj(emb)``, in the order forward() runs the blocks, by one
        matrix product against their stacked weights (the same function as each block's own
        Linear; one product and one pass of autograd each way instead of one per block).  Where
        a block's ``emb_proj`` is not a plain ``nn.Linear`` with a bias (a subclass or a
        replacement, e.g. an adapter) or a hook (forward or backward) would see its call, None
        for every block: each block then calls its own ``emb_proj``."""
        blocks = self._res_blocks()
        projections = [block.emb_proj for block in blocks]
        if any(type(p) is not nn.Linear or p.bias is None or has_hooks(p) for p in projections):
            return iter([None] * len(blocks))
        weight = torch.cat([p.weight for p in projections])
        bias = torch.cat([p.bias for p in projections])
        widths = [p.out_features for p in projections]
        return iter(F.linear(emb, weight, bias).split(widths, dim=1))

    @staticmethod
    def _run(
        stage: nn.ModuleList,
        h: torch.Tensor,
        emb: torch.Tensor,
        shifts: Iterator[torch.Tensor | None],
    ) -> torch.Tensor:
        for block in stage:
            h = block(h, emb, next(shifts)) if isinstance(block, ResBlock) else block(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != cfg.input_shape():
            raise ValueError(
                f"input shape {tuple(x.shape)} does not match the config: expected "
                f"[N, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}]"
            )
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(
                f"timesteps must have shape [{x.shape[0]}] (one per image), got {tuple(t.shape)}"
            )
        emb = self.time_embed(timestep_embedding(t, cfg.base_channels).to(x.dtype))
        shifts = self._time_shifts(emb)
        # emb too: under torch.func transforms of the parameters alone (vmap over stacked
        # weights), x is plain but everything computed from the weights is transformed
        eager_cpu = self._eager_cpu_fp32(x) and self._eager_cpu_fp32(emb)
        nhwc = (
            self._channels_last_levels if eager_cpu and cpu_favours_channels_last() else frozenset()
        )

        def fmt(level: int) -> torch.memory_format:
            return torch.channels_last if level in nhwc else torch.contiguous_format

        def dense_grad(h: torch.Tensor) -> torch.Tensor:  # see _DenseGrad
            plain = eager_cpu and h.requires_grad and not is_functorch_wrapped_tensor(h)
            return _DenseGrad.apply(h) if plain else h

        def layout(h: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
            """h in memory_format (h itself when it is so already); a conversion passes its
            gradient back in h's layout, dense."""
            if h.is_contiguous(memory_format=memory_format):
                return h
            return dense_grad(h).contiguous(memory_format=memory_format)

        # Activations take the layout of the level whose resolution they have where they are
        # made: conv_in's output (NCHW from a 1-channel input) before it is kept as a skip, a
        # Downsample's output before it is kept, an Upsample's input before it grows and its
        # output before it is concatenated.  So no concatenation mixes layouts and no skip is
        # converted twice.
        h = layout(self.conv_in(layout(x, fmt(0))), fmt(0))
        skips = [h]
        for stage, level in zip(self.down, self._down_levels):
            h = self._run(stage, layout(h, fmt(level)), emb, shifts)  # the layout is kept
            if isinstance(stage[-1], Downsample):
                h = layout(h, fmt(level + 1))
            skips.append(h)
        h = self._run(self.middle, layout(h, fmt(self._last_level)), emb, shifts)
        for stage, level in zip(self.up, self._up_levels):
            # h is in fmt(level) already (the upsampling keeps its input's layout); a guard
            converted = layout(h, fmt(level))
            if converted is h:  # torch.cat's backward hands back a slice (on the fallback
                converted = dense_grad(h)  # path; the fused norm's gradients are dense already)
            # concatenated with the skip (both in fmt(level) now) by the first block's norm, or
            # first where the block is not a plain ResBlock or hooks would see its input
            h, skip = converted, skips.pop()
            for block in stage:
                if isinstance(block, Upsample):
                    h = layout(h, fmt(level - 1))
                if skip is not None and (type(block) is not ResBlock or has_hooks(block)):
                    h, skip = torch.cat([h, skip], dim=1), None
                if skip is not None:  # a plain, unhooked ResBlock
                    h = block(h, emb, next(shifts), concat=skip)
                elif isinstance(block, ResBlock):  # a subclass keeps its own signature
                    h = block(h, emb, next(shifts))
                else:
                    h = block(h)
                skip = None
        return layout(self.conv_out(self.norm_out(layout(h, fmt(0)))), torch.contiguous_format)

    def _eager_cpu_fp32(self, x: torch.Tensor) -> bool:
        """Whether this forward takes the CPU fp32 speed paths that change memory layouts
        (channels_last levels where :func:`cpu_favours_channels_last`, dense gradients at the
        concatenations): fp32 on CPU, not under CPU autocast (bf16 convolutions trained 0.81x as
        fast in channels_last on ``ddpm-28``), forward-mode AD or torch.func transforms
        (GroupNorm's forward-mode derivative needs NCHW), nor under ``torch.compile`` (Inductor
        chooses layouts itself)."""
        return (
            not torch.compiler.is_compiling()
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not is_functorch_wrapped_tensor(x)
            and forward_ad.unpack_dual(x).tangent is None
        )
