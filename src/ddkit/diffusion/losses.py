"""Training losses and variational-bound terms (DDPM, Ho et al. 2020; improved DDPM, Nichol &
Dhariwal 2021).  The timestep samplers that weight them live in
:mod:`ddkit.diffusion.timestep_sampling` and are re-exported here.

Notation: index t in {0..T-1} (index 0 is the paper's t = 1); a = sqrt(alpha_bar_t),
s = sqrt(1 - alpha_bar_t); beta-tilde_t is the posterior variance of q(x_{t-1} | x_t, x_0).
The bound (DDPM eq. 5) is  L = L_T + sum_{t>0} L_{t-1} + L_0  with
  L_T     = KL(q(x_T | x_0) || N(0, I))                                  (prior, no parameters)
  L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))               (index t > 0)
  L_0     = -log p(x_0 | x_1)                                            (index 0, the decoder)
All terms here are per example, averaged over the non-batch dims and in bits (divided by ln 2).
"""

from __future__ import annotations

import enum
import math

import torch

from .parameterization import Prediction
from .process import q_mean_var, q_posterior, q_sample
from .schedule import NoiseSchedule
from .timestep_sampling import LossSecondMomentSampler, UniformSampler

__all__ = [
    "Decoder",
    "LossSecondMomentSampler",
    "LossType",
    "UniformSampler",
    "VarianceType",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
    "prior_bpd",
    "training_losses",
    "vlb_terms",
]

_HALF_BIN = 1.0 / 255.0  # half the width of an 8-bit bin on [-1, 1]
_LN2 = math.log(2.0)


def check_x0(x0) -> None:
    """ValueError unless ``x0`` is a floating-point [N x ...] tensor (at least 2-D)."""
    if not torch.is_tensor(x0) or not x0.is_floating_point() or x0.ndim < 2:
        shape = tuple(x0.shape) if torch.is_tensor(x0) else type(x0).__name__
        raise ValueError(f"x0 must be a floating-point [N x ...] tensor, got {shape}")


class _Parse(enum.Enum):
    @classmethod
    def parse(cls, value):
        """The member named by ``value`` (a member or its string value)."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown {cls.__name__} {value!r}; allowed: {allowed}") from None


class LossType(_Parse):
    """The training loss: L_simple, the variational bound, or their sum (hybrid)."""

    SIMPLE = "simple"  # L_simple: MSE on the prediction target (DDPM Algorithm 1, eq. 14)
    VLB = "vlb"  # the variational bound, estimated as T * L_t for the sampled t
    HYBRID = "hybrid"  # L_simple + lambda L_vlb, mean stop-gradient in L_vlb (improved DDPM eq. 16)


class VarianceType(_Parse):
    """The reverse variance sigma_t^2 of p(x_{t-1} | x_t).

    * FIXED_SMALL: beta-tilde_t, with index 0's (zero) value replaced by index 1's (the schedule's
      ``posterior_log_variance_clipped``, as improved-diffusion).
    * FIXED_LARGE: beta_t at every index, index 0 included (DDPM: sigma_1^2 = beta_1).
      improved-diffusion uses beta-tilde_1 at index 0 instead; we keep DDPM's value so that the
      two fixed variances are exactly the ends (v = -1, +1) of LEARNED_RANGE, and because it is
      the right decoder variance for continuous data (see likelihood.gaussian_vlb_terms).
    * LEARNED_RANGE: log sigma^2 = f log beta_t + (1 - f) log beta-tilde_t (clipped), f = (v + 1) /
    2
      from the network's extra output v, nominally in [-1, 1] (improved DDPM eq. 15).
    """

    FIXED_SMALL = "fixed_small"
    FIXED_LARGE = "fixed_large"
    LEARNED_RANGE = "learned_range"

    def log_variance(
        self,
        schedule: NoiseSchedule,
        t: torch.Tensor,
        x: torch.Tensor,
        v: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log sigma_t^2: [N, 1, ..., 1] like ``x`` for fixed variances, like ``v`` if learned."""
        small = schedule.coef("posterior_log_variance_clipped", t, x)
        if self is VarianceType.FIXED_SMALL:
            return small
        large = torch.log(schedule.coef("betas", t, x))
        if self is VarianceType.FIXED_LARGE:
            return large
        if v is None:
            raise ValueError("learned_range variance needs the model's interpolation output v")
        frac = (v + 1.0) / 2.0
        return frac * large + (1.0 - frac) * small


class Decoder(_Parse):
    """The L_0 decoder p(x_0 | x_1) = N(mean, sigma_1^2) read as
    * DISCRETIZED: the probability of x_0's 8-bit bin on [-1, 1] (DDPM eq. 13), so L_0 >= 0;
    * GAUSSIAN: the density at x_0, for continuous data (L_0 may be negative; the bound is then
      on the differential entropy, i.e. it is a negative log-density, not a code length)."""

    DISCRETIZED = "discretized"
    GAUSSIAN = "gaussian"

    def log_likelihood(self, x0: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor):
        """Elementwise log p(x0 | mean, exp(log_var)) in nats."""
        if self is Decoder.DISCRETIZED:
            return discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
        return -0.5 * (math.log(2 * math.pi) + log_var + (x0 - mean) ** 2 * torch.exp(-log_var))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dims: [N x ...] -> [N]."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise in nats (broadcasting):
    1/2 [logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^-logvar2 - 1]."""
    ref = next(a for a in (mean1, logvar1, mean2, logvar2) if torch.is_tensor(a))
    lv1, lv2 = (torch.as_tensor(v, dtype=ref.dtype, device=ref.device) for v in (logvar1, logvar2))
    return 0.5 * (lv2 - lv1 + torch.exp(lv1 - lv2) + (mean1 - mean2) ** 2 * torch.exp(-lv2) - 1.0)


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 - e^d) for d <= 0, accurate at both ends (Maechler 2012)."""
    return torch.where(d > -_LN2, torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def _log_ndtr_diff(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for lo < hi, without cancellation in either tail."""
    flip = lo > 0  # upper tail: Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)
    lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_hi = torch.special.log_ndtr(hi)
    d = torch.special.log_ndtr(lo) - log_hi
    exact = log_hi + _log1mexp(d.clamp(max=0.0))
    # bins so narrow that the two CDFs round to the same value: midpoint rule
    mid = 0.5 * (lo + hi)
    narrow = -0.5 * mid**2 - 0.5 * math.log(2 * math.pi) + torch.log(hi - lo)
    return torch.where(d < 0, exact, narrow)


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log P(bin of x) under N(means, exp(log_scales)^2), elementwise in nats (DDPM eq. 13).

    x: 8-bit data scaled to [-1, 1] (values -1 + 2k/255); each value owns the bin
    [x - 1/255, x + 1/255], except that the bins of -1 and +1 extend to -inf and +inf, so the
    256 bin probabilities sum to 1.  Tails use log_ndtr, so the result is finite far out.
    """
    if x.shape != means.shape:
        raise ValueError(f"x and means shapes differ: {tuple(x.shape)} vs {tuple(means.shape)}")
    if x.numel() and (float(x.min()) < -1.0 or float(x.max()) > 1.0):
        raise ValueError("discretized likelihood needs x in [-1, 1] (8-bit data)")
    inv_std = torch.exp(-log_scales)
    lower = inv_std * (x - means - _HALF_BIN)
    upper = inv_std * (x - means + _HALF_BIN)
    log_cdf_upper = torch.special.log_ndtr(upper)  # bin of -1: (-inf, -1 + 1/255]
    log_sf_lower = torch.special.log_ndtr(-lower)  # bin of +1: [1 - 1/255, inf)
    mid = _log_ndtr_diff(lower, upper)
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, mid))


def vlb_terms(
    schedule: NoiseSchedule,
    model_mean: torch.Tensor,
    model_log_var: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    decoder: Decoder | str = Decoder.DISCRETIZED,
) -> torch.Tensor:
    """The bound's term at each example's index t, in bits per dim, [N].

    t > 0: L_{t-1} = KL(q(x_{t-1} | x_t, x0) || N(model_mean, e^model_log_var)) (DDPM eq. 5);
    t = 0: L_0 = -log p(x0 | x_1), the decoder with mean ``model_mean`` (``decoder``).
    model_mean, x0, x_t: [N x ...]; model_log_var broadcastable to them; t: [N] long.
    """
    if model_mean.shape != x0.shape:
        raise ValueError(
            f"model_mean shape {tuple(model_mean.shape)} != x0 shape {tuple(x0.shape)}"
        )
    decoder = Decoder.parse(decoder)
    true_mean, _, true_log_var = q_posterior(schedule, x0, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / _LN2
    nll = -mean_flat(decoder.log_likelihood(x0, model_mean, model_log_var.expand_as(x0))) / _LN2
    return torch.where(t.to(kl.device) == 0, nll, kl)


def prior_bpd(schedule: NoiseSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_{T-1} | x0) || N(0, I)) in bits per dim, [N].  No parameters: near 0 for a
    schedule that ends near alpha_bar = 0 (and exactly 0 with zero terminal SNR)."""
    t = torch.full((x0.shape[0],), schedule.T - 1, dtype=torch.long, device=x0.device)
    mean, var = q_mean_var(schedule, x0, t)
    zero = torch.zeros((), dtype=x0.dtype, device=x0.device)
    return mean_flat(normal_kl(mean, torch.log(var), zero, zero)) / _LN2


def split_output(output: torch.Tensor, x_t: torch.Tensor, variance: VarianceType):
    """(prediction, v) from a model output: LEARNED_RANGE outputs carry 2C channels on dim 1,
    the prediction then v; fixed variances have output shaped like x_t and v = None."""
    if variance is VarianceType.LEARNED_RANGE:
        c = x_t.shape[1]
        if output.shape != (x_t.shape[0], 2 * c, *x_t.shape[2:]):
            raise ValueError(
                f"learned_range model output must have {2 * c} channels on dim 1 (shape "
                f"{(x_t.shape[0], 2 * c, *x_t.shape[2:])}), got {tuple(output.shape)}"
            )
        return output[:, :c], output[:, c:]
    if output.shape != x_t.shape:
        raise ValueError(
            f"model output shape {tuple(output.shape)} != x_t shape {tuple(x_t.shape)}"
        )
    return output, None


def check_batch(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor) -> None:
    """ValueError unless x0 is a floating [N x ...] batch and t a [N] integer tensor in 0..T-1."""
    check_x0(x0)
    if not torch.is_tensor(t) or t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"t must be an integer tensor, got {getattr(t, 'dtype', type(t))}")
    if t.shape != (x0.shape[0],):
        raise ValueError(f"t must have shape [{x0.shape[0]}], got {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= schedule.T):
        raise ValueError(f"t holds indices outside 0..{schedule.T - 1}")


def training_losses(
    model,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    *,
    prediction: Prediction | str = Prediction.EPS,
    loss_type: LossType | str = LossType.SIMPLE,
    variance: VarianceType | str = VarianceType.FIXED_SMALL,
    decoder: Decoder | str = Decoder.DISCRETIZED,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    vlb_weight: float = 1e-3,
) -> dict[str, torch.Tensor]:
    """Per-example losses [N] for ``model(x_t, t) -> output`` at x_t = a x0 + s noise.

    Returns ``mse`` (mean over dims of (target - prediction)^2, DDPM eq. 14 for EPS) and, for VLB
    and HYBRID, ``vb`` = L_t in bits/dim (:func:`vlb_terms`, the model mean being the posterior
    mean at x0_hat).  ``loss`` is: SIMPLE: mse; VLB: T * vb (unbiased for sum_t L_t under uniform
    t); HYBRID: mse + vlb_weight * T * vb with the mean detached in vb, so vb trains only a
    learned variance (improved DDPM eq. 16, lambda = 1e-3; equal to improved-diffusion's
    rescaled MSE at T = 1000).  The caller weights (e.g. by a sampler's weights) and reduces.
    ``noise`` defaults to standard normal draws from ``generator``.
    """
    prediction, loss_type = Prediction.parse(prediction), LossType.parse(loss_type)
    variance = VarianceType.parse(variance)
    check_batch(schedule, x0, t)
    if loss_type is LossType.SIMPLE and variance is VarianceType.LEARNED_RANGE:
        raise ValueError(
            "loss 'simple' trains no variance; use 'hybrid' or 'vlb' with learned_range"
        )
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    elif noise.shape != x0.shape or noise.dtype != x0.dtype:
        raise ValueError(
            f"noise must match x0 {tuple(x0.shape)} {x0.dtype}, "
            f"got {tuple(noise.shape)} {noise.dtype}"
        )
    x_t = q_sample(schedule, x0, t, noise)
    pred, v = split_output(model(x_t, t), x_t, variance)
    a = schedule.coef("sqrt_alphas_cumprod", t, x0)
    s = schedule.coef("sqrt_one_minus_alphas_cumprod", t, x0)
    terms = {"mse": mean_flat((prediction.target(x0, noise, a, s) - pred) ** 2)}
    if loss_type is LossType.SIMPLE:
        terms["loss"] = terms["mse"]
        return terms
    frozen = pred.detach() if loss_type is LossType.HYBRID else pred
    _, x0_hat = prediction.to_eps_x0(frozen, x_t, a, s)
    mean, _, _ = q_posterior(schedule, x0_hat, x_t, t)
    log_var = variance.log_variance(schedule, t, x_t, v)
    terms["vb"] = vlb_terms(schedule, mean, log_var, x0, x_t, t, decoder=decoder)
    if loss_type is LossType.VLB:
        terms["loss"] = schedule.T * terms["vb"]
    else:
        terms["loss"] = terms["mse"] + vlb_weight * schedule.T * terms["vb"]
    return terms
