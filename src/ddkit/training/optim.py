"""The optimizer of a run and its learning-rate schedule: a linear warm-up from 0 over
``optim.warmup_steps`` optimizer steps, then constant, or a cosine or linear decay that reaches
``optim.min_lr`` at ``train.max_steps``."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig


def make_optimizer(model: nn.Module, o: OptimConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over ``model``'s parameters with ``o``'s settings; one fused kernel for all
    parameters where torch offers it (CPU and CUDA, torch >= 2.4)."""
    opt_cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    kw = dict(lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    try:
        return opt_cls(model.parameters(), fused=True, **kw)
    except (RuntimeError, TypeError):
        return opt_cls(model.parameters(), **kw)


def lr_at(o: OptimConfig, max_steps: int, step: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) under :class:`OptimConfig` ``o``."""
    w = o.warmup_steps
    if step < w:
        return o.lr * (step + 1) / w
    if o.lr_schedule == "constant":
        return o.lr
    p = min(1.0, (step - w + 1) / (max_steps - w))  # reaches 1 at the last step
    shape = 0.5 * (1.0 + math.cos(math.pi * p)) if o.lr_schedule == "cosine" else 1.0 - p
    return o.min_lr + (o.lr - o.min_lr) * shape


def lr_schedule_meta(o: OptimConfig, max_steps: int, step: int) -> dict:
    """The schedule as a checkpoint records it, with the learning rate of the last step taken
    (``step`` steps done)."""
    return {
        "kind": f"linear_warmup+{o.lr_schedule}",
        "lr": o.lr,
        "min_lr": o.min_lr,
        "warmup_steps": o.warmup_steps,
        "decay_end": max_steps,
        "current_lr": lr_at(o, max_steps, step - 1),
    }
