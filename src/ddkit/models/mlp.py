"""A time-conditioned residual MLP for low-dimensional data (2-D toys: spiral, swiss roll, ...).

    h = Linear(x)                                         [N, hidden]
    e = SiLU(Linear(SiLU(Linear(sinusoidal(t)))))         [N, hidden]
        (+ Embedding(y), class-conditional: y in 0..num_classes, num_classes = the null label)
    depth x:  h = h + Linear(dropout(SiLU(Linear(LN(h)) + Linear(e))))   (last Linear zero-init)
    out = Linear(SiLU(LN(h)))                             [N, D] or [N, 2D]

The time embedding enters every block (as the U-Net's ResBlocks do), which is what lets a small
network change its output sharply with t; the residual form keeps deep stacks easy to train.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import check_class_fields
from .layers import class_labels, time_label_embedding, timestep_embedding, zero_


@dataclass(frozen=True)
class MLPConfig:
    """Architecture of :class:`MLP`; ``build()`` makes the module.

    dim: D of the data; hidden: block width; depth: residual blocks; time_dim: width of the
    sinusoidal embedding (>= 4); dropout: inside each block; learn_sigma: output [eps, v] (2D);
    num_classes: class-conditional on that many classes (0: unconditional); p_uncond: the
    probability that training replaces a label by the null label (classifier-free guidance).
    """

    dim: int = 2
    hidden: int = 256
    depth: int = 4
    time_dim: int = 128
    dropout: float = 0.0
    learn_sigma: bool = False
    num_classes: int = 0
    p_uncond: float = 0.1

    def __post_init__(self):
        for name, low in (("dim", 1), ("hidden", 1), ("depth", 1), ("time_dim", 4)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.learn_sigma, bool):
            raise ValueError(f"learn_sigma must be a bool, got {self.learn_sigma!r}")
        check_class_fields(self.num_classes, self.p_uncond)

    @property
    def out_dim(self) -> int:
        """Output width: D, or 2D with ``learn_sigma`` (eps and the variance interpolation v)."""
        return 2 * self.dim if self.learn_sigma else self.dim

    def input_shape(self) -> tuple[int]:
        """(D,) of one input vector."""
        return (self.dim,)

    def replace(self, **changes) -> MLPConfig:
        """A copy with the fields in ``changes`` replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    def build(self) -> MLP:
        """A freshly initialised :class:`MLP` of this architecture."""
        return MLP(self)


class _Block(nn.Module):
    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = zero_(nn.Linear(hidden, hidden))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        u = F.silu(self.fc1(self.norm(h)) + self.emb_proj(emb))
        return h + self.fc2(self.dropout(u))


class MLP(nn.Module):
    """``model(x [N, D] float, t [N] long, y [N] long | None) -> [N, D]`` (or [N, 2D] with
    ``learn_sigma``); ``y`` only for a class-conditional config (None: the null label)."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        cfg = config
        self.in_proj = nn.Linear(cfg.dim, cfg.hidden)
        self.time_embed = nn.Sequential(
            nn.Linear(cfg.time_dim, cfg.hidden),
            nn.SiLU(),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.SiLU(),
        )
        # class-conditional: one row per class and the null label
        self.label_emb = nn.Embedding(cfg.num_classes + 1, cfg.hidden) if cfg.num_classes else None
        self.blocks = nn.ModuleList(_Block(cfg.hidden, cfg.dropout) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.out_dim)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [N, D] float, t [N] long, y [N] long class labels (class-conditional configs; None:
        the null label) -> [N, D] (or [N, 2D] with ``learn_sigma``); ValueError for other
        shapes."""
        cfg = self.config
        if x.ndim != 2 or x.shape[1] != cfg.dim:
            raise ValueError(
                f"input shape {tuple(x.shape)} does not match the config: [N, {cfg.dim}]"
            )
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(
                f"timesteps must have shape [{x.shape[0]}] (one per row), got {tuple(t.shape)}"
            )
        y = class_labels(y, x.shape[0], cfg.num_classes, x.device)
        sinusoid = timestep_embedding(t, cfg.time_dim).to(x.dtype)
        emb = time_label_embedding(self.time_embed, self.label_emb, sinusoid, y)
        h = self.in_proj(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.norm_out(h)))
