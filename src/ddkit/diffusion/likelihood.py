"""Likelihood in bits per dimension: by the full variational bound (DDPM eq. 5, all T terms plus
the prior) and by the probability-flow ODE (Song et al. 2021, sec. D.2).

Units: bits per dim, i.e. nats / (D ln 2) with D the number of non-batch elements.  With the
discretized decoder (8-bit images in [-1, 1]) the VLB bounds the discrete code length; with the
Gaussian decoder, and for the ODE without dequantization, they estimate a negative log *density*
(differential entropy for the data distribution), which may be negative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .losses import (
    Decoder,
    VarianceType,
    check_x0,
    prior_bpd,
    split_output,
    vlb_terms,
)
from .parameterization import Prediction
from .process import q_posterior, q_sample
from .schedule import NoiseSchedule
from .sde import VPSDE
from .timestep_sampling import check_int

_LN2 = math.log(2.0)


@dataclass(frozen=True)
class VLBResult:
    """Per-example VLB in bits/dim: ``prior`` [N] = L_T and ``terms`` [N, T] with terms[:, 0] the
    decoder L_0 and terms[:, t] = L_{t-1}, the KL at index t."""

    prior: torch.Tensor
    terms: torch.Tensor

    @property
    def decoder(self) -> torch.Tensor:
        """L_0, the decoder term, [N]."""
        return self.terms[:, 0]

    @property
    def diffusion(self) -> torch.Tensor:
        """sum_{t>0} L_{t-1}, [N]."""
        return self.terms[:, 1:].sum(dim=1)

    @property
    def total(self) -> torch.Tensor:
        """L_T + sum_t L_{t-1} + L_0, [N]: an upper bound on -log2 p(x0) / D in expectation."""
        return self.prior + self.terms.sum(dim=1)


@torch.no_grad()
def vlb_bpd(
    model,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    *,
    prediction: Prediction | str | None = None,
    variance: VarianceType | str = VarianceType.FIXED_SMALL,
    decoder: Decoder | str = Decoder.DISCRETIZED,
    batch_t: int = 16,
    generator: torch.Generator | None = None,
) -> VLBResult:
    """Bits/dim of x0 [N x ...] by the full bound: every term L_t, t = 0..T-1, plus the prior.

    ``model`` is either a denoiser ``denoiser(x_t, t: int) -> (eps, x0_hat)`` (``prediction=None``;
    e.g. :class:`ddkit.Denoiser` or the exact ``GaussianMixture.denoiser``), with a fixed variance,
    or a raw network ``model(x_t, t [N]) -> output`` of the given ``prediction`` type, which may
    have learned-range variance (2C output channels).  ``batch_t`` timesteps are processed at once
    by repeating x0 (a raw network then sees N * batch_t rows per call).  Each L_t uses one draw
    x_t ~ q(x_t | x0); the noise for index t is drawn from ``generator`` in order of t, so results
    do not depend on ``batch_t``.  ``decoder``: see :class:`ddkit.diffusion.losses.Decoder`.
    """
    variance, decoder = VarianceType.parse(variance), Decoder.parse(decoder)
    check_x0(x0)
    check_int("batch_t", batch_t)
    if prediction is None:
        if variance is VarianceType.LEARNED_RANGE:
            raise ValueError(
                "a denoiser has no learned variance; pass the raw network and prediction="
            )
        own = getattr(model, "schedule", schedule)
        if own is not schedule and not np.array_equal(own.betas, schedule.betas):
            raise ValueError("the denoiser's schedule differs from the schedule given")
    else:
        prediction = Prediction.parse(prediction)
    n, T = x0.shape[0], schedule.T

    def randn():
        return torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)

    terms = torch.empty(n, T, dtype=x0.dtype, device=x0.device)
    for start in range(0, T, batch_t):
        ts = list(range(start, min(T, start + batch_t)))
        t = torch.tensor(ts, device=x0.device).repeat_interleave(n)  # [B * N], blocks of N
        x = x0.repeat(len(ts), *([1] * (x0.ndim - 1)))
        noise = torch.cat([randn() for _ in ts])  # one draw per t, in order of t
        x_t = q_sample(schedule, x, t, noise)
        if prediction is None:
            x0_hat = torch.cat([model(x_t[i * n : (i + 1) * n], ti)[1] for i, ti in enumerate(ts)])
            log_var = variance.log_variance(schedule, t, x_t)
        else:
            pred, v = split_output(model(x_t, t), x_t, variance)
            a = schedule.coef("sqrt_alphas_cumprod", t, x_t)
            s = schedule.coef("sqrt_one_minus_alphas_cumprod", t, x_t)
            _, x0_hat = prediction.to_eps_x0(pred, x_t, a, s)
            log_var = variance.log_variance(schedule, t, x_t, v)
        mean, _, _ = q_posterior(schedule, x0_hat.to(x.dtype), x_t, t)
        bits = vlb_terms(schedule, mean, log_var, x, x_t, t, decoder=decoder)
        terms[:, start : start + len(ts)] = bits.reshape(len(ts), n).T
    return VLBResult(prior=prior_bpd(schedule, x0), terms=terms)


def optimal_reverse_variance(schedule: NoiseSchedule, eigvals) -> np.ndarray:
    """Var(x_{t-1} | x_t) [T, d] per eigen-direction for Gaussian data with covariance eigenvalues
    ``eigvals`` [d]: beta-tilde_t + coef1_t^2 P_t for t > 0 and P_0 at the decoder, where
    P_t = l s^2 / (a^2 l + s^2) = Var(x0 | x_t).  With it the bound is tight up to the prior."""
    lam = np.asarray(eigvals, dtype=np.float64)[None, :]
    ab = schedule.alphas_cumprod[:, None]
    post = lam * (1.0 - ab) / (ab * lam + 1.0 - ab)
    var = schedule.posterior_variance[:, None] + schedule.posterior_mean_coef1[:, None] ** 2 * post
    var[0] = post[0]
    return var


def gaussian_vlb_terms(schedule: NoiseSchedule, eigvals, mean, sigma2) -> tuple[np.ndarray, float]:
    """Closed-form E[L_t] [T] and E[L_T] (bits/dim) for x0 ~ N(mean, S), S with eigenvalues
    ``eigvals`` [d], the exact denoiser E[x0 | x_t], the Gaussian decoder and reverse variances
    ``sigma2`` ([T] or [T, d] per eigen-direction, e.g. ``exp(log_variance)`` of a VarianceType).

    With P_t = Var(x0 | x_t) per direction, E[L_{t-1}] = KL(beta-tilde || sigma^2) + coef1^2 P_t /
    (2 sigma^2) and E[L_0] = log(2 pi sigma_0^2) / 2 + P_0 / (2 sigma_0^2), averaged over d.
    Ground truth for :func:`vlb_bpd` on Gaussian data (float64).
    """
    lam = np.asarray(eigvals, dtype=np.float64)
    ab = schedule.alphas_cumprod[:, None]
    post = lam[None] * (1.0 - ab) / (ab * lam[None] + 1.0 - ab)
    s2 = np.broadcast_to(np.asarray(sigma2, dtype=np.float64).reshape(schedule.T, -1), post.shape)
    bt = schedule.posterior_variance[1:, None]
    c1 = schedule.posterior_mean_coef1[1:, None]
    kl = 0.5 * (np.log(s2[1:] / bt) + bt / s2[1:] - 1.0) + c1**2 * post[1:] / (2.0 * s2[1:])
    dec = 0.5 * np.log(2 * math.pi * s2[0]) + post[0] / (2.0 * s2[0])
    terms = np.concatenate([dec[None], kl]).mean(axis=1) / _LN2
    ab_T = float(schedule.alphas_cumprod[-1])
    second = (float(np.sum(np.asarray(mean, dtype=np.float64) ** 2)) + float(lam.sum())) / lam.size
    prior = 0.5 * (-ab_T + ab_T * second - math.log1p(-ab_T)) / _LN2
    return terms, prior


@dataclass(frozen=True)
class ODEResult:
    """Per-example NLL by the probability-flow ODE in bits/dim: ``bpd`` [N] (mean over the probes),
    its Hutchinson standard error ``stderr`` [N] (NaN with a single probe), ``prior`` [N], the
    -log2 N(latent; 0, I) / D part, and ``latent`` [N x ...], the ODE's state at index T-1."""

    bpd: torch.Tensor
    stderr: torch.Tensor
    prior: torch.Tensor
    latent: torch.Tensor


def ode_bpd(
    denoiser,
    x0: torch.Tensor,
    *,
    n_steps: int | None = None,
    hutchinson_samples: int = 1,
    probe: str = "rademacher",
    spacing: str = "quadratic",
    dequantize: bool = False,
    generator: torch.Generator | None = None,
) -> ODEResult:
    """-log2 p(x0) / D by the instantaneous change of variables along the probability-flow ODE.

    In rho = -log alpha_bar (see :mod:`ddkit.diffusion.sde`) the ODE is
    dx/d rho = f = -x/2 + eps_hat/(2 s) and d log p(x(rho)) / d rho = -div f, so
    -log p_0(x0) = -log p_end(x_end) - int div f d rho.
    It is integrated with Heun's method, in increasing rho, from index 0 to index T-1 on the
    schedule's index grid (None: all T - 1 intervals) or on ``n_steps`` intervals of a sub-grid
    with the given ``spacing`` (see :func:`ddkit.diffusion.schedule.timesteps`; "quadratic",
    dense near the data where the flow is fastest for fine-scale data, is markedly more accurate
    than "linspace"), and p_end is taken as N(0, I).  div f = E[z^T (df/dx) z] is estimated with
    ``hutchinson_samples`` probes z per example ("rademacher" or "gaussian"), drawn once per
    trajectory from ``generator`` (one vector-Jacobian product each per evaluation).

    Approximations: the start x(rho_0) = x0 treats data as the index-0 marginal (alpha_bar_0 =
    1 - beta_0, e.g. 1 - 1e-4), so this estimates -log p_{index 0}(x0), which differs from the
    data's density by O(beta_0) per dim; N(0, I) differs from q(x_{T-1}) by O(alpha_bar_{T-1}).
    ``dequantize``: for 8-bit data in [-1, 1], x0 + U(-1/255, 1/255) noise (centred on the bins
    of the discretized decoder) and log2(127.5) bits/dim added, giving an upper bound on the
    discrete NLL comparable with ``vlb_bpd(..., decoder="discretized")``.
    """
    schedule = denoiser.schedule
    T = schedule.T
    check_x0(x0)
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"unknown probe {probe!r}; allowed: rademacher, gaussian")
    k = check_int("hutchinson_samples", hutchinson_samples)
    if n_steps is not None:
        check_int("n_steps", n_steps, 1, T - 1)
    if schedule.alpha_bar(T - 1) == 0.0:
        raise ValueError(
            "the ODE needs a finite SNR at index T-1; zero-terminal-SNR is not supported"
        )
    grid = list(range(T)) if n_steps is None else sorted(schedule.timesteps(n_steps + 1, spacing))
    sde = VPSDE(schedule)
    flow = sde.reverse(denoiser, probability_flow=True)

    def randn(shape):
        return torch.randn(shape, generator=generator, dtype=x0.dtype, device=x0.device)

    x = x0
    if dequantize:
        u = torch.rand(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        x = x0 + (2.0 * u - 1.0) / 255.0
    z = randn((k, *x0.shape))
    if probe == "rademacher":
        z = torch.sign(z)

    def field(x: torch.Tensor, t: int):
        """(f(x) [N x ...], div f estimates [k, N])."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            f, _ = flow.drift(xg, t)
            div = []
            for j in range(k):
                (vjp,) = torch.autograd.grad(f, xg, z[j], retain_graph=j < k - 1)
                div.append((vjp * z[j]).reshape(x.shape[0], -1).sum(dim=1))
        return f.detach(), torch.stack(div)

    integral = torch.zeros(k, x0.shape[0], dtype=x0.dtype, device=x0.device)
    for t, t_next in zip(grid, grid[1:]):
        h = sde.rho(t_next) - sde.rho(t)
        f1, d1 = field(x, t)
        f2, d2 = field(x + h * f1, t_next)
        x = x + 0.5 * h * (f1 + f2)
        integral += 0.5 * h * (d1 + d2)
    dims = x0[0].numel()
    flat = x.reshape(x.shape[0], -1)
    prior = 0.5 * (flat.pow(2).sum(dim=1) + dims * math.log(2 * math.pi)) / (dims * _LN2)
    bpd = prior[None] - integral / (dims * _LN2)  # [k, N]
    if dequantize:
        bpd = bpd + math.log2(127.5)
    stderr = bpd.std(dim=0) / math.sqrt(k) if k > 1 else torch.full_like(prior, math.nan)
    return ODEResult(bpd=bpd.mean(dim=0), stderr=stderr, prior=prior, latent=x)
