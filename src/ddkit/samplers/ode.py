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

from ..schedule import DATA
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


def _half_log_snr(ab: float) -> float:
    """lambda = log(alpha / sigma) = log-SNR / 2; -inf at zero SNR, +inf at the data."""
    if ab == 0.0:
        return -math.inf
    if ab == 1.0:
        return math.inf
    return 0.5 * (math.log(ab) - math.log1p(-ab))


def sample_dpmpp(
    denoiser,
    x_T: torch.Tensor,
    timesteps,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    order: int = 2,
) -> torch.Tensor:
    """DPM-Solver++ multistep (Lu et al. 2022, Alg. 2 for 2M; the 3M update of their code release),
    one model call per step.  With h = lambda_prev - lambda_t and phi1 = expm1(-h):
      order 1:  x_prev = (s_prev/s_t) x_t - a_prev phi1 x0_hat                  (= DDIM, eta = 0)
      order 2:  x0_hat -> D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_hat_last,  r = h_last / h
      order 3:  adds the second divided difference with phi2 = phi1/h + 1, phi3 = phi2/h - 1/2.
    The order is lowered where history is missing (the first steps).  The last step, to the data,
    has lambda = inf, where the multistep extrapolation in lambda is undefined and the first-order
    update returns the plain x0_hat, which trims the variance of modes not much wider than the
    last noise level.  For order >= 2 the last step instead integrates d x~ / d sigma = eps_hat
    (x~ = x / alpha) from sigma_t to 0 by the trapezoid rule, with eps_hat at sigma = 0 extrapolated
    linearly in sigma from the last two evaluations (a two-step Adams-Bashforth-Moulton end):
    exact when eps_hat is linear in sigma near 0, as for any smooth density (eps_hat ~ sigma)."""
    if order not in (1, 2, 3):
        raise ValueError(f"order={order!r} must be 1, 2 or 3")
    ts = check_inputs(denoiser, x_T, timesteps)
    ab = denoiser.schedule.alpha_bar
    x = x_T
    hist: list[
        tuple[float, torch.Tensor, torch.Tensor]
    ] = []  # (lambda, x0_hat, eps_hat), newest last
    for i, (t, t_prev) in enumerate(pairs(ts)):
        ab_t, ab_p = ab(t), ab(t_prev)
        lam_t = _half_log_snr(ab_t)
        h = _half_log_snr(ab_p) - lam_t
        eps, x0 = denoiser(x, t)
        if callback is not None:
            callback(i, t, x, x0)
        if t_prev == DATA and order >= 2 and hist and math.isfinite(hist[-1][0]):
            sig_t, sig_last = math.exp(-lam_t), math.exp(-hist[-1][0])  # sigma = exp(-lambda)
            eps_0 = eps + (eps - hist[-1][2]) * (sig_t / (sig_last - sig_t))
            x = torch.add(x / math.sqrt(ab_t), eps + eps_0, alpha=-0.5 * sig_t)
            break
        a_p = math.sqrt(ab_p)
        phi1 = math.expm1(-h)
        ratio = math.sqrt((1.0 - ab_p) / (1.0 - ab_t))
        k = min(order, len(hist) + 1) if math.isfinite(h) else 1
        if k >= 2 and not math.isfinite(lam_t - hist[-1][0]):
            k = 1  # the previous step started at zero SNR: no usable difference
        if k == 1:
            x = torch.add(x * ratio, x0, alpha=-a_p * phi1)
        else:
            r0 = (lam_t - hist[-1][0]) / h
            d1_0 = (x0 - hist[-1][1]) / r0
            if k == 2:
                x = torch.add(x * ratio, x0 + 0.5 * d1_0, alpha=-a_p * phi1)
            else:
                r1 = (hist[-1][0] - hist[-2][0]) / h
                d1_1 = (hist[-1][1] - hist[-2][1]) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi2 = phi1 / h + 1.0
                phi3 = phi2 / h - 0.5
                x = x * ratio - a_p * (phi1 * x0 - phi2 * d1 + phi3 * d2)
        hist = (hist + [(lam_t, x0, eps)])[-2:]
    return x


sample_dpmpp_2m = sample_dpmpp  # order=2 by default
