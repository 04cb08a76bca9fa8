"""eps / x0 / v parameterizations: exact round trips, training targets, and the score."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddkit.diffusion.parameterization import Prediction, eps_to_x0, score_from_eps, x0_to_eps
from ddkit.diffusion.schedule import NoiseSchedule
from ddkit.verify.oracle import GaussianMixture


def _random_case(seed: int, n: int = 64, shape=(3, 4)):
    """x0, eps and per-example (a, s) with a^2 + s^2 = 1, a in [0.02, 0.9998], float64."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    eps = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    ab = torch.rand(n, generator=g, dtype=torch.float64) * (0.9996 - 0.0004) + 0.0004
    a = ab.sqrt().reshape(-1, *[1] * len(shape))
    s = (1.0 - ab).sqrt().reshape(-1, *[1] * len(shape))
    return x0, eps, a, s


def _close(actual, expected, tol=1e-12):
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eps_x0_v_round_trips(seed):
    x0, eps, a, s = _random_case(seed)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(a), rtol=0, atol=1e-15)
    x_t = a * x0 + s * eps
    v = a * eps - s * x0
    # eps <-> x0
    _close(eps_to_x0(eps, x_t, a, s), x0, tol=1e-10)  # divides by a >= 0.02
    _close(x0_to_eps(x0, x_t, a, s), eps, tol=1e-10)  # divides by s >= 0.02
    _close(x0_to_eps(eps_to_x0(eps, x_t, a, s), x_t, a, s), eps, tol=1e-10)
    # v -> (eps, x0): a rotation, no division
    e_v, x_v = Prediction.V.to_eps_x0(v, x_t, a, s)
    _close(e_v, eps)
    _close(x_v, x0)
    # (eps, x0) -> v -> (eps, x0)
    v2 = Prediction.V.target(x0, eps, a, s)
    _close(v2, v)
    # x_t and v are an orthogonal rotation of (x0, eps): norms are preserved
    _close(x_t**2 + v**2, x0**2 + eps**2)


@pytest.mark.parametrize("pred", list(Prediction))
@pytest.mark.parametrize("seed", [0, 5])
def test_target_fed_back_recovers_eps_and_x0(pred, seed):
    x0, eps, a, s = _random_case(seed)
    x_t = a * x0 + s * eps
    out = pred.target(x0, eps, a, s)
    eps_hat, x0_hat = pred.to_eps_x0(out, x_t, a, s)
    _close(eps_hat, eps, tol=1e-10)
    _close(x0_hat, x0, tol=1e-10)


@pytest.mark.parametrize("pred", list(Prediction))
def test_to_eps_x0_is_consistent_with_x_t(pred):
    """Whatever the network outputs, the pair (eps, x0) satisfies x_t = a x0 + s eps."""
    x0, eps, a, s = _random_case(9)
    x_t = a * x0 + s * eps
    out = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(1), dtype=x_t.dtype)
    e, x = pred.to_eps_x0(out, x_t, a, s)
    _close(a * x + s * e, x_t, tol=1e-10)


def test_scalar_coefficients_work():
    a = math.sqrt(0.3)
    s = math.sqrt(0.7)
    x0 = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    eps = torch.tensor([[2.0, 0.25]], dtype=torch.float64)
    x_t = a * x0 + s * eps
    for pred in Prediction:
        e, x = pred.to_eps_x0(pred.target(x0, eps, a, s), x_t, a, s)
        _close(e, eps)
        _close(x, x0)


@pytest.mark.parametrize("ab", [0.999, 0.7, 0.2, 0.01])
def test_score_is_the_analytic_gaussian_score(ab):
    """For x0 ~ N(m, S), x_t ~ N(a m, C) with C = a^2 S + s^2 I, so grad log p = -C^{-1}(x - a m).
    The oracle's exact eps, turned into a score by -eps / s, must equal it."""
    m = np.array([0.4, -1.0, 0.3])
    L = np.array([[0.5, 0.0, 0.0], [0.2, 0.3, 0.0], [-0.1, 0.25, 0.2]])
    S = L @ L.T
    gm = GaussianMixture([1.0], [m], [S])
    T = 1000
    sched = NoiseSchedule.make("linear", T)
    t = int(np.abs(sched.alphas_cumprod - ab).argmin())
    ab = float(sched.alphas_cumprod[t])
    a, s = math.sqrt(ab), math.sqrt(1.0 - ab)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64) * 2
    eps, _ = gm.denoiser(sched)(x, t)
    score = score_from_eps(eps, s)
    C = torch.tensor(a * a * S + s * s * np.eye(3))
    expected = -torch.linalg.solve(C, (x - a * torch.tensor(m)).T).T
    _close(score, expected, tol=1e-9)


def test_parse():
    assert Prediction.parse("eps") is Prediction.EPS
    assert Prediction.parse("x0") is Prediction.X0
    assert Prediction.parse("v") is Prediction.V
    assert Prediction.parse(Prediction.V) is Prediction.V
    for bad in ("bad", "EPS", "", "epsilon"):
        with pytest.raises(ValueError) as err:
            Prediction.parse(bad)
        msg = str(err.value)
        assert repr(bad) in msg
        for allowed in ("eps", "x0", "v"):
            assert allowed in msg
