"""Noise schedules and timestep selection.

Notation (DDPM, Ho et al. 2020): ``beta_t`` is the variance of the one-step transition
q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I); ``alpha_t = 1 - beta_t``;
``alpha_bar_t = prod_{s<=t} alpha_s`` so that q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0,
(1 - alpha_bar_t) I) (eq. 4).  DDIM (Song et al. 2021) writes ``alpha`` for what DDPM calls
``alpha_bar``; this package always uses the DDPM names.

Timesteps are integer indices ``t in {0, ..., T-1}``; index 0 is the paper's t = 1.  The index
``-1`` (``DATA``) stands for the clean data x_0, where alpha_bar = 1: it is the target of the last
step of every sampler and is defined here, once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

DATA = -1
"""The index of clean data x_0 (alpha_bar = 1); the step after a sampler's last timestep."""

SCHEDULES = ("linear", "cosine")
SPACINGS = (
    "leading",
    "trailing",
    "linspace",
    "quadratic",
    "ddim_quadratic",
    "log_snr",
    "log_snr_window",
)

LOG_SNR_WINDOW = -4.0
"""The log-SNR to which the first step of ``"log_snr_window"`` spacing jumps: chosen, with the
few-step sampler, on the tuning family of test mixtures (``benchmarks/family_defaults.py``)."""

_DEFAULT_T = 1000


def _check_T(T: int) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"number of diffusion steps T={T!r} must be an integer >= 1")
    return int(T)


def linear_betas(
    T: int = _DEFAULT_T, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """The DDPM linear schedule, beta from ``beta_start`` to ``beta_end`` for T = 1000.

    For another T both ends are scaled by 1000 / T (improved-DDPM convention), so that
    sum(beta) -- and with it alpha_bar as a function of t / T -- stays that of the same
    continuous VP process.  T below 21 would need beta >= 1 and is refused.
    """
    T = _check_T(T)
    scale = _DEFAULT_T / T
    lo, hi = beta_start * scale, beta_end * scale
    if not (0.0 < lo <= hi < 1.0):
        raise ValueError(
            f"linear schedule with T={T} gives beta in [{lo:.4g}, {hi:.4g}]; betas must lie in "
            f"(0, 1): use T >= {math.floor(beta_end * _DEFAULT_T) + 1} or the cosine schedule"
        )
    return np.linspace(lo, hi, T, dtype=np.float64)


def cosine_betas(T: int = _DEFAULT_T, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal (2021) eq. 17: alpha_bar(t) = f(t)/f(0),
    f(t) = cos^2((t/T + s)/(1 + s) pi/2).

    beta_t = 1 - alpha_bar(t+1)/alpha_bar(t), clipped at ``max_beta`` as in the paper.
    """
    T = _check_T(T)
    u = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. (2024) Algorithm 1: shift and scale sqrt(alpha_bar) so that the last one is
    exactly 0 (zero terminal SNR) and the first is unchanged.  The last beta becomes 1."""
    sqrt_ab = np.sqrt(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


def make_betas(name: str, T: int = _DEFAULT_T) -> np.ndarray:
    """Betas of a named schedule: one of ``SCHEDULES``."""
    if name == "linear":
        return linear_betas(T)
    if name == "cosine":
        return cosine_betas(T)
    raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Every coefficient of the forward process and its posterior, computed once in float64.

    Arrays are float64 numpy arrays of length T indexed by t in {0..T-1}.  Use ``coef(name, t, x)``
    to gather a coefficient per example as a tensor broadcastable against ``x``.
    """

    betas: np.ndarray
    name: str = "custom"
    zero_terminal_snr: bool = False
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        b = np.asarray(self.betas, dtype=np.float64)
        if b.ndim != 1 or b.size < 1:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {b.shape}")
        if not np.all(np.isfinite(b)) or np.any(b <= 0) or np.any(b > 1):
            raise ValueError("betas must be finite and lie in (0, 1]")
        if np.any(b[:-1] >= 1):
            raise ValueError("only the last beta may equal 1 (zero terminal SNR)")
        object.__setattr__(self, "betas", b)
        T = b.size
        alphas = 1.0 - b
        ab = np.cumprod(alphas)
        if b[-1] == 1.0:
            ab[-1] = 0.0
        ab_prev = np.concatenate([[1.0], ab[:-1]])
        d = {
            "alphas": alphas,
            "alphas_cumprod": ab,
            "alphas_cumprod_prev": ab_prev,
            "sqrt_alphas_cumprod": np.sqrt(ab),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ab),
            # posterior q(x_{t-1} | x_t, x_0), DDPM eqs. 6-7
            "posterior_variance": b * (1.0 - ab_prev) / (1.0 - ab),
            "posterior_mean_coef1": np.sqrt(ab_prev) * b / (1.0 - ab),
            "posterior_mean_coef2": np.sqrt(alphas) * (1.0 - ab_prev) / (1.0 - ab),
        }
        pv = d["posterior_variance"]
        # log of beta-tilde with its first entry (0 at t=0) replaced by the next one, as in
        # improved-diffusion: the t=0 term is the decoder, never a Gaussian KL.
        first = pv[1] if T > 1 else b[0]
        d["posterior_log_variance_clipped"] = np.log(np.concatenate([[first], pv[1:]]))
        with np.errstate(divide="ignore"):
            d["log_snr"] = np.log(ab) - np.log1p(-ab)
        for k, v in d.items():
            v.setflags(write=False)
            object.__setattr__(self, k, v)
        b.setflags(write=False)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def make(cls, name: str = "linear", T: int = _DEFAULT_T, *, zero_terminal_snr: bool = False):
        """Schedule ``name`` (:func:`make_betas`) with T steps, optionally at zero terminal SNR."""
        betas = make_betas(name, T)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas, name=name, zero_terminal_snr=zero_terminal_snr)

    @property
    def T(self) -> int:
        """The number of timesteps, len(betas)."""
        return int(self.betas.size)

    # -- scalar access (samplers) -----------------------------------------------------------
    def alpha_bar(self, t: int) -> float:
        """alpha_bar at index t as a Python float; ``alpha_bar(DATA) == 1``."""
        t = int(t)
        if t == DATA:
            return 1.0
        if not 0 <= t < self.T:
            raise ValueError(f"timestep {t} outside 0..{self.T - 1} (or {DATA} for the data)")
        return float(self.alphas_cumprod[t])

    # -- per-example access (training, losses) -------------------------------------------------
    def coef(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``name``'s value at each t of a [N] index tensor, shaped [N, 1, ..., 1] like ``x``
        and in x's dtype; computed in float64 then cast.  Tables are cached per device."""
        key = (name, x.device)
        table = self._cache.get(key)
        if table is None:
            table = torch.tensor(np.asarray(getattr(self, name)), device=x.device)
            self._cache[key] = table
        out = table[t.to(x.device).long()]
        return out.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    def timesteps(
        self,
        n: int,
        spacing: str | Sequence[int] = "leading",
        t_max: int | None = None,
        *,
        min_log_snr: float | None = None,
        rho: float = 1.0,
    ) -> list[int]:
        """See :func:`timesteps`; log-SNR spacing uses this schedule."""
        return timesteps(
            self.T, n, spacing, t_max=t_max, log_snr=self.log_snr, min_log_snr=min_log_snr, rho=rho
        )


def _strictly_increasing(raw: np.ndarray, t_max: int) -> list[int]:
    """Make rounded, nondecreasing indices in [0, t_max] strictly increasing with both ends kept,
    moving only as far as needed: each index at least one above the previous and leaving room
    for those after it."""
    n = raw.size
    out = np.empty(n, dtype=np.int64)
    prev = -1
    for i, v in enumerate(raw):
        v = max(int(v), prev + 1)
        v = min(v, t_max - (n - 1 - i))
        out[i] = v
        prev = v
    return out.tolist()


def _listed(values: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def check_index_list(seq: Sequence[int], T: int) -> None:
    """Raise ValueError naming the offending values if integer indices ``seq`` has entries
    outside 0..T-1 or repeated entries."""
    outside = [s for s in seq if not 0 <= s < T]
    if outside:
        raise ValueError(f"timestep list has values outside 0..{T - 1}: {_listed(outside)}")
    seen: set[int] = set()
    repeated = sorted({s for s in seq if s in seen or seen.add(s)}, reverse=True)
    if repeated:
        raise ValueError(f"timestep list repeats the indices {_listed(repeated)}")


def max_steps(T: int, spacing: str, *, t_max: int | None = None) -> int:
    """The largest ``n`` that :func:`timesteps` accepts for this spacing: t_max + 1, or for
    ``"ddim_quadratic"`` (which ends at 0.8 (t_max + 1)) that end + 1."""
    span = T if t_max is None else t_max + 1
    return math.floor(0.8 * span + 1e-9) + 1 if spacing == "ddim_quadratic" else span


def timesteps(
    T: int,
    n: int,
    spacing: str | Sequence[int] = "leading",
    *,
    t_max: int | None = None,
    log_snr: np.ndarray | None = None,
    min_log_snr: float | None = None,
    rho: float = 1.0,
) -> list[int]:
    """An explicit decreasing list of ``n`` distinct timestep indices in [0, t_max].

    spacing:
      * ``"leading"`` (DDIM's "uniform"): ``k * c`` for k = 0..n-1 with stride c = (t_max+1)//n;
        the first step is at (n-1) c, not necessarily t_max.
      * ``"trailing"``: ``round(t_max + 1 - k (t_max+1)/n) - 1``, starts at t_max.
      * ``"linspace"``: n points rounded from [0, t_max], both ends included (n=1 gives [t_max]).
      * ``"quadratic"``: DDIM paper sec. D.2, ``c k^2`` from 0 to t_max, made distinct.
      * ``"ddim_quadratic"``: the quadratic selection of the DDIM authors' code, which produced
        the paper's CIFAR-10 results: ``floor((k sqrt(0.8 span) / (n - 1))^2)`` in float64 as
        the code computes it, with span = t_max + 1, so the first step is at 0.8 span (800 for
        T = 1000) and the chain starts from N(0, I) there; made distinct (the code repeats
        indices near 0 from n = 30 on).
      * ``"log_snr"``: uniform in log-SNR between t_max and 0 (needs ``log_snr``, the schedule's).
        With ``min_log_snr``, the first step goes from t_max straight to the log-SNR
        ``min_log_snr`` and the other n - 1 are uniform in log-SNR above it.  Where the
        denoiser's x0 estimate is nearly the data mean (below a log-SNR of about -4 for data of
        few dimensions), a first-order exponential-integrator step (DDIM, DPM-Solver++) is
        already exact and steps spent there are wasted.  In many dimensions modes separate at
        a lower SNR (two modes' log-likelihood ratio grows as the SNR times their squared
        distance, which grows with d), and the jump then sends some samples to other modes:
        an error that steps after it do not remove (BENCHMARKS.md, "Few-step sampling on a
        family of test mixtures").  ``rho`` > 1 packs the uniform part toward the data: the
        k-th of m points from the data end sits at log-SNR lam_0 - (lam_0 - lo) (k / (m - 1))^rho
        (lam_0 the log-SNR at index 0, lo at t_max or ``min_log_snr``); ``rho`` = 1 is uniform.
      * ``"log_snr_window"``: ``"log_snr"`` with ``min_log_snr`` = ``LOG_SNR_WINDOW`` (unless
        given).
      * a sequence of ints: used as given (validated, sorted decreasing); ``n`` must match its
      length.
    """
    T = _check_T(T)
    t_max = T - 1 if t_max is None else t_max
    if isinstance(t_max, bool) or not isinstance(t_max, (int, np.integer)) or not 0 <= t_max < T:
        raise ValueError(f"t_max={t_max!r} must be an integer in 0..{T - 1}")
    t_max = int(t_max)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho < math.inf:
        raise ValueError(f"rho={rho!r} must be a number > 0 (1: uniform in log-SNR)")
    if rho != 1 and spacing not in ("log_snr", "log_snr_window"):
        raise ValueError(f"rho={rho!r} shapes log_snr spacings, not {spacing!r}")
    if not isinstance(spacing, str):
        seq = list(spacing)
        if not seq:
            raise ValueError("timestep list is empty; give at least one index")
        bad = [s for s in seq if isinstance(s, bool) or not isinstance(s, (int, np.integer))]
        if bad:
            raise ValueError(f"timestep list holds non-integers {bad[:3]!r}")
        seq = [int(s) for s in seq]
        check_index_list(seq, T)
        if n is not None and n != len(seq):
            raise ValueError(f"n={n} does not match the {len(seq)} timesteps given")
        return sorted((int(s) for s in seq), reverse=True)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= t_max + 1:
        raise ValueError(f"number of steps n={n!r} must be an integer in 1..{t_max + 1}")
    n = int(n)
    span = t_max + 1
    if spacing == "leading":
        c = span // n
        seq = [k * c for k in range(n)]
    elif spacing == "trailing":
        k = np.arange(n, dtype=np.float64)
        seq = (np.round(span - k * span / n) - 1).astype(np.int64)[::-1].tolist()
    elif spacing == "linspace":
        seq = [t_max] if n == 1 else np.round(np.linspace(0, t_max, n)).astype(np.int64).tolist()
    elif spacing == "quadratic":
        raw = [t_max] if n == 1 else np.floor(np.linspace(0, math.sqrt(t_max), n) ** 2 + 1e-9)
        seq = _strictly_increasing(np.asarray(raw), t_max)
    elif spacing == "ddim_quadratic":
        top = max_steps(T, spacing, t_max=t_max) - 1
        if n > top + 1:
            raise ValueError(
                f"ddim_quadratic spacing ends at 0.8 x {span} = {top}: n={n} steps is more than "
                f"its {top + 1} indices; use at most {top + 1} or another spacing"
            )
        # as the code computes it, float rounding included (n = 16 gives 511 where 512 is exact)
        raw = [top] if n == 1 else np.floor(np.linspace(0, math.sqrt(0.8 * span), n) ** 2)
        seq = _strictly_increasing(np.asarray(raw), top)
    elif spacing in ("log_snr", "log_snr_window"):
        if spacing == "log_snr_window" and min_log_snr is None:
            min_log_snr = LOG_SNR_WINDOW
        if log_snr is None:
            raise ValueError("log_snr spacing needs the schedule's log-SNR table")
        lam = np.asarray(log_snr[: t_max + 1], dtype=np.float64)
        finite = lam[np.isfinite(lam)]
        lam = np.where(np.isfinite(lam), lam, finite.min() if finite.size else 0.0)
        lo = lam[t_max]
        n_uniform = n
        if min_log_snr is not None and n > 2 and min_log_snr > lo:
            lo, n_uniform = min(float(min_log_snr), lam[1]), n - 1
        if n == 1:
            seq = [t_max]
        else:
            u = np.linspace(0.0, 1.0, n_uniform) ** rho  # 0 at the data end
            targets = lam[0] + (lo - lam[0]) * u  # decreasing log-SNR: increasing in t
            if n_uniform < n:
                targets = np.append(targets, lam[t_max])
            # lam is decreasing in t: nearest index for each target
            idx = np.abs(lam[None, :] - targets[:, None]).argmin(axis=1)
            idx[0], idx[-1] = 0, t_max
            seq = _strictly_increasing(np.maximum.accumulate(idx), t_max)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; allowed: {', '.join(SPACINGS)} or a list")
    return [int(s) for s in reversed(seq)]
