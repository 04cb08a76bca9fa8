"""Data augmentation applied by the training loop to batches (the data sets themselves never
augment, so ``get_batch`` is a pure function of the indices)."""

from __future__ import annotations

import torch

from .base import DataError

__all__ = ["random_hflip"]


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each example of x [B, C, H, W] left-right with probability 1/2.

    Example b is flipped iff u_b < 0.5, where u = torch.rand(B, generator=generator) is drawn on
    the generator's device: one draw of B numbers per call, so the result is a function of the
    generator state alone.  Returns a new tensor; x is unchanged.
    """
    if x.ndim != 4:
        raise DataError(f"random_hflip expects images [B, C, H, W], got shape {tuple(x.shape)}")
    u = torch.rand(x.shape[0], generator=generator, device=generator.device)
    flip = (u < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)
