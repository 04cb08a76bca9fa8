"""Helpers shared by the samplers: validation and the (t, t_prev) walk."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..schedule import DATA

Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
"""callback(i, t, x_t, x0_hat): called after the denoiser is evaluated at step i (timestep t)."""


def check_inputs(denoiser, x: torch.Tensor, timesteps: Sequence[int]) -> list[int]:
    """Validate a sampler's inputs; return the timesteps as a list of ints."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if x.ndim < 2:
        raise ValueError(f"x must be batched [N x ...], got shape {tuple(x.shape)}")
    ts = list(timesteps)
    bad = [t for t in ts if isinstance(t, bool) or int(t) != t]
    if bad:
        raise ValueError(f"timesteps must be integer indices, got {bad[:3]!r}")
    ts = [int(t) for t in ts]
    T = denoiser.schedule.T
    if not ts:
        raise ValueError("timesteps is empty; give at least one index")
    if any(not 0 <= t < T for t in ts):
        raise ValueError(
            f"timesteps must lie in 0..{T - 1}, got {[t for t in ts if not 0 <= t < T][:3]}"
        )
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError("timesteps must be strictly decreasing (use ddkit.schedule.timesteps)")
    return ts


def pairs(ts: list[int]) -> list[tuple[int, int]]:
    """(t, t_prev) for each step; the last step goes to DATA (alpha_bar = 1)."""
    return list(zip(ts, ts[1:] + [DATA]))


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def check_nonneg(name: str, value: float) -> float:
    v = float(value)
    if not v >= 0.0:  # also rejects NaN
        raise ValueError(f"{name}={value!r} must be >= 0")
    return v
