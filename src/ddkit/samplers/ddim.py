"""DDIM (Song et al. 2021): generalized non-Markovian sampling, inversion and interpolation.

Step t -> t_prev (DDIM eq. 12, with DDIM's alpha written as DDPM's alpha_bar):
  x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z,
  sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev)        (eq. 16)
eta = 0 is deterministic (the probability-flow ODE's first-order solver); eta = 1 on the full
schedule is DDPM with beta-tilde.  DDIM's sigma-hat row is DDPM's larger variance on the
sub-sequence: :func:`ddkit.samplers.ddpm.sample_ddpm` with ``variance="fixed_large"``.
"""

from __future__ import annotations

import math

import torch

from ..diffusion.schedule import DATA
from ._common import (
    Callback,
    NoiseGenerator,
    check_inputs,
    check_nonneg,
    estimate,
    pairs,
    randn_like,
)


def ddim_coefficients(ab_t: float, ab_prev: float, eta: float) -> tuple[float, float, float]:
    """(coef_x0, coef_eps, sigma) of one DDIM step, in float64."""
    sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev))
    c_eps = math.sqrt(max(1.0 - ab_prev - sigma * sigma, 0.0))
    return math.sqrt(ab_prev), c_eps, sigma


def sample_ddim(
    denoiser,
    x_T: torch.Tensor,
    timesteps,
    *,
    generator: NoiseGenerator = None,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM sampling x_T -> x_0 along ``timesteps`` (decreasing); one model call per step."""
    ts = check_inputs(denoiser, x_T, timesteps)
    eta = check_nonneg("eta", eta)
    ab = denoiser.schedule.alpha_bar
    x = x_T
    for i, (t, t_prev) in enumerate(pairs(ts)):
        c_x0, c_eps, sigma = ddim_coefficients(ab(t), ab(t_prev), eta)
        est = estimate(denoiser, x, t)
        if callback is not None:
            callback(i, t, x, est.x0)
        noise = randn_like(x, generator, std=sigma) if sigma > 0 else None
        x = est.combine(x0=c_x0, eps=c_eps, add_to=noise)  # eq. 12
    return x


def ddim_invert(
    denoiser,
    x_0: torch.Tensor,
    timesteps,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Deterministic DDIM encoding x_0 -> x_T (eta = 0 run backwards), on the same decreasing
    ``timesteps`` that :func:`sample_ddim` would use to decode.

    Each step s -> t (s below t) evaluates the denoiser at (x_s, s) and moves along the same
    first-order ODE step: x_t = sqrt(ab_t) x0_hat + sqrt(1 - ab_t) eps_hat.  The first step starts
    from the data, where the denoiser is undefined; it is evaluated at the first timestep instead.
    The round-trip error is that of two first-order solvers and shrinks as steps grow.
    """
    ts = check_inputs(denoiser, x_0, timesteps)
    ab = denoiser.schedule.alpha_bar
    up = ts[::-1]
    x = x_0
    for i, (s, t) in enumerate(zip([DATA] + up[:-1], up)):
        eps, x0 = denoiser(x, max(s, up[0]))
        if callback is not None:
            callback(i, t, x, x0)
        x = torch.add(x0 * math.sqrt(ab(t)), eps, alpha=math.sqrt(1.0 - ab(t)))
    return x


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation between latents (DDIM sec. 5.3), per example.

    z = sin((1 - alpha) theta) / sin(theta) z0 + sin(alpha theta) / sin(theta) z1, with theta the
    angle between z0 and z1 (flattened per example); falls back to linear interpolation when the
    two are (anti)parallel to within float precision."""
    if z0.shape != z1.shape:
        raise ValueError(f"latent shapes differ: {tuple(z0.shape)} vs {tuple(z1.shape)}")
    a = torch.as_tensor(alpha, dtype=z0.dtype, device=z0.device).reshape(-1, *[1] * (z0.ndim - 1))
    f0, f1 = z0.flatten(1), z1.flatten(1)
    cos = (f0 * f1).sum(1) / (f0.norm(dim=1) * f1.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1.0, 1.0)).reshape(-1, *[1] * (z0.ndim - 1))
    sin = torch.sin(theta)
    safe = sin.abs() > 1e-6
    w0 = torch.where(safe, torch.sin((1 - a) * theta) / torch.where(safe, sin, 1.0), 1 - a)
    w1 = torch.where(safe, torch.sin(a * theta) / torch.where(safe, sin, 1.0), a)
    return w0 * z0 + w1 * z1
