"""Classifier-free guidance (Ho & Salimans 2022) as one wrapper of a class-conditional network.

A class-conditional network ``model(x_t, t, y)`` trained with label dropout is both p(x | c)
(label c) and p(x) (the null label).  Guidance with scale w >= 0 mixes its two outputs,

    out = out_c + w (out_c - out_u),            (Ho & Salimans eq. 6; w = 0: the conditional model)

which for eps is the score of the tilted density p_t(x | c)^(1 + w) p_t(x)^(-w).  The mix has
weights summing to one, so mixing the raw outputs is the same as mixing eps, x0 or v: every
prediction type's (eps, x0) is the same affine map of the output at a given (x_t, t).  A
learned-variance output keeps the conditional branch's variance (only the first C channels, the
prediction, are mixed).  diffusers and most image toolkits write ``guidance_scale`` s for
out_u + s (out_c - out_u): s = 1 + w.

The guidance interval (Kynkäänniemi et al. 2024) applies w only while the noise level
sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) lies in (low, high]; elsewhere the conditional
branch alone runs.  Both branches run as one batched model call.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .schedule import NoiseSchedule

LabelledModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def check_guidance(scale, interval) -> tuple[float, tuple[float, float] | None]:
    """(scale, interval) as floats; ValueError unless scale is a finite number >= 0 and interval
    None or (low, high) with 0 <= low < high (high may be inf)."""
    ok = isinstance(scale, (int, float)) and not isinstance(scale, bool)
    if not ok or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance scale {scale!r} must be a finite number >= 0")
    if interval is None:
        return float(scale), None
    try:
        low, high = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(
            f"guidance interval {interval!r} must be two numbers (low, high)"
        ) from None
    if not 0.0 <= low < high:
        raise ValueError(
            f"guidance interval {interval!r} must have 0 <= low < high (noise levels sigma)"
        )
    return float(scale), (low, high)


def noise_level(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) [N] float64 at integer timesteps t [N]."""
    ab = torch.from_numpy(np.asarray(schedule.alphas_cumprod, dtype=np.float64)[t.cpu().numpy()])
    return ((1.0 - ab) / ab).sqrt()


def guided(
    model: LabelledModel,
    labels: torch.Tensor,
    null: int,
    *,
    scale: float = 0.0,
    interval: tuple[float, float] | None = None,
    schedule: NoiseSchedule | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x_t, t) -> output`` of ``model(x_t, t, labels)`` guided with ``scale`` w: rows whose
    noise level lies in ``interval`` (all rows when None; needs ``schedule``) get
    out_c + w (out_c - out_u), with out_u the output at the ``null`` label.  w = 0 (or no row in
    the interval) is one conditional call; otherwise the two branches are one call on 2N rows."""
    scale, interval = check_guidance(scale, interval)
    if interval is not None and schedule is None:
        raise ValueError("a guidance interval needs the schedule to know each step's noise level")

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if labels.shape != (x.shape[0],):
            raise ValueError(
                f"labels must be [{x.shape[0]}] (one per row), got {tuple(labels.shape)}"
            )
        y = labels.to(x.device)
        if scale == 0.0:
            return model(x, t, y)
        w = torch.full((x.shape[0],), scale, dtype=torch.float64)
        if interval is not None:  # the noise levels come from the (host) schedule table
            sigma = noise_level(schedule, t)
            w = w * ((sigma > interval[0]) & (sigma <= interval[1]))
            if not bool(w.any()):
                return model(x, t, y)
        w = w.to(device=x.device, dtype=x.dtype)
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null)]))
        cond, uncond = both.chunk(2)
        c = x.shape[1]  # a learned-variance output keeps the conditional variance channels
        w = w.reshape(-1, *[1] * (x.ndim - 1))
        out = cond.clone()
        out[:, :c] += w * (cond[:, :c] - uncond[:, :c])
        return out

    return fn
