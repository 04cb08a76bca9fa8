"""A family of test distributions for samplers: Gaussian mixtures that differ in what makes
few-step sampling hard, each with its exact denoiser (:mod:`ddkit.verify.oracle`).

The members span mode widths from 0.01 to 0.5 of the spread of the modes, dimensions 2 to 256,
2 to 64 components with unequal weights, isotropic and low-rank-plus-diagonal covariances, and
heavy-tailed members (Gaussian scale mixtures: components of many widths around a few centres).
They are split, by fixed seeds, into a tuning set, on which sampler defaults may be chosen, and
a held-out set, on which they are reported: a default tuned on one distribution must hold on
distributions it was not tuned on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .oracle import GaussianMixture

SPREAD = 0.5
"""Standard deviation of each coordinate of the component means: the data's scale, about that
of images in [-1, 1]."""

COVARIANCES = ("isotropic", "lowrank", "scales")


@dataclass(frozen=True)
class Member:
    """One mixture of the family, made deterministically from its fields by :meth:`build`.

    ``width``: each mode's standard deviation as a fraction of ``SPREAD`` (for ``scales``, the
    narrowest; the widest is ``SPREAD`` itself).  ``covariance``: ``isotropic`` (s_k^2 I, s_k
    within a factor 2 of the width), ``lowrank`` (U_k U_k^T + diag, rank min(4, d - 1) factors
    of 2x the width over a diagonal of 0.2-0.6x), or ``scales`` (isotropic widths spread
    log-uniformly from ``width`` to 1 around max(1, K // 8) centres, the narrow ones heavier:
    a heavy-tailed mixture)."""

    dim: int
    components: int
    width: float
    covariance: str
    seed: int

    @property
    def name(self) -> str:
        """A short label: covariance, d, K, width and seed."""
        return f"{self.covariance}-d{self.dim}-k{self.components}-w{self.width:g}-s{self.seed}"

    def build(self) -> GaussianMixture:
        """The mixture (float64), the same on every machine for the same fields."""
        if self.covariance not in COVARIANCES:
            raise ValueError(f"covariance {self.covariance!r}; allowed: {', '.join(COVARIANCES)}")
        if self.dim < 2 or self.components < 1 or not 0 < self.width <= 1:
            raise ValueError(f"member {self.name}: needs d >= 2, K >= 1 and width in (0, 1]")
        rng = np.random.default_rng(self.seed)
        d, k = self.dim, self.components
        std = self.width * SPREAD
        if self.covariance == "scales":
            centres = rng.normal(0.0, SPREAD, size=(max(1, k // 8), d))
            means = centres[rng.integers(0, len(centres), size=k)]
            stds = std * (1.0 / self.width) ** np.linspace(0.0, 1.0, k)  # width .. 1 of SPREAD
            weights = 1.0 / np.sqrt(stds)  # the narrow modes heavier: heavy tails
            covs = stds[:, None, None] ** 2 * np.eye(d)[None]
        else:
            means = rng.normal(0.0, SPREAD, size=(k, d))
            weights = rng.dirichlet(np.full(k, 1.0))
            if self.covariance == "isotropic":
                stds = std * np.exp(rng.uniform(-math.log(2), math.log(2), size=k))
                covs = stds[:, None, None] ** 2 * np.eye(d)[None]
            else:
                rank = min(4, d - 1)
                covs = np.stack([_lowrank(rng, d, rank, std) for _ in range(k)])
        weights = np.maximum(weights / weights.sum(), 0.2 / k)  # no mode is nearly empty
        return GaussianMixture(weights / weights.sum(), means, covs)


def _lowrank(rng: np.random.Generator, d: int, rank: int, std: float) -> np.ndarray:
    """U U^T + diag(v): ``rank`` random directions of standard deviation about 2 ``std`` over a
    diagonal of 0.2-0.6 ``std``."""
    u = rng.normal(size=(d, rank))
    u *= 2.0 * std / np.linalg.norm(u, axis=0, keepdims=True)  # each factor 2 std long
    diag = (std * rng.uniform(0.2, 0.6, size=d)) ** 2
    return u @ u.T + np.diag(diag)


TUNING: tuple[Member, ...] = (
    Member(2, 5, 0.1, "isotropic", 1),
    Member(2, 8, 0.03, "lowrank", 2),
    Member(8, 4, 0.2, "isotropic", 3),
    Member(16, 16, 0.05, "lowrank", 4),
    Member(32, 2, 0.5, "isotropic", 5),
    Member(64, 4, 0.1, "lowrank", 6),
    Member(128, 8, 0.02, "isotropic", 7),
    Member(256, 4, 0.1, "lowrank", 8),
    Member(2, 16, 0.01, "scales", 9),
    Member(32, 24, 0.02, "scales", 10),
)
"""Where sampler defaults may be chosen."""

HELD_OUT: tuple[Member, ...] = (
    Member(2, 3, 0.05, "lowrank", 101),
    Member(2, 32, 0.02, "isotropic", 102),
    Member(4, 8, 0.3, "lowrank", 103),
    Member(8, 64, 0.1, "isotropic", 104),
    Member(16, 4, 0.01, "isotropic", 105),
    Member(32, 16, 0.1, "lowrank", 106),
    Member(64, 8, 0.05, "lowrank", 107),
    Member(128, 2, 0.2, "isotropic", 108),
    Member(256, 16, 0.03, "lowrank", 109),
    Member(8, 12, 0.01, "scales", 110),
    Member(64, 32, 0.03, "scales", 111),
)
"""Where they are reported: never used to choose anything."""

SPLITS = {"tuning": TUNING, "held_out": HELD_OUT}


def members(split: str) -> tuple[Member, ...]:
    """The members of ``split`` ("tuning" or "held_out"); ValueError otherwise."""
    if split not in SPLITS:
        raise ValueError(f"family split {split!r}; allowed: {', '.join(SPLITS)}")
    return SPLITS[split]
