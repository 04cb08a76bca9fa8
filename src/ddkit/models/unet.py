"""The DDPM U-Net (Ho et al. 2020, the official TF code's ``diffusion_utils/models/unet.py``).

    conv_in -> per resolution: num_res_blocks x [ResBlock (+ attention)], then Downsample (not at
    the last) -> middle: ResBlock, attention, ResBlock -> per resolution, reversed:
    (num_res_blocks + 1) x [concat skip, ResBlock (+ attention)], then Upsample (not at the first)
    -> GroupNorm, SiLU, conv_out.

The time embedding is sinusoidal(t, base_channels) -> Linear(4 base) -> SiLU -> Linear(4 base).
A class-conditional U-Net (``num_classes > 0``) adds a learned embedding of the label to it
(improved-diffusion's ``label_emb``, diffusers' ``class_embedding``); label ``num_classes`` is the
null label of the unconditional branch that classifier-free guidance needs.
With the ``ddpm-cifar10`` preset this is the paper's CIFAR-10 model: 35,746,307 parameters.

Two deliberate, documented differences from the TF code, neither changing the parameter count:
Downsample pads one pixel on every side by default (TF's "SAME" pads only bottom/right:
``downsample_padding=0``, as the google/ddpm-* checkpoints in diffusers do), and weights use
PyTorch's default initialisation except for the zero-initialised last conv of each residual branch,
the attention output and conv_out (as in the TF code).

The module is plain PyTorch; on CPU in fp32 its GroupNorm + SiLU pairs and upsampling convs take
the faster routes of :mod:`ddkit.cpu` (see ``layers.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .base import check_class_fields
from .layers import (
    GROUPNORM_EPS,
    AttentionBlock,
    Downsample,
    GroupNormSiLU,
    ResBlock,
    Upsample,
    class_labels,
    time_label_embedding,
    timestep_embedding,
    zero_,
)


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
    downsample_padding: 1 pads every side of a Downsample's input by one pixel; 0 only its bottom
        and right (TensorFlow's "SAME", the official code and diffusers' google/ddpm-*).
    num_classes: class-conditional on that many classes (0: unconditional).
    p_uncond: the probability that training replaces a label by the null label (classifier-free
        guidance, Ho & Salimans 2022); not part of the architecture.
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
    downsample_padding: int = 1
    num_classes: int = 0
    p_uncond: float = 0.1

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
        if not _is_int(self.downsample_padding) or self.downsample_padding not in (0, 1):
            raise ValueError(f"downsample_padding must be 0 or 1, got {self.downsample_padding!r}")
        if not isinstance(self.learn_sigma, bool):
            raise ValueError(f"learn_sigma must be a bool, got {self.learn_sigma!r}")
        check_class_fields(self.num_classes, self.p_uncond)
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
        """C_out: C, or 2C with ``learn_sigma`` (eps and the variance interpolation v)."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        return (self.in_channels, self.image_size, self.image_size)

    def replace(self, **changes) -> UNetConfig:
        """A copy with the fields in ``changes`` replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    def build(self) -> UNet:
        """A freshly initialised :class:`UNet` of this architecture."""
        return UNet(self)


class UNet(nn.Module):
    """The DDPM U-Net: ``model(x [N, C, H, W] float, t [N] long) -> [N, C_out, H, W]``, and
    ``model(x, t, y)`` with class labels y [N] long for a class-conditional config.

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
        # class-conditional: one row per class and the null label
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        # down path: a flat list of stages; each stage's output is kept as a skip
        self.down = nn.ModuleList()
        skip_widths = [ch]
        width = ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                stage = nn.ModuleList([res(width, ch * mult)])
                width = ch * mult
                if resolutions[level] in cfg.attention_resolutions:
                    stage.append(attn(width))
                self.down.append(stage)
                skip_widths.append(width)
            if level != len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(width, cfg.downsample_padding)]))
                skip_widths.append(width)

        self.middle = nn.ModuleList([res(width, width), attn(width), res(width, width)])

        # up path: each stage concatenates one skip, then ResBlock (+ attention) (+ Upsample)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                stage = nn.ModuleList([res(width + skip_widths.pop(), ch * mult)])
                width = ch * mult
                if resolutions[level] in cfg.attention_resolutions:
                    stage.append(attn(width))
                if level != 0 and i == cfg.num_res_blocks:
                    stage.append(Upsample(width))
                self.up.append(stage)
        assert not skip_widths

        self.norm_out = GroupNormSiLU(cfg.groups, width, eps=GROUPNORM_EPS)
        self.conv_out = zero_(nn.Conv2d(width, cfg.out_channels, 3, padding=1))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [N, C, H, W] float, t [N] long, y [N] long class labels (class-conditional configs;
        None: the null label) -> [N, C_out, H, W]; ValueError for shapes that do not match the
        config."""
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
        y = class_labels(y, x.shape[0], cfg.num_classes, x.device)
        sinusoid = timestep_embedding(t, cfg.base_channels).to(x.dtype)
        emb = time_label_embedding(self.time_embed, self.label_emb, sinusoid, y)
        h = self.conv_in(x)
        skips = [h]
        for stage in self.down:
            h = _run(stage, h, emb)
            skips.append(h)
        h = _run(self.middle, h, emb)
        for stage in self.up:
            h = _run(stage, torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(self.norm_out(h))


def _run(stage: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """The blocks of one stage in order; residual blocks also take the time embedding."""
    for block in stage:
        h = block(h, emb) if isinstance(block, ResBlock) else block(h)
    return h
