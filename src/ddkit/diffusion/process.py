"""The forward process q and its posterior, as pure functions of a :class:`NoiseSchedule`.

Shapes: ``x0``, ``x_t``, ``noise`` are [N x ...]; ``t`` is a [N] integer tensor of indices.
"""

from __future__ import annotations

import torch

from .schedule import NoiseSchedule


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ValueError(f"{names} dtypes differ: {a.dtype} vs {b.dtype}")


def _check_t(t: torch.Tensor, x: torch.Tensor, schedule: NoiseSchedule) -> None:
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape [{x.shape[0]}], got {tuple(t.shape)}")
    if t.is_floating_point():
        raise ValueError(f"t must hold integer indices, got dtype {t.dtype}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= schedule.T):
        raise ValueError(f"t holds indices outside 0..{schedule.T - 1}")


def q_mean_var(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor):
    """Mean and variance of q(x_t | x_0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I), DDPM eq. 4.
    The variance is returned shaped [N, 1, ..., 1]."""
    _check_t(t, x0, schedule)
    mean = schedule.coef("sqrt_alphas_cumprod", t, x0) * x0
    var = 1.0 - schedule.coef("alphas_cumprod", t, x0)
    return mean, var


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
    """Draw x_t ~ q(x_t | x_0) with the given standard-normal ``noise`` (DDPM eq. 4)."""
    _check_pair(x0, noise, "x0 and noise")
    _check_t(t, x0, schedule)
    a = schedule.coef("sqrt_alphas_cumprod", t, x0)
    s = schedule.coef("sqrt_one_minus_alphas_cumprod", t, x0)
    return a * x0 + s * noise


def q_posterior(schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7).

    mean = coef1 * x0 + coef2 * x_t, variance = beta-tilde_t (0 at t = 0, whose log is clipped
    to that of t = 1).  Variances are shaped [N, 1, ..., 1].
    """
    _check_pair(x0, x_t, "x0 and x_t")
    _check_t(t, x0, schedule)
    mean = (
        schedule.coef("posterior_mean_coef1", t, x0) * x0
        + schedule.coef("posterior_mean_coef2", t, x0) * x_t
    )
    var = schedule.coef("posterior_variance", t, x0)
    log_var = schedule.coef("posterior_log_variance_clipped", t, x0)
    return mean, var, log_var
