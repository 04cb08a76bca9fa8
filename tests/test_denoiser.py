"""The Denoiser adapter: (model, schedule, prediction) -> (eps, x0) at an integer timestep."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddkit.diffusion.denoiser import Denoiser, Estimate
from ddkit.diffusion.parameterization import Prediction
from ddkit.diffusion.schedule import DATA, NoiseSchedule
from ddkit.verify.oracle import GaussianMixture, mixture_2d

T = 1000


def _fixed_output_model(out: torch.Tensor, calls: list | None = None):
    def model(x, t):
        if calls is not None:
            calls.append(t.clone())
        return out

    return model


def _coeffs(schedule, t):
    ab = float(np.prod(1.0 - schedule.betas[: t + 1]))
    return math.sqrt(ab), math.sqrt(1.0 - ab)


@pytest.mark.parametrize("pred", list(Prediction))
@pytest.mark.parametrize("t", [0, 10, 500, 999])
def test_unclipped_output_matches_the_parameterization(pred, t):
    sched = NoiseSchedule.make("linear", T)
    g = torch.Generator().manual_seed(t)
    x_t = torch.randn(6, 2, 3, generator=g, dtype=torch.float64)
    out = torch.randn(6, 2, 3, generator=g, dtype=torch.float64)
    calls = []
    eps, x0 = Denoiser(_fixed_output_model(out, calls), sched, pred)(x_t, t)
    a, s = _coeffs(sched, t)
    if pred is Prediction.EPS:
        exp_eps, exp_x0 = out, (x_t - s * out) / a
    elif pred is Prediction.X0:
        exp_eps, exp_x0 = (x_t - a * out) / s, out
    else:  # v = a eps - s x0 and x_t = a x0 + s eps, inverted by hand
        exp_eps, exp_x0 = s * x_t + a * out, a * x_t - s * out
    np.testing.assert_allclose(eps.numpy(), exp_eps.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(x0.numpy(), exp_x0.numpy(), rtol=1e-10, atol=1e-10)
    # the model sees a [N] long tensor of the timestep
    (t_seen,) = calls
    assert t_seen.dtype == torch.long and t_seen.tolist() == [t] * 6


@pytest.mark.parametrize("pred", list(Prediction))
@pytest.mark.parametrize("t", [0, 50, 500, 999])
def test_clip_clamps_x0_and_keeps_x_t_consistent(pred, t):
    sched = NoiseSchedule.make("linear", T)
    g = torch.Generator().manual_seed(100 + t)
    x_t = 2.0 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    out = 3.0 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    model = _fixed_output_model(out)
    eps_raw, x0_raw = Denoiser(model, sched, pred)(x_t, t)
    eps, x0 = Denoiser(model, sched, pred, clip=(-1.0, 1.0))(x_t, t)
    a, s = _coeffs(sched, t)
    inside = x0_raw.abs() <= 1.0
    assert (~inside).any() and inside.any()  # the test exercises both cases
    assert torch.all(x0.abs() <= 1.0)
    assert torch.equal(x0[inside], x0_raw[inside])
    assert torch.equal(x0[~inside], x0_raw[~inside].sign())
    # eps is recomputed so that x_t = a x0 + s eps still holds
    np.testing.assert_allclose((a * x0 + s * eps).numpy(), x_t.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(eps[inside].numpy(), eps_raw[inside].numpy(), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("clip", [(1.0, -1.0), (0.5, 0.5)])
def test_bad_clip_range_raises(clip):
    with pytest.raises(ValueError, match="clip"):
        Denoiser(_fixed_output_model(torch.zeros(1)), NoiseSchedule.make("linear", T), clip=clip)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_zero_terminal_snr_refuses_eps_prediction(name):
    sched = NoiseSchedule.make(name, T, zero_terminal_snr=True)
    model = _fixed_output_model(torch.zeros(1))
    for pred in (Prediction.EPS, "eps"):
        with pytest.raises(ValueError, match="eps|zero"):
            Denoiser(model, sched, pred)
    for pred in ("x0", "v"):
        Denoiser(model, sched, pred)  # fine


def test_v_prediction_at_zero_terminal_snr_last_step():
    """At alpha_bar = 0: a = 0, s = 1, so x0 = -v and eps = x_t exactly, all finite."""
    sched = NoiseSchedule.make("linear", T, zero_terminal_snr=True)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(8, 4, generator=g, dtype=torch.float64)
    v = torch.randn(8, 4, generator=g, dtype=torch.float64)
    eps, x0 = Denoiser(_fixed_output_model(v), sched, "v")(x_t, T - 1)
    assert torch.all(torch.isfinite(eps)) and torch.all(torch.isfinite(x0))
    assert torch.equal(x0, -v)
    assert torch.equal(eps, x_t)
    eps_c, x0_c = Denoiser(_fixed_output_model(v), sched, "v", clip=(-0.5, 0.5))(x_t, T - 1)
    assert torch.equal(x0_c, (-v).clamp(-0.5, 0.5))
    assert torch.equal(eps_c, x_t)


def test_exact_v_model_at_zero_terminal_snr_predicts_the_data_mean():
    """The Bayes-optimal v-model v = a eps_hat - s x0_hat, wrapped as a 'v' Denoiser, returns
    E[x0 | x_T] = E[x0] at zero SNR, for any x_T."""
    sched = NoiseSchedule.make("linear", T, zero_terminal_snr=True)
    mix = mixture_2d()
    x0_model = mix.model(sched)

    def v_model(x, t):
        ab = torch.tensor(sched.alphas_cumprod, dtype=x.dtype)[t][:, None]
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x0 = x0_model(x, t)
        eps = torch.where(s > 0, (x - a * x0) / s.clamp_min(1e-300), x)
        return a * eps - s * x0

    den = Denoiser(v_model, sched, "v")
    x_t = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    eps, x0 = den(x_t, T - 1)
    data_mean = (mix.weights[:, None] * mix.means).sum(0)
    np.testing.assert_allclose(x0.numpy(), data_mean.expand(16, 2).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(eps.numpy(), x_t.numpy(), rtol=1e-12, atol=1e-12)
    # elsewhere it agrees with the x0 oracle
    oracle = mix.denoiser(sched)
    for t in (0, 300, 998):
        e1, x1 = den(x_t, t)
        e2, x2 = oracle(x_t, t)
        np.testing.assert_allclose(x1.numpy(), x2.numpy(), rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(e1.numpy(), e2.numpy(), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("bad_shape", [(4, 2), (5, 3), (5, 2, 1), (10,)])
def test_model_output_shape_mismatch_raises(bad_shape):
    sched = NoiseSchedule.make("linear", T)
    den = Denoiser(_fixed_output_model(torch.zeros(bad_shape)), sched, "eps")
    with pytest.raises(ValueError, match="shape"):
        den(torch.zeros(5, 2), 10)


def test_model_output_is_cast_to_x_t_dtype():
    sched = NoiseSchedule.make("linear", T)
    den = Denoiser(_fixed_output_model(torch.ones(3, 2, dtype=torch.float32)), sched, "x0")
    eps, x0 = den(torch.zeros(3, 2, dtype=torch.float64), 10)
    assert eps.dtype == x0.dtype == torch.float64


@pytest.mark.parametrize("t", [DATA, -2, T, T + 5])
def test_bad_timestep_raises(t):
    sched = NoiseSchedule.make("linear", T)
    den = Denoiser(_fixed_output_model(torch.zeros(3, 2)), sched, "x0")
    with pytest.raises(ValueError):
        den(torch.zeros(3, 2), t)


@pytest.mark.parametrize(
    "x",
    [torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 2, dtype=torch.bool), np.zeros((3, 2))],
)
def test_non_float_x_t_raises(x):
    sched = NoiseSchedule.make("linear", T)
    den = Denoiser(_fixed_output_model(torch.zeros(3, 2)), sched, "x0")
    with pytest.raises(ValueError, match="floating"):
        den(x, 10)


def test_unknown_prediction_raises():
    with pytest.raises(ValueError, match="allowed"):
        Denoiser(_fixed_output_model(torch.zeros(1)), NoiseSchedule.make("linear", T), "score")


def test_single_gaussian_oracle_is_the_linear_estimator():
    """Wrapped oracle x0-model: x0_hat = m + a S C^{-1} (x - a m), eps = (x - a x0_hat) / s."""
    S = np.array([[0.3, 0.1], [0.1, 0.2]])
    m = np.array([1.0, -2.0])
    sched = NoiseSchedule.make("cosine", T)
    den = GaussianMixture([1.0], [m], [S]).denoiser(sched)
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for t in (0, 100, 900):
        a, s = _coeffs(sched, t)
        gain = a * S @ np.linalg.inv(a * a * S + s * s * np.eye(2))
        exp_x0 = m + (x.numpy() - a * m) @ gain.T
        eps, x0 = den(x, t)
        np.testing.assert_allclose(x0.numpy(), exp_x0, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(eps.numpy(), (x.numpy() - a * exp_x0) / s, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("clip", [None, (-1.0, 1.0)])
@pytest.mark.parametrize("pred", list(Prediction))
@pytest.mark.parametrize("t", [0, 500, 999])
def test_estimate_combine_is_the_linear_combination(pred, t, clip):
    sched = NoiseSchedule.make("linear", T)
    g = torch.Generator().manual_seed(7 + t)
    x_t = 2.0 * torch.randn(40, 3, generator=g, dtype=torch.float64)
    out = 2.0 * torch.randn(40, 3, generator=g, dtype=torch.float64)
    den = Denoiser(_fixed_output_model(out), sched, pred, clip=clip)
    eps, x0 = den(x_t, t)
    for est in (den.estimate(x_t, t), Estimate.of(x_t, eps, x0)):
        torch.testing.assert_close(est.eps, eps, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(est.x0, x0, rtol=1e-10, atol=1e-10)
        for c in [(0.3, 0.0, 0.0), (0.0, -1.2, 0.0), (0.0, 0.0, 0.7), (0.9, 0.4, -0.25)]:
            expected = c[0] * x_t + c[1] * x0 + c[2] * eps
            got = est.combine(x_t=c[0], x0=c[1], eps=c[2])
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
            base = torch.randn(40, 3, generator=g, dtype=torch.float64)
            into = base.clone()
            res = est.combine(x_t=c[0], x0=c[1], eps=c[2], add_to=into)
            assert res is into
            torch.testing.assert_close(res, base + expected, rtol=1e-10, atol=1e-10)


def test_estimate_forms_nothing_it_is_not_asked_for():
    sched = NoiseSchedule.make("linear", T)
    out = torch.randn(4, 2, dtype=torch.float64)
    est = Denoiser(_fixed_output_model(out), sched, "eps").estimate(
        torch.ones(4, 2, dtype=torch.float64), 10
    )
    assert est.eps is out  # eps prediction: eps is the model output itself
    est.combine(x_t=0.5, x0=2.0)
    assert est._x0 is None  # the combination never formed x0
