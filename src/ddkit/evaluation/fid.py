"""Fréchet distance of feature statistics (FID, Heusel et al. 2017) and the kernel inception
distance (KID, Bińkowski et al. 2018), in torch and float64.

Both compare two sets of feature vectors [N, d].  Which network made the features decides the
name of the number: Inception-v3 pool features give "FID"; any other network must be named with
it (e.g. "FID (ddkit-fashion_mnist features)").
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch


class FIDWarning(UserWarning):
    """A statistic that is known to be biased (too few samples for the feature dimension)."""


@dataclass(frozen=True)
class FeatureStats:
    """Mean [d] and covariance [d, d] (unbiased, float64) of ``n`` feature vectors."""

    mu: torch.Tensor
    sigma: torch.Tensor
    n: int

    @property
    def dim(self) -> int:
        """The feature dimension d."""
        return self.mu.shape[0]


def _check_features(f: torch.Tensor, name: str = "features") -> torch.Tensor:
    if not torch.is_tensor(f) or f.ndim != 2 or f.shape[0] < 2:
        shape = tuple(f.shape) if torch.is_tensor(f) else type(f).__name__
        raise ValueError(f"{name} must be a [N >= 2, d] tensor, got {shape}")
    f = f.detach().to(torch.float64)
    if not torch.isfinite(f).all():
        raise ValueError(f"{name} hold NaN or infinite values")
    return f


def feature_stats(features: torch.Tensor) -> FeatureStats:
    """Mean and unbiased covariance of [N, d] features; warns (FIDWarning) when N < 2 d, where
    the covariance estimate, and so FID, is strongly biased."""
    f = _check_features(features)
    n, d = f.shape
    if n < 2 * d:
        warnings.warn(
            f"{n} samples for {d}-dimensional features: FID is biased below N = {2 * d} "
            "(use more samples; compare only numbers with the same N)",
            FIDWarning,
            stacklevel=2,
        )
    mu = f.mean(0)
    c = f - mu
    return FeatureStats(mu, c.T @ c / (n - 1), n)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2): the squared 2-Wasserstein
    distance between N(mu_a, S_a) and N(mu_b, S_b).  The matrix square roots are taken by
    symmetric eigendecompositions (exact for PSD matrices; no complex parts to discard)."""
    if a.dim != b.dim:
        raise ValueError(f"feature dimensions differ: {a.dim} vs {b.dim}")
    root_a = _sqrt_psd(a.sigma)
    inner = root_a @ b.sigma @ root_a
    tr_cross = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    diff = a.mu - b.mu
    value = diff @ diff + torch.trace(a.sigma) + torch.trace(b.sigma) - 2 * tr_cross
    return max(float(value), 0.0)


@dataclass(frozen=True)
class KIDResult:
    """KID: mean and std (NaN for one subset) of the unbiased MMD^2 over ``subsets`` random
    subsets of ``subset_size`` features from each set."""

    mean: float
    std: float  # over subsets
    subsets: int
    subset_size: int


def kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> KIDResult:
    """Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over
    ``subsets`` random subsets of ``min(subset_size, N_real, N_fake)`` from each set."""
    x, y = _check_features(real, "real features"), _check_features(fake, "fake features")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    if subsets < 1:
        raise ValueError(f"subsets={subsets} must be >= 1")
    m = min(subset_size, len(x), len(y))
    d = x.shape[1]
    vals = []
    for _ in range(subsets):
        xs = x[torch.randperm(len(x), generator=generator)[:m]]
        ys = y[torch.randperm(len(y), generator=generator)[:m]]
        kxx = (xs @ xs.T / d + 1) ** 3
        kyy = (ys @ ys.T / d + 1) ** 3
        kxy = (xs @ ys.T / d + 1) ** 3
        off = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        vals.append(float(off - 2 * kxy.mean()))
    t = torch.tensor(vals, dtype=torch.float64)
    std = float(t.std()) if subsets > 1 else math.nan
    return KIDResult(float(t.mean()), std, subsets, m)
