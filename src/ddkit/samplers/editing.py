"""Editing with an unconditional (or class-conditional) denoiser: inpainting and SDEdit.

Inpainting (``sample_inpaint``) generates the unknown entries of x (``mask == 0``) given the known
ones (``mask == 1``, values ``known``).  Each step t -> t_prev is a DDPM ancestral step for the
whole x, after which the known entries are replaced by a fresh draw of q(x_prev | x0 = known),
sqrt(ab_prev) known + sqrt(1 - ab_prev) z (plain replacement; exactly ``known`` at the end).
Replacement alone is biased: the unknown part at t_prev never sees the noise that the known part
will get, so it only agrees with the known part through the denoiser's current guess.  RePaint
(Lugmayr et al. 2022) resamples: after ``jump_length`` steps down it noises x back up by the same
steps with the forward process, q(x_t | x_prev) = N(sqrt(ab_t / ab_prev) x_prev,
(1 - ab_t / ab_prev) I), and walks down again, ``resample`` times per block in all, which lets
the two parts harmonise.  Blocks of ``jump_length`` steps are counted from the top of the
timestep list; ``resample = 1`` is plain replacement.  Cost: ``resample`` x steps model calls.

SDEdit (Meng et al. 2022) noises a given image to a level set by ``strength`` in (0, 1] and
denoises it with any sampler (:func:`sdedit_timesteps`, :func:`noise_to`).  With an exact
denoiser and a sampler that samples p(x0 | x_t) exactly, an input drawn from the data gives an
output drawn from the data, whatever the strength.
"""

from __future__ import annotations

import math

import torch

from ..diffusion.schedule import DATA
from ._common import Callback, NoiseGenerator, check_inputs, estimate, randn_like
from .ddpm import ddpm_coefficients


def check_mask(x: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mask as x's dtype, broadcast to x's shape; ValueError unless ``known`` has x's shape
    and ``mask`` broadcasts to it with values 0 or 1 only."""
    if not torch.is_tensor(known) or tuple(known.shape) != tuple(x.shape):
        shape = tuple(known.shape) if torch.is_tensor(known) else type(known).__name__
        raise ValueError(f"known must have x's shape {tuple(x.shape)}, got {shape}")
    if not torch.is_tensor(mask):
        raise ValueError(f"mask must be a tensor, got {type(mask).__name__}")
    try:
        m = torch.broadcast_to(mask, x.shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to x's {tuple(x.shape)}"
        ) from None
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask values must be 0 (generate) or 1 (keep)")
    return m.to(device=x.device, dtype=x.dtype)


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")
    return value


def repaint_walk(n: int, jump_length: int, resample: int) -> list[tuple[int, int]]:
    """RePaint's walk over positions 0..n of a timestep list (n: the data) as moves
    (from, to): to = from + 1 is a denoising step, to = from - 1 a forward noising step.  Each
    block of ``jump_length`` steps is walked down ``resample`` times, noised back up in between."""
    moves: list[tuple[int, int]] = []
    for start in range(0, n, jump_length):
        end = min(start + jump_length, n)
        for r in range(resample):
            moves += [(p, p + 1) for p in range(start, end)]
            if r < resample - 1:
                moves += [(p, p - 1) for p in range(end, start, -1)]
    return moves


def sample_inpaint(
    denoiser,
    x_T: torch.Tensor,
    timesteps,
    *,
    known: torch.Tensor,
    mask: torch.Tensor,
    jump_length: int = 10,
    resample: int = 1,
    variance: str = "fixed_small",
    generator: NoiseGenerator = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Inpainting from x_T along ``timesteps``: entries with ``mask == 1`` take ``known``'s
    values, the others are generated (replacement, and RePaint's resampling when ``resample`` >
    1; see the module docstring).  ``variance``: the ancestral step's, as in DDPM."""
    ts = check_inputs(denoiser, x_T, timesteps)
    m = check_mask(x_T, known, mask)
    _check_count("jump_length", jump_length)
    _check_count("resample", resample)
    if variance not in ("fixed_small", "fixed_large"):
        raise ValueError(f"variance {variance!r} is not allowed; allowed: fixed_small, fixed_large")
    ab = denoiser.schedule.alpha_bar
    grid = ts + [DATA]
    known = known.to(device=x_T.device, dtype=x_T.dtype)
    free = 1.0 - m

    def replace(x: torch.Tensor, t: int) -> torch.Tensor:
        """x with its known entries replaced by a draw of q(x_t | known)."""
        if t == DATA:
            return x * free + known * m
        noised = randn_like(x, generator, std=math.sqrt(1.0 - ab(t))).add_(
            known, alpha=ab(t) ** 0.5
        )
        return x * free + noised * m

    x = replace(x_T, grid[0])
    calls = 0
    for p, q in repaint_walk(len(ts), jump_length, resample):
        if q == p - 1:  # forward: q(x_t | x_prev), t = grid[q] above t_prev = grid[p]
            ratio = ab(grid[q]) / ab(grid[p])
            x = randn_like(x, generator, std=math.sqrt(1.0 - ratio)).add_(x, alpha=ratio**0.5)
            continue
        t, t_prev = grid[p], grid[q]
        c_x0, c_xt, sigma = ddpm_coefficients(ab(t), ab(t_prev), variance)
        if t_prev == DATA:
            sigma = 0.0  # no noise at the last step (DDPM Algorithm 2)
        est = estimate(denoiser, x, t)
        if callback is not None:
            callback(calls, t, x, est.x0)
        calls += 1
        noise = randn_like(x, generator, std=sigma) if sigma > 0 else None
        x = replace(est.combine(x_t=c_xt, x0=c_x0, add_to=noise), t_prev)
    return x


def inpaint_calls(steps: int, resample: int) -> int:
    """Model calls of :func:`sample_inpaint` on ``steps`` timesteps."""
    return steps * resample


def sdedit_timesteps(ts: list[int], T: int, strength: float) -> list[int]:
    """The timesteps of ``ts`` (decreasing, on a schedule of T) at or below the start index
    ceil(strength T) - 1: SDEdit's walk from an input noised to that level.  ``strength`` in
    (0, 1]; 1 starts from (almost) pure noise."""
    ok = isinstance(strength, (int, float)) and not isinstance(strength, bool)
    if not ok or not 0.0 < strength <= 1.0:
        raise ValueError(f"strength={strength!r} must lie in (0, 1]")
    start = max(math.ceil(strength * T) - 1, 0)
    kept = [t for t in ts if t <= start]
    return kept or [start]


def noise_to(schedule, x0: torch.Tensor, t: int, generator: NoiseGenerator = None):
    """A draw of q(x_t | x0) = N(sqrt(ab_t) x0, (1 - ab_t) I) at integer timestep t."""
    ab = schedule.alpha_bar(t)
    return randn_like(x0, generator, std=math.sqrt(1.0 - ab)).add_(x0, alpha=math.sqrt(ab))
