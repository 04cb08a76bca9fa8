"""Probability-flow ODE solvers.

With x~ = x / sqrt(alpha_bar) and sigma = sqrt((1 - alpha_bar) / alpha_bar) (Karras et al. 2022's
variables), the probability-flow ODE of the VP-SDE is  d x~ / d sigma = eps_hat(x, t).  Euler in
these variables is DDIM with eta = 0; :func:`sample_heun` is its trapezoidal (second-order) version.

DPM-Solver++ (Lu et al. 2022) integrates the same ODE in lambda = log(alpha / sigma_t) with the
data prediction x0_hat, exactly for the linear part:
  x_prev = (s_prev / s_t) x_t - a_prev expm1(-h) D,   h = lambda_prev - lambda_t,
with D = x0_hat (first order) or the multistep 2M / 3M extrapolation from the previous x0_hat
(:func:`sample_dpmpp`, the published formulas).  :func:`sample_adams` integrates the polynomial
through the last x0_hat exactly instead and adds an Adams-Moulton corrector (no extra model call).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..diffusion.denoiser import Estimate
from ..diffusion.schedule import DATA
from ._common import Callback, NoiseGenerator, check_count, check_inputs, estimate, pairs
from .ddpm import _jacobian_shaped_noise, ddpm_coefficients

LAST_STEPS = ("ode", "posterior")


def _sigma(ab: float) -> float:
    return math.inf if ab == 0.0 else math.sqrt((1.0 - ab) / ab)


def sample_heun(
    denoiser,
    x_T: torch.Tensor,
    timesteps,
    *,
    generator: NoiseGenerator = None,
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


def _dpmpp_weights(k: int, h: float, r0: float, r1: float) -> np.ndarray:
    """Weights on (x0_hat, x0_hat_last, x0_hat_last2)[:k] of the bracket of an order-k
    DPM-Solver++ step, x_prev = (s_prev/s_t) x_t - a_prev * bracket, with phi1 = expm1(-h):
      k = 1:  phi1 D0
      k = 2:  phi1 (D0 + D1/2),                        D1 = (D0 - D_last) / r0
      k = 3:  phi1 D0 - phi2 D1 + phi3 D2,             D1 = d0 + r0/(r0+r1) (d0 - d1),
              D2 = (d0 - d1)/(r0+r1),  d0 = (D0 - D_last)/r0,  d1 = (D_last - D_last2)/r1,
              phi2 = phi1/h + 1,  phi3 = phi2/h - 1/2.
    The bracket is linear in the x0_hat history, so the formulas are evaluated here on unit
    vectors (e[j] stands for the j-th newest x0_hat) and the step applies them as scaled sums."""
    e = np.eye(k)
    phi1 = math.expm1(-h)
    if k == 1:
        return phi1 * e[0]
    d0 = (e[0] - e[1]) / r0
    if k == 2:
        return phi1 * (e[0] + 0.5 * d0)
    d1 = (e[1] - e[2]) / r1
    D1 = d0 + (r0 / (r0 + r1)) * (d0 - d1)
    D2 = (d0 - d1) / (r0 + r1)
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    return phi1 * e[0] - phi2 * D1 + phi3 * D2


def sample_dpmpp(
    denoiser,
    x_T: torch.Tensor,
    timesteps,
    *,
    generator: NoiseGenerator = None,
    callback: Callback | None = None,
    order: int = 2,
) -> torch.Tensor:
    """DPM-Solver++ multistep (Lu et al. 2022, Alg. 2 for 2M; the 3M update of their code release),
    one model call per step.  With h = lambda_prev - lambda_t, r0 = h_last / h, r1 = h_last2 / h:
      order 1:  x_prev = (s_prev/s_t) x_t - a_prev expm1(-h) x0_hat              (= DDIM, eta = 0)
      order 2, 3:  x0_hat replaced by the multistep extrapolation (:func:`_dpmpp_weights`).
    The order is lowered where history is missing (the first steps).  The last step, to the data,
    has lambda = inf, where the multistep extrapolation in lambda is undefined and the first-order
    update returns the plain x0_hat, which trims the variance of modes not much wider than the
    last noise level.  For order >= 2 the last step instead integrates d x~ / d sigma = eps_hat
    (x~ = x / alpha) from sigma_t to 0 by the trapezoid rule, with eps_hat at sigma = 0 extrapolated
    linearly in sigma from the last two evaluations (a two-step Adams-Bashforth-Moulton end):
      x_0 = x_t / a_t - (sigma_t / 2) (eps_hat + eps_0),  eps_0 = eps_hat + c (eps_hat - eps_last),
      c = sigma_t / (sigma_last - sigma_t),
    exact when eps_hat is linear in sigma near 0, as for any smooth density (eps_hat ~ sigma).
    Every step is one scaled sum of x_t and the estimates: no other full-size temporaries."""
    if order not in (1, 2, 3):
        raise ValueError(f"order={order!r} must be 1, 2 or 3")
    ts = check_inputs(denoiser, x_T, timesteps)
    ab = denoiser.schedule.alpha_bar
    x = x_T
    hist: list[tuple[float, Estimate]] = []  # (lambda, estimate) of the last two steps, newest last
    for i, (t, t_prev) in enumerate(pairs(ts)):
        ab_t, ab_p = ab(t), ab(t_prev)
        lam_t = _half_log_snr(ab_t)
        h = _half_log_snr(ab_p) - lam_t
        est = estimate(denoiser, x, t)
        if callback is not None:
            callback(i, t, x, est.x0)
        if t_prev == DATA and order >= 2 and hist and math.isfinite(hist[-1][0]):
            sig_t, sig_last = math.exp(-lam_t), math.exp(-hist[-1][0])  # sigma = exp(-lambda)
            c = sig_t / (sig_last - sig_t)
            x = est.combine(x_t=1.0 / math.sqrt(ab_t), eps=-0.5 * sig_t * (2.0 + c))
            x.add_(hist[-1][1].eps, alpha=0.5 * sig_t * c)
            break
        k = min(order, len(hist) + 1) if math.isfinite(h) else 1
        if k >= 2 and not math.isfinite(lam_t - hist[-1][0]):
            k = 1  # the previous step started at zero SNR: no usable difference
        r0 = (lam_t - hist[-1][0]) / h if k >= 2 else math.nan
        r1 = (hist[-1][0] - hist[-2][0]) / h if k == 3 else math.nan
        w = -math.sqrt(ab_p) * _dpmpp_weights(k, h, r0, r1)
        ratio = math.sqrt((1.0 - ab_p) / (1.0 - ab_t))  # s_prev / s_t
        x = est.combine(x_t=ratio, x0=float(w[0]))
        for j in range(1, k):
            x.add_(hist[-j][1].x0, alpha=float(w[j]))
        hist = (hist + [(lam_t, est)])[-2:]
    return x


_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)


_POWERS = {"sigma": 1.0, "sigma^0.5": 0.5, "sigma^0.25": 0.25}
"""The exponent p of each power variable (sigma / alpha)^p = exp(-p lambda)."""

INTERPOLATIONS = ("log_snr", *_POWERS)
"""The variables in which :func:`sample_adams` interpolates x0_hat between its evaluations:
lambda, sigma / alpha = exp(-lambda), and its square and fourth roots."""


def _adams_weights(
    nodes: list[float], lam_s: float, lam_t: float, interpolate: str = "log_snr"
) -> np.ndarray:
    """w_j = integral over [lam_s, lam_t] of exp(lam - lam_t) l_j(lam) d lam, l_j the Lagrange basis
    polynomials of ``nodes`` (lambda values): the weights with which an exponential Adams step
    integrates the polynomial interpolating x0_hat at the nodes exactly.  With ``interpolate=
    "sigma"`` the polynomials are in sigma / alpha = exp(-lambda) instead, with "sigma^p" in
    (sigma / alpha)^p (each scaled by its value at lam_t, which changes no basis polynomial).  One
    node: 1 - exp(-h).  Otherwise 16-point Gauss-Legendre quadrature, exact to rounding for these
    integrands at the step sizes samplers take (and free of the cancellation that the closed
    forms phi_k(h) suffer for small h)."""
    h = lam_t - lam_s
    if len(nodes) == 1:
        return np.array([-math.expm1(-h)])
    lam = lam_s + 0.5 * h * (_GL_NODES + 1.0)
    q = 0.5 * h * _GL_WEIGHTS * np.exp(lam - lam_t)
    if interpolate in _POWERS:
        p = _POWERS[interpolate]
        y, ys = np.exp(p * (lam_t - lam)), [math.exp(p * (lam_t - n)) for n in nodes]
    else:
        y, ys = lam, list(nodes)
    w = np.empty(len(ys))
    for j, yj in enumerate(ys):
        basis = np.prod([(y - ym) / (yj - ym) for m, ym in enumerate(ys) if m != j], axis=0)
        w[j] = float(q @ basis)
    return w


def sample_adams(
    denoiser,
    x_T: torch.Tensor,
    timesteps,
    *,
    generator: NoiseGenerator = None,
    callback: Callback | None = None,
    order: int = 3,
    corrector: bool = True,
    last: str = "ode",
    tail: int = 1,
    krylov: int = 1,
    interpolate: str = "log_snr",
    limiter: float | None = None,
) -> torch.Tensor:
    """Exponential Adams-Bashforth-Moulton on the probability-flow ODE, one model call per step.

    The data-prediction form of the ODE is solved exactly for its linear part (as DPM-Solver++):
      x_t = (s_t / s_s) x_s + a_t * integral_{lam_s}^{lam_t} exp(lam - lam_t) x0_hat(lam) d lam,
    with x0_hat replaced by the polynomial through its last ``order`` evaluations (predictor,
    Adams-Bashforth) and that integral taken exactly (:func:`_adams_weights`).  With
    ``corrector``, the evaluation at the predicted x_t then re-does the same step through the
    polynomial that includes it and the ``order - 1`` before (Adams-Moulton: the classical pair
    of equal order), and the next step starts from the corrected x_t with that same evaluation
    (no second model call: the corrector of UniPC, Zhao et al. 2023).  The order is lowered where
    history is missing; the last step, to the data, is the trapezoid end of :func:`sample_dpmpp`.

    ``last="posterior"`` ends instead with draws from the posterior: the last ``tail`` steps
    (default 1) are ancestral steps x_prev ~ q(x_prev | x_t) whose x0 posterior is the Gaussian
    of mean x0_hat and covariance Cov[x0 | x_t] = (s_t^2 / a_t) d x0_hat / d x_t (Tweedie), as
    ``sample_ddpm(variance="tweedie_jacobian")`` takes them, each shaped by one Jacobian-vector
    product (:func:`ddkit.samplers.ddpm._jacobian_shaped_noise`, counted as two model calls); with
    one, it is a single draw of x_0 from the last timestep.  The model is defined only down to
    the schedule's smallest noise level, so no deterministic end can give modes narrower than
    that level their width: the ODE carries x to the right marginal, and the draws supply what
    is left.  One product's linear shaping (a secant fitted to the posterior's spectrum) is
    exact for an isotropic Gaussian posterior and close to exact on average over the directions
    of a high-dimensional one, but in few dimensions over-feeds the narrowest directions
    (posterior variances 26:1 apart in 2-D: the narrow one gets 2.0x its variance); ``krylov``
    = m shapes each draw by m products instead (a Lanczos square root, exact for a Gaussian
    posterior once m reaches its number of distinct variances; 2m calls per draw).  The
    posterior at the last timestep is a mixture where modes are close.  Smaller ancestral steps
    (``tail`` > 1) did better on the tuning family of test mixtures but not on the held-out one
    (BENCHMARKS.md, "Few-step sampling on a family of test mixtures").

    ``interpolate="sigma"`` takes those polynomials in sigma / alpha = exp(-lambda) instead of
    lambda.  Along the solution for one Gaussian mode of standard deviation s, x0_hat moves as
    s / sqrt(s^2 + (sigma / alpha)^2): flat in sigma / alpha once that falls below s, where the
    mode contracts, but a logistic curve in lambda, which a polynomial over large steps
    overshoots: at 8 second-order steps one 32-D Gaussian of standard deviation 0.05-0.5 comes
    out 11-16% too spread in variance, and 3-10% too narrow in sigma / alpha (0.005-0.5:
    0.90-0.99).  On the test family of mixtures it is the better choice, on the Fashion-MNIST
    model the worse (FID 3.1 higher at NFE 5), so log-SNR stays the default (BENCHMARKS.md).
    ``interpolate="sigma^0.5"`` and ``"sigma^0.25"`` take them in (sigma / alpha)^p =
    exp(-p lambda), between the two: on that Gaussian at NFE 10 (standard deviations 0.05-0.5)
    with the posterior end they leave its variance within 2% (p = 0.5) and 5-8% too spread
    (p = 0.25; log-SNR: 11-16%).  With the posterior end at NFE 10 they keep the within-mode
    dispersion of 9-11 of the 11 held-out test mixtures in 0.9-1.1 (log-SNR: 8-9), neither all
    11 on every seed; on the Fashion-MNIST model p = 0.25 is better at NFE 5, both are worse at
    NFE 10 (BENCHMARKS.md).

    ``limiter`` = R lowers the order of a step, sample by sample, where x0_hat accelerates: where
    its rate of change (the norm of its difference per unit lambda) over the newest interval
    between evaluations exceeds R times the rate over the interval before, scaled by the ratio
    that exp(lambda) gives over the same two intervals, that sample's step (predictor and
    corrector) takes the newest x0_hat alone (first order: the exponential Euler step, DDIM).
    Along the flow of one Gaussian mode x0_hat moves as 1 / sqrt(1 + exp(-2 lambda) / s^2), whose
    rate grows more slowly than exp(lambda): with R = 1 the limiter changes a Gaussian's samples
    only by rounding on uniform log-SNR grids, and after the window grid's long first step where
    the orders agree (to 2e-3 of the width).  It acts where x0_hat switches between modes, where
    a polynomial through evaluations on both sides of the switch overshoots and leaves samples
    between the modes.  With the posterior end at NFE 20 it puts more test mixtures inside the
    noise floor (BENCHMARKS.md, "Few-step sampling on a family of test mixtures").  It costs no
    model call; it keeps one evaluation more in its history (three for order 2).

    Unlike the published DPM-Solver++(3M) update (``sample_dpmpp(order=3)``, diffusers,
    k-diffusion), which weighs the second divided difference by phi3 where the exact integral of
    the quadratic needs 2 phi3 (so its local error is O(h^3)), ``order=3`` here is third order."""
    if order not in (1, 2, 3):
        raise ValueError(f"order={order!r} must be 1, 2 or 3")
    if last not in LAST_STEPS:
        raise ValueError(f"last={last!r} is not allowed; allowed: {', '.join(LAST_STEPS)}")
    if interpolate not in INTERPOLATIONS:
        raise ValueError(
            f"interpolate={interpolate!r} is not allowed; allowed: {', '.join(INTERPOLATIONS)}"
        )
    number = isinstance(limiter, (int, float)) and not isinstance(limiter, bool)
    if limiter is not None and not (number and 0 < limiter < math.inf):
        raise ValueError(f"limiter={limiter!r} must be a finite number > 0 (1: faster than exp)")
    check_count("tail", tail)
    ts = check_inputs(denoiser, x_T, timesteps)
    if last == "ode" and tail != 1:
        raise ValueError(f"tail={tail} takes last='posterior' (the ODE ends in one step)")
    if check_count("krylov", krylov) != 1 and last == "ode":
        raise ValueError(f"krylov={krylov} takes last='posterior' (the ODE's end draws nothing)")
    if tail > len(ts):
        raise ValueError(f"tail={tail} ancestral steps need at least {tail} timesteps")
    first_draw = len(ts) - tail if last == "posterior" else len(ts)
    ab = denoiser.schedule.alpha_bar
    x = x_T
    hist: list[tuple[float, Estimate]] = []  # (lambda, estimate), newest last
    start = None  # (x, lambda, alpha_bar) where the step that produced x began
    for i, (t, t_prev) in enumerate(pairs(ts)):
        ab_t, ab_p = ab(t), ab(t_prev)
        lam_t, lam_p = _half_log_snr(ab_t), _half_log_snr(ab_p)
        if i >= first_draw:  # an ancestral step (eq. 7) with the Tweedie posterior's noise
            c_x0, c_xt, sigma = ddpm_coefficients(ab_t, ab_p, "tweedie_jacobian")
            x0, noise = _jacobian_shaped_noise(denoiser, x, t, sigma, c_x0, generator, krylov)
            if callback is not None:
                callback(i, t, x, x0)
            x = torch.mul(x0, c_x0).add_(x, alpha=c_xt).add_(noise)
            continue
        est = estimate(denoiser, x, t)
        if callback is not None:
            callback(i, t, x, est.x0)
        if corrector and start is not None and math.isfinite(start[1]):
            x_s, lam_s, ab_s = start
            nodes = [(lam_t, est)] + hist[::-1]
            x = _adams_step(x_s, ab_s, ab_t, lam_s, lam_t, nodes, order, interpolate, limiter)
        if t_prev == DATA and order >= 2 and hist and math.isfinite(hist[-1][0]):
            sig_t, sig_last = math.exp(-lam_t), math.exp(-hist[-1][0])  # sigma = exp(-lambda)
            c = sig_t / (sig_last - sig_t)
            x = torch.mul(x, 1.0 / math.sqrt(ab_t)).add_(est.eps, alpha=-0.5 * sig_t * (2.0 + c))
            x.add_(hist[-1][1].eps, alpha=0.5 * sig_t * c)
            break
        start = (x, lam_t, ab_t)
        nodes = [(lam_t, est)] + hist[::-1]
        x = _adams_step(x, ab_t, ab_p, lam_t, lam_p, nodes, order, interpolate, limiter)
        keep = max(order - 1, 2 if limiter is not None else 0)
        hist = (hist + [(lam_t, est)])[-keep:] if order > 1 else []
    return x


def _adams_step(
    x, ab_s, ab_t, lam_s, lam_t, newest_first, order, interpolate="log_snr", limiter=None
):
    """x_t = (s_t/s_s) x_s + a_t sum_j w_j x0_hat_j over the newest ``order`` finite nodes; with
    ``limiter``, first order for the samples :func:`_accelerating` marks."""
    if math.isfinite(lam_t - lam_s):
        finite = [(lam, est) for lam, est in newest_first if math.isfinite(lam)]
    else:  # a step from zero SNR or to the data: only a constant x0_hat is integrable
        finite = newest_first[:1]
    nodes = finite[:order]
    w = math.sqrt(ab_t) * _adams_weights([lam for lam, _ in nodes], lam_s, lam_t, interpolate)
    out = torch.mul(x, math.sqrt((1.0 - ab_t) / (1.0 - ab_s)))
    for wj, (_, est) in zip(w, nodes):
        out.add_(est.x0, alpha=float(wj))
    if limiter is None or len(nodes) < 2 or len(finite) < 3:
        return out
    first = _adams_step(x, ab_s, ab_t, lam_s, lam_t, nodes[:1], 1, interpolate)
    return torch.where(_accelerating(finite[:3], limiter), first, out)  # no host sync


def _accelerating(newest_first, limiter: float) -> torch.Tensor:
    """Per sample (a [B, 1, ...] bool mask), whether x0_hat's rate of change per unit lambda over
    the newest interval of the three newest nodes exceeds ``limiter`` times its rate over the
    interval before, times the ratio of those rates for exp(lambda)."""
    (lam0, e0), (lam1, e1), (lam2, e2) = newest_first
    h1, h2 = abs(lam0 - lam1), abs(lam1 - lam2)
    exp_ratio = (math.expm1(h1) / h1) / (-math.expm1(-h2) / h2)
    dims = tuple(range(1, e0.x0.ndim))
    d1 = torch.linalg.vector_norm(e0.x0 - e1.x0, dim=dims, keepdim=True)
    d2 = torch.linalg.vector_norm(e1.x0 - e2.x0, dim=dims, keepdim=True)
    return d1 * h2 > (limiter * exp_ratio * h1) * d2


sample_dpmpp_2m = sample_dpmpp  # order=2 by default
