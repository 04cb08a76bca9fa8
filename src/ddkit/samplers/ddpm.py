"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on the full schedule or any sub-sequence.

For a step t -> t_prev with alpha_bar_t, alpha_bar_prev (DATA: 1) the effective one-step beta is
beta = 1 - alpha_bar_t / alpha_bar_prev, and x_prev ~ N(mu, sigma^2 I) with the posterior mean
(eq. 7) mu = sqrt(ab_prev) beta / (1 - ab_t) x0_hat + sqrt(1 - beta) (1 - ab_prev) / (1 - ab_t) x_t
and sigma^2 = beta-tilde = beta (1 - ab_prev) / (1 - ab_t) ("fixed_small") or beta ("fixed_large",
which on a sub-sequence is DDIM's sigma-hat).  As in Algorithm 2, no noise is added at the last
step (z = 0 at t = 1).
"""

from __future__ import annotations

import math

import torch

from ._common import Callback, check_inputs, pairs, randn_like

VARIANCES = ("fixed_small", "fixed_large")


def ddpm_coefficients(ab_t: float, ab_prev: float, variance: str) -> tuple[float, float, float]:
    """(coef_x0, coef_xt, sigma) of one ancestral step, in float64."""
    beta = 1.0 - ab_t / ab_prev
    c_x0 = math.sqrt(ab_prev) * beta / (1.0 - ab_t)
    c_xt = math.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t)
    if variance == "fixed_small":
        var = beta * (1.0 - ab_prev) / (1.0 - ab_t)
    elif variance == "fixed_large":
        var = beta
    else:
        raise ValueError(f"unknown variance {variance!r}; allowed: {', '.join(VARIANCES)}")
    return c_x0, c_xt, math.sqrt(var)


def sample_ddpm(
    denoiser,
    x_T: torch.Tensor,
    timesteps,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    variance: str = "fixed_small",
) -> torch.Tensor:
    """Ancestral sampling x_T -> x_0 along ``timesteps`` (decreasing). One model call per step."""
    ts = check_inputs(denoiser, x_T, timesteps)
    ab = denoiser.schedule.alpha_bar
    x = x_T
    for i, (t, t_prev) in enumerate(pairs(ts)):
        c_x0, c_xt, sigma = ddpm_coefficients(ab(t), ab(t_prev), variance)
        _, x0 = denoiser(x, t)
        if callback is not None:
            callback(i, t, x, x0)
        x_new = torch.add(x0 * c_x0, x, alpha=c_xt)
        if i < len(ts) - 1 and sigma > 0:
            x_new.add_(randn_like(x, generator), alpha=sigma)
        x = x_new
    return x
