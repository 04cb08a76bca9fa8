"""Reverse-time VP-SDE samplers: Euler-Maruyama, and predictor-corrector with Langevin dynamics
(Song et al. 2021, Algorithms 2-3 and appendix G)."""

from __future__ import annotations

import math

import torch

from ..diffusion.sde import VPSDE
from ._common import Callback, NoiseGenerator, check_inputs, check_nonneg, pairs, randn_like


def _em_step(rev, x, t, t_prev, z):
    """One Euler-Maruyama step of the reverse SDE from index t to t_prev; returns (x_prev, x0)."""
    d_rho = rev.sde.rho(t_prev) - rev.sde.rho(t)  # < 0
    if not math.isfinite(d_rho):
        raise ValueError(f"Euler-Maruyama needs a finite SNR at timestep {t}; lower t_max")
    drift, x0 = rev.drift(x, t)
    x_new = torch.add(x, drift, alpha=d_rho)
    if z is not None:
        x_new.add_(z, alpha=math.sqrt(-d_rho))
    return x_new, x0


def sample_euler_maruyama(
    denoiser,
    x_T: torch.Tensor,
    timesteps,
    *,
    generator: NoiseGenerator = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Euler-Maruyama on the reverse VP-SDE in rho = -log(alpha_bar); one model call per step.
    As in Song et al.'s samplers the last step adds no noise (it returns the drift-only mean)."""
    ts = check_inputs(denoiser, x_T, timesteps)
    rev = VPSDE(denoiser.schedule).reverse(denoiser)
    x = x_T
    for i, (t, t_prev) in enumerate(pairs(ts)):
        z = randn_like(x, generator) if i < len(ts) - 1 else None
        x_new, x0 = _em_step(rev, x, t, t_prev, z)
        if callback is not None:
            callback(i, t, x, x0)
        x = x_new
    return x


def langevin_correct(rev, x, t, *, snr, generator, n_steps=1):
    """Langevin MCMC at fixed index t with the signal-to-noise step size of Song et al. (Alg. 5):
    eps_step = 2 alpha_t (snr ||z|| / ||score||)^2 with the norms averaged over the batch, as in
    the paper's code (per-example norms make the step explode where a sample's score is ~0);
    x += eps_step score + sqrt(2 eps_step) z."""
    alpha = float(rev.sde.schedule.alphas[t])
    for _ in range(n_steps):
        score = rev.score(x, t)
        z = randn_like(x, generator)
        z_norm = float(z.flatten(1).norm(dim=1).mean())
        g_norm = max(float(score.flatten(1).norm(dim=1).mean()), 1e-20)
        step = 2.0 * alpha * (snr * z_norm / g_norm) ** 2
        x = x + step * score + math.sqrt(2.0 * step) * z
    return x


def sample_pc(
    denoiser,
    x_T: torch.Tensor,
    timesteps,
    *,
    generator: NoiseGenerator = None,
    callback: Callback | None = None,
    snr: float = 0.16,
    corrector_steps: int = 1,
) -> torch.Tensor:
    """Predictor-corrector: at each timestep, ``corrector_steps`` Langevin corrections, then one
    Euler-Maruyama predictor step.  1 + corrector_steps model calls per step."""
    ts = check_inputs(denoiser, x_T, timesteps)
    snr = check_nonneg("snr", snr)
    if (
        isinstance(corrector_steps, bool)
        or not isinstance(corrector_steps, int)
        or corrector_steps < 0
    ):
        raise ValueError(f"corrector_steps={corrector_steps!r} must be an integer >= 0")
    rev = VPSDE(denoiser.schedule).reverse(denoiser)
    x = x_T
    for i, (t, t_prev) in enumerate(pairs(ts)):
        if math.isfinite(rev.sde.rho(t)):
            x = langevin_correct(rev, x, t, snr=snr, generator=generator, n_steps=corrector_steps)
        z = randn_like(x, generator) if i < len(ts) - 1 else None
        x_new, x0 = _em_step(rev, x, t, t_prev, z)
        if callback is not None:
            callback(i, t, x, x0)
        x = x_new
    return x
