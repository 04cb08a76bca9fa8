"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on the full schedule or any sub-sequence.

For a step t -> t_prev with alpha_bar_t, alpha_bar_prev (DATA: 1) the effective one-step beta is
beta = 1 - alpha_bar_t / alpha_bar_prev, and x_prev ~ N(mu, sigma^2 I) with the posterior mean
(eq. 7) mu = sqrt(ab_prev) beta / (1 - ab_t) x0_hat + sqrt(1 - beta) (1 - ab_prev) / (1 - ab_t) x_t
and sigma^2 = beta-tilde = beta (1 - ab_prev) / (1 - ab_t) ("fixed_small") or beta ("fixed_large",
which on a sub-sequence is DDIM's sigma-hat).  As in Algorithm 2, no noise is added at the last
step (z = 0 at t = 1).

Neither fixed variance is the true reverse variance.  With an exact denoiser, q(x_prev | x_t) has
covariance beta-tilde I + coef_x0^2 Cov[x0 | x_t], and Tweedie's formula gives
Cov[x0 | x_t] = (s_t^2 / a_t) d x0_hat / d x_t.  ``variance="tweedie"`` uses that, reduced to its
per-example isotropic part (trace / d, estimated without bias by Hutchinson's estimator with
Rademacher probes through a forward-mode Jacobian-vector product), and keeps the noise of the last
step, Cov[x0 | x_0] ~ (1 - ab_0)/ab_0.  Once the remaining noise is far below the data's own scale,
beta-tilde misses that term (fixed_small under-disperses small modes) and a plain x0 estimate at
the end trims variance; "tweedie" fixes both at the cost of one JVP per step (about 2-3 model
calls).
Its isotropic noise over-feeds the narrow directions of an anisotropic posterior;
``variance="tweedie_jacobian"`` shapes the noise by the Jacobian itself: with one JVP a secant
(alpha I + beta J) z fitted to the spectrum's first two moments, exact for an isotropic posterior,
with ``krylov=m`` JVPs the Lanczos square root, exact for a Gaussian posterior once m reaches its
number of distinct variances (:func:`_jacobian_shaped_noise`).

Cost per step besides the model (fixed variances): the posterior mean is a fixed combination of
x_t and x0_hat, hence of x_t and the raw model output, and is accumulated in two passes into the
noise, which is drawn at its scale sigma (``Estimate.combine``); x0_hat itself is only formed for
a callback.  On a CPU the seeded Gaussian draw is then most of the step's cost.
"""

from __future__ import annotations

import math

import torch

from ._common import (
    Callback,
    NoiseGenerator,
    check_count,
    check_inputs,
    estimate,
    pairs,
    rademacher_like,
    randn_like,
)

VARIANCES = ("fixed_small", "fixed_large", "tweedie", "tweedie_jacobian")


def ddpm_coefficients(ab_t: float, ab_prev: float, variance: str) -> tuple[float, float, float]:
    """(coef_x0, coef_xt, sigma) of one ancestral step, in float64."""
    beta = 1.0 - ab_t / ab_prev
    c_x0 = math.sqrt(ab_prev) * beta / (1.0 - ab_t)
    c_xt = math.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t)
    if variance in ("fixed_small", "tweedie", "tweedie_jacobian"):
        var = beta * (1.0 - ab_prev) / (1.0 - ab_t)
    elif variance == "fixed_large":
        var = beta
    else:
        raise ValueError(f"unknown variance {variance!r}; allowed: {', '.join(VARIANCES)}")
    return c_x0, c_xt, math.sqrt(var)


def _x0_jvp(denoiser, x: torch.Tensor, t: int, v: torch.Tensor):
    """(x0_hat, J v) with J = d x0_hat / d x_t, by forward-mode AD.  Attention runs on the math
    kernel of scaled_dot_product_attention, whose ops all have forward derivatives (the fused CPU
    and GPU kernels have none)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        return torch.func.jvp(lambda y: denoiser(y, t)[1], (x,), (v,))


def _x0_and_posterior_var(denoiser, x: torch.Tensor, t: int, probes: int, generator):
    """x0_hat and the Hutchinson estimate of tr(Cov[x0 | x_t]) / d per example, [N, 1, ...]."""
    ab = denoiser.schedule.alpha_bar(t)
    scale = (1.0 - ab) / math.sqrt(ab)  # Cov = scale * Jacobian of x0_hat
    trace = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    x0 = None
    for _ in range(probes):
        u = rademacher_like(x, generator)
        x0, ju = _x0_jvp(denoiser, x, t, u)
        trace += (u * ju).flatten(1).sum(1)
    per_dim = (trace / (probes * x[0].numel()) * scale).clamp_min(0.0)
    return x0.detach(), per_dim.reshape(-1, *[1] * (x.ndim - 1))


def _jacobian_shaped_noise(
    denoiser, x: torch.Tensor, t: int, sigma: float, c_x0: float, generator, krylov: int = 1
):
    """x0_hat and noise with covariance close to sigma^2 I + c_x0^2 Cov[x0 | x_t], from ``krylov``
    Jacobian-vector products.

    Cov[x0 | x_t] = k J with J = d x0_hat / d x_t (symmetric for the exact denoiser) and
    k = s^2 / a, so on an eigenvector of J with eigenvalue lam the wanted standard deviation is
    f(lam) = sqrt(sigma^2 + g lam), g = c_x0^2 k, and the wanted noise is f(J) z, z ~ N(0, I).

    With one product the noise is M z with M = alpha I + beta J, a line through f at two
    eigenvalues fitted to what the product tells about J's spectrum.  Weighing each eigenvalue by
    z's share in its eigenvector, z and Jz give that spectrum's mean m = z.Jz / z.z (the Rayleigh
    quotient) and its second moment Jz.Jz / z.z, hence its spread s; the symmetric two-point
    spectrum with those moments has eigenvalues m - s and m + s, and the line is the secant of f
    through them: beta = g / (f(m - s) + f(m + s)), alpha = f(m - s) - beta (m - s).  It is exact
    for an isotropic posterior (s = 0, where it is the tangent at m) and for two distinct
    variances of equal multiplicity (z equally in both eigenspaces), and it puts the extra
    variance along the directions in which the posterior spreads, where the isotropic "tweedie"
    variance spreads it evenly.  The tangent at m alone lies above the concave f away from m and
    gives every other direction too much: at the last draw of a 256-D low-rank-plus-diagonal
    posterior (variances 11:1 apart) 6% too much variance on average (a log-likelihood 7 nats
    too low), where the secant gives 1% too little.  Where s > m, no symmetric two-point spectrum
    on [0, inf) fits: a few directions lie far above the rest (the same posterior drawn from
    timestep 40: variances 110:1 apart, 4 of 256 high), the secant through 0 and m + s would starve
    the rest (35% of their variance on average) and the tangent at m is taken (121%).  In low
    dimensions one z says little about the spectrum, and the draw is only a little better than
    the tangent's (variances 26:1 apart in 2-D: the narrow one gets 2.0x its variance, 2.4x from
    the tangent alone).  There, and for spectra far from two points, take m > 1 products: the
    Lanczos approximation |z| Q_m f(T_m) e_1 of f(J) z on the Krylov space of z (Chow and Saad
    2014), exact once that space holds J's eigenvectors, i.e. for m >= d or m >= the number of
    distinct eigenvalues.
    """
    ab = denoiser.schedule.alpha_bar(t)
    g = c_x0 * c_x0 * (1.0 - ab) / math.sqrt(ab)
    z = randn_like(x, generator)
    if krylov > 1:
        return _lanczos_noise(denoiser, x, t, z, sigma, g, krylov)
    return _secant_noise(denoiser, x, t, z, sigma, g)


def _secant_noise(denoiser, x: torch.Tensor, t: int, z, sigma: float, g: float):
    """x0_hat and (alpha I + beta J) z from one JVP: the secant of f(lam) = sqrt(sigma^2 + g lam)
    through the two-point spectrum with the mean and spread z and Jz give, per example (the
    tangent at the mean where that spectrum would reach below 0)."""
    x0, jz = _x0_jvp(denoiser, x, t, z)
    x0, jz = x0.detach(), jz.detach()
    dims = tuple(range(1, x.ndim))
    zz = (z * z).sum(dims, keepdim=True)
    mean = ((z * jz).sum(dims, keepdim=True) / zz).clamp_min(0.0)
    spread = ((jz * jz).sum(dims, keepdim=True) / zz - mean * mean).clamp_min(0.0).sqrt()
    # no symmetric two-point spectrum on [0, inf) has a spread above its mean: there (a few
    # directions far above the rest) the tangent at the mean
    fits = mean >= spread
    lo = torch.where(fits, mean - spread, mean)
    hi = torch.where(fits, mean + spread, mean)
    f_lo, f_hi = torch.sqrt(sigma * sigma + g * lo), torch.sqrt(sigma * sigma + g * hi)
    # (f(hi) - f(lo)) / (hi - lo) = g / (f(lo) + f(hi)): no division by the spread
    beta = torch.where(f_hi > 0, g / (f_lo + f_hi).clamp_min(1e-300), torch.zeros_like(f_hi))
    alpha = f_lo - beta * lo
    return x0, alpha * z + beta * jz


def _lanczos_noise(denoiser, x: torch.Tensor, t: int, z, sigma: float, g: float, m: int):
    """x0_hat and |z| Q f(T) e_1 after m Lanczos steps on J = d x0_hat / d x_t from q_1 = z / |z|
    (one JVP each, per example), f(lam) = sqrt(max(sigma^2 + g lam, 0)).  The basis is
    re-orthogonalised in full (m is small); where the Krylov space is exhausted (the new
    direction vanishes against J q) the basis ends there, whose Ritz values are then exact.
    T is taken symmetric, as J is for an exact denoiser; for a learned one, whose Jacobian is
    only close to symmetric, it is the symmetric Lanczos recurrence applied to J as it is."""
    dims = tuple(range(1, x.ndim))

    def dot(a, b):
        return (a * b).sum(dims, keepdim=True)

    norm = dot(z, z).sqrt()
    basis = [z / norm.clamp_min(torch.finfo(z.dtype).tiny)]
    tri = torch.zeros(x.shape[0], m, m, dtype=torch.float64, device=x.device)
    x0 = None
    for j in range(m):
        x0_j, w = _x0_jvp(denoiser, x, t, basis[-1])
        x0 = x0_j.detach() if x0 is None else x0  # the same x0_hat every time
        w = w.detach()
        a = dot(basis[-1], w)
        tri[:, j, j] = a.flatten().double()
        if j == m - 1:
            break
        size = dot(w, w).sqrt()
        for q in basis:
            w = w - dot(q, w) * q
        b = dot(w, w).sqrt()
        alive = b > size * math.sqrt(torch.finfo(w.dtype).eps)  # else: rounding noise
        b = torch.where(alive, b, torch.zeros_like(b))
        basis.append(torch.where(alive, w / b.clamp_min(torch.finfo(w.dtype).tiny), 0.0))
        tri[:, j, j + 1] = tri[:, j + 1, j] = b.flatten().double()
    theta, vecs = torch.linalg.eigh(tri)
    f = (sigma * sigma + g * theta).clamp_min(0.0).sqrt()
    weights = f * vecs[:, 0, :]  # f(theta_k) S[0, k]
    coef = (vecs * weights[:, None, :]).sum(-1) * norm.flatten().double()[:, None]  # |z| f(T) e_1
    coef = coef.to(x.dtype)
    noise = torch.zeros_like(x)
    for j, q in enumerate(basis):
        noise += coef[:, j].reshape(-1, *[1] * (x.ndim - 1)) * q
    return x0, noise


def sample_ddpm(
    denoiser,
    x_T: torch.Tensor,
    timesteps,
    *,
    generator: NoiseGenerator = None,
    callback: Callback | None = None,
    variance: str = "fixed_small",
    probes: int = 1,
    krylov: int = 1,
) -> torch.Tensor:
    """Ancestral sampling x_T -> x_0 along ``timesteps`` (decreasing).  One model call per step
    (fixed variances), one Jacobian-vector product per probe ("tweedie"), or ``krylov`` of them
    ("tweedie_jacobian": :func:`_jacobian_shaped_noise`)."""
    ts = check_inputs(denoiser, x_T, timesteps)
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; allowed: {', '.join(VARIANCES)}")
    check_count("probes", probes)
    if check_count("krylov", krylov) != 1 and variance != "tweedie_jacobian":
        raise ValueError(f"krylov={krylov} takes variance='tweedie_jacobian' (a shaped draw)")
    ab = denoiser.schedule.alpha_bar
    x = x_T
    for i, (t, t_prev) in enumerate(pairs(ts)):
        c_x0, c_xt, sigma = ddpm_coefficients(ab(t), ab(t_prev), variance)
        if variance == "tweedie":
            x0, cov = _x0_and_posterior_var(denoiser, x, t, probes, generator)
            if callback is not None:
                callback(i, t, x, x0)
            std = torch.sqrt(sigma * sigma + c_x0 * c_x0 * cov)
            x = torch.mul(x0, c_x0).add_(x, alpha=c_xt).addcmul_(randn_like(x, generator), std)
            continue
        if variance == "tweedie_jacobian":
            x0, noise = _jacobian_shaped_noise(denoiser, x, t, sigma, c_x0, generator, krylov)
            if callback is not None:
                callback(i, t, x, x0)
            x = torch.mul(x0, c_x0).add_(x, alpha=c_xt).add_(noise)
            continue
        est = estimate(denoiser, x, t)
        if callback is not None:
            callback(i, t, x, est.x0)
        noisy = i < len(ts) - 1 and sigma > 0
        noise = randn_like(x, generator, std=sigma) if noisy else None
        x = est.combine(x0=c_x0, x_t=c_xt, add_to=noise)  # posterior mean (eq. 7) + sigma z
    return x
