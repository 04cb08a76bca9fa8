"""Probability-flow ODE solvers.

With x~ = x / sqrt(alpha_bar) and sigma = sqrt((1 - alpha_bar) / alpha_bar) (Karras et al. 2022's
variables), the probability-flow ODE of the VP-SDE is  d x~ / d sigma = eps_hat(x, t).  Euler in
these variables is DDIM with eta = 0; :func:`sample_heun` is its trapezoidal (second-order) version.

DPM-Solver++ (Lu et al. 2022) integrates the same ODE in lambda = log(alpha / sigma_t) with the
data prediction x0_hat, exactly for the linear part:
  x_prev = (s_prev / s_t) x_t - a_prev expm1(-h) D,   h = lambda_prev - lambda_t,
with D = x0_hat (first order) or the multistep 2M extrapolation from the previous x0_hat.
"""

from __future__ import annotations

import math

import torch

from ._common import Callback, check_inputs, pairs


def _sigma(ab: float) -> float:
    return math.inf if ab == 0.0 else math.sqrt((1.0 - ab) / ab)


def sample_heun(
    denoiser,
    x_T: torch.Tensor,
    timesteps,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Heun's method on the probability-flow ODE in (x~, sigma).  Two model calls per step except
    the last (to the data, sigma = 0), which is an Euler step as in Karras et al. (2022) Alg. 1."""
    ts = check_inputs(denoiser, x_T, timesteps)
    ab = denoiser.schedule.alpha_bar
    if ab(ts[0]) == 0.0:
        raise ValueError("Heun needs a finite SNR at the first timestep; lower t_max")
    x = x_T
    for i, (t, t_prev) in enumerate(pairs(ts)):
        a_t, a_p = math.sqrt(ab(t)), math.sqrt(ab(t_prev))
        ds = _sigma(ab(t_prev)) - _sigma(ab(t))
        eps, x0 = denoiser(x, t)
        if callback is not None:
            callback(i, t, x, x0)
        x_tilde = x / a_t
        x_euler = torch.add(x_tilde, eps, alpha=ds)
        if i == len(ts) - 1:
            x = x_euler * a_p
            break
        eps2, _ = denoiser(x_euler * a_p, t_prev)
        x = torch.add(x_tilde, eps + eps2, alpha=0.5 * ds) * a_p
    return x


def sample_dpmpp_2m(
    denoiser,
    x_T: torch.Tensor,
    timesteps,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    order: int = 2,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): one model call per step.  The first step is
    first order (no history) and so is the last, to the data, where lambda is infinite and the
    second-order extrapolation is undefined.  ``order=1`` gives DPM-Solver++(1) = DDIM(eta=0)."""
    if order not in (1, 2):
        raise ValueError(f"order={order!r} must be 1 or 2")
    ts = check_inputs(denoiser, x_T, timesteps)
    ab = denoiser.schedule.alpha_bar

    def lam(a: float) -> float:  # log(alpha / sigma)
        if a == 0.0:
            return -math.inf
        if a == 1.0:
            return math.inf
        return 0.5 * (math.log(a) - math.log1p(-a))

    x = x_T
    x0_last, h_last = None, None
    for i, (t, t_prev) in enumerate(pairs(ts)):
        ab_t, ab_p = ab(t), ab(t_prev)
        h = lam(ab_p) - lam(ab_t)
        _, x0 = denoiser(x, t)
        if callback is not None:
            callback(i, t, x, x0)
        d = x0
        if order == 2 and x0_last is not None and math.isfinite(h) and h_last > 0:
            half_inv_r = 0.5 * h / h_last  # 1 / (2r), r = h_last / h (0 if h_last is infinite)
            d = torch.add(x0 * (1.0 + half_inv_r), x0_last, alpha=-half_inv_r)
        ratio = math.sqrt((1.0 - ab_p) / (1.0 - ab_t))
        x = torch.add(x * ratio, d, alpha=-math.sqrt(ab_p) * math.expm1(-h))
        x0_last, h_last = x0, h
    return x
