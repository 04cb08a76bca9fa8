"""Two-dimensional toy distributions, drawn with a seeded ``numpy.random.Generator``.

Every generator returns float64 [n, 2] with all values in [-1, 1].  The scalings below put the
bulk of each distribution inside [-0.95, 0.95]; Gaussian noise tails that would cross the border
are clipped to it: every set keeps at least 5 noise standard deviations between its noiseless
support and the border, so clipping touches fewer than 1e-6 of the points.

=============  ==============================================================================
swiss_roll     the 2-D swiss roll (the (x, z) plane of the usual 3-D one): angle
               t = 1.5 pi (1 + 2u), u ~ U(0, 1) (1.5 turns), point (t cos t, t sin t)
               + N(0, 0.3^2 I), all divided by 16 (max radius 4.5 pi / 16 = 0.88; the border
               is more than 6 noise std away).
spiral         the spiral of Sohl-Dickstein et al. 2015, Fig. 1 (a 2-D swiss-roll-like curve
               starting at the centre; the paper gives no generator, these parameters are ours):
               angle theta = 3 pi sqrt(u) (about uniform along the curve), radius
               0.9 theta / (3 pi), point r (cos theta, sin theta) + N(0, 0.02^2 I) (5 std from
               the border).
8gaussians     equal mixture of 8 isotropic Gaussians, std 0.06, centred on the circle of radius
               0.7 at angles k pi / 4 (the border is 5 std away from every centre).
moons          two interleaved half circles (after scikit-learn's make_moons): upper
               (cos a, sin a), lower (1 - cos a, 0.5 - sin a), a ~ U(0, pi), + N(0, 0.05^2 I),
               shifted by (-0.5, -0.25) and divided by 1.8 (curves within [-0.84, 0.84], 6 noise
               std from the border).
checkerboard   uniform on the 8 black squares of a 4 x 4 board covering [-1, 1]^2 (square
               (i, j), i, j = 0..3, is black iff i + j is even); exactly inside [-1, 1].
=============  ==============================================================================

Three toys have components, which are their class labels (:func:`toy_labels`): 8gaussians (the
Gaussian, 0..7 counter-clockwise from angle 0), moons (0 upper, 1 lower) and checkerboard (the
black square, 0..7 in row-major order of (i, j)).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["TOY_CLASSES", "TOYS", "make_toy", "toy_labels"]

TOY_CLASSES = {"8gaussians": 8, "moons": 2, "checkerboard": 8}  # toys with components


def _swiss_roll(n: int, rng: np.random.Generator) -> np.ndarray:
    t = 1.5 * math.pi * (1.0 + 2.0 * rng.random(n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + 0.3 * rng.standard_normal((n, 2))
    return x / 16.0


def _spiral(n: int, rng: np.random.Generator) -> np.ndarray:
    theta_max = 3.0 * math.pi
    theta = theta_max * np.sqrt(rng.random(n))
    r = 0.9 * theta / theta_max
    x = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return x + 0.02 * rng.standard_normal((n, 2))


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    k = rng.integers(0, 8, size=n)
    angle = k * (math.pi / 4.0)
    centres = 0.7 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return centres + 0.06 * rng.standard_normal((n, 2)), k


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    a = math.pi * rng.random(n)
    lower = rng.random(n) < 0.5
    x = np.where(lower, 1.0 - np.cos(a), np.cos(a))
    y = np.where(lower, 0.5 - np.sin(a), np.sin(a))
    pts = np.stack([x, y], axis=1) + 0.05 * rng.standard_normal((n, 2))
    return (pts - np.array([0.5, 0.25])) / 1.8, lower.astype(np.int64)


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    black = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], float)
    k = rng.integers(0, len(black), size=n)
    return -1.0 + 0.5 * (black[k] + rng.random((n, 2))), k


# name -> generator of points [n, 2] (or (points, component labels [n]) for the labelled toys)
TOYS: dict[str, Callable] = {
    "swiss_roll": _swiss_roll,
    "spiral": _spiral,
    "8gaussians": _eight_gaussians,
    "moons": _moons,
    "checkerboard": _checkerboard,
}


def toy_labels(name: str, n: int, rng: np.random.Generator):
    """(points float64 [n, 2] in [-1, 1], component labels int64 [n] or None): the toy
    ``name`` with its components as classes where it has them (``TOY_CLASSES``)."""
    if name not in TOYS:
        raise KeyError(f"unknown toy {name!r}; one of {', '.join(TOYS)}")
    out = TOYS[name](n, rng)
    points, labels = out if isinstance(out, tuple) else (out, None)
    return np.clip(points, -1.0, 1.0), labels


def make_toy(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points of the toy ``name`` as float64 [n, 2] in [-1, 1] (tails clipped to the border)."""
    return toy_labels(name, n, rng)[0]
