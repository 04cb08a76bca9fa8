"""The forward process q(x_t | x_0) and its posterior q(x_{t-1} | x_t, x_0), checked against
independent closed forms (products of betas, one-step recursions, Gaussian conditioning)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddkit.diffusion.process import q_mean_var, q_posterior, q_sample
from ddkit.diffusion.schedule import NoiseSchedule

T = 1000
SCHEDULES = [("linear", False), ("cosine", False), ("linear", True), ("cosine", True)]
IDS = ["linear", "cosine", "linear-ztsnr", "cosine-ztsnr"]


def _make(sched) -> NoiseSchedule:
    return NoiseSchedule.make(sched[0], T, zero_terminal_snr=sched[1])


def _alpha_bar(betas: np.ndarray, t: int) -> float:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s), from scratch; 1 for t = -1."""
    return float(np.prod(1.0 - betas[: t + 1]))


@pytest.mark.parametrize("t", [0, 10, 250, 600, 999])
def test_q_sample_moments_monte_carlo(t):
    s = NoiseSchedule.make("linear", T)
    g = torch.Generator().manual_seed(1234 + t)
    n = 20000
    x0 = torch.tensor([1.5, -0.7, 0.2], dtype=torch.float64).expand(n, 3).contiguous()
    noise = torch.randn(n, 3, generator=g, dtype=torch.float64)
    xt = q_sample(s, x0, torch.full((n,), t), noise)
    ab = _alpha_bar(s.betas, t)
    mean_exp, var_exp = math.sqrt(ab) * x0[0], 1.0 - ab
    se_mean = math.sqrt(var_exp / n)
    assert torch.all((xt.mean(0) - mean_exp).abs() < 5 * se_mean)
    se_var = var_exp * math.sqrt(2.0 / (n - 1))
    assert torch.all((xt.var(0) - var_exp).abs() < 5 * se_var)


def test_q_sample_is_the_closed_form_with_the_given_noise():
    s = NoiseSchedule.make("cosine", T)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(7, 2, 3, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 17, 400, 998, 999, 5])
    xt = q_sample(s, x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        ab = _alpha_bar(s.betas, ti)
        expected = math.sqrt(ab) * x0[i] + math.sqrt(1.0 - ab) * noise[i]
        torch.testing.assert_close(xt[i], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_q_sample_keeps_dtype_and_shape(dtype):
    s = NoiseSchedule.make("linear", T)
    x0 = torch.zeros(4, 3, 8, 8, dtype=dtype)
    out = q_sample(s, x0, torch.tensor([0, 1, 2, 999]), torch.ones_like(x0))
    assert out.dtype == dtype and out.shape == x0.shape
    mean, var = q_mean_var(s, x0, torch.tensor([0, 1, 2, 999]))
    assert mean.dtype == dtype and mean.shape == x0.shape
    assert var.shape == (4, 1, 1, 1)


@pytest.mark.parametrize("sched", SCHEDULES, ids=IDS)
def test_composing_one_step_transitions_equals_closed_form(sched):
    """q(x_t | x_0) by iterating q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t):
    x_t = m_t x_0 + N(0, v_t) with m_t = sqrt(alpha_t) m_{t-1}, v_t = alpha_t v_{t-1} + beta_t."""
    s = _make(sched)
    m, v = 1.0, 0.0
    ms, vs = [], []
    for beta in s.betas.tolist():
        m, v = math.sqrt(1.0 - beta) * m, (1.0 - beta) * v + beta
        ms.append(m)
        vs.append(v)
    x0 = torch.ones(T, 1, dtype=torch.float64)
    mean, var = q_mean_var(s, x0, torch.arange(T))
    np.testing.assert_allclose(mean[:, 0].numpy(), ms, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(var[:, 0].numpy(), vs, rtol=1e-12, atol=1e-15)
    # the schedule's tables say the same
    np.testing.assert_allclose(s.sqrt_alphas_cumprod, ms, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(s.sqrt_one_minus_alphas_cumprod**2, vs, rtol=1e-12, atol=1e-15)


def test_composing_sampled_transitions_matches_q_sample_moments():
    """A Monte Carlo chain of one-step transitions (T = 100) has the marginal moments of
    q_sample."""
    s = NoiseSchedule.make("linear", 100)
    g = torch.Generator().manual_seed(7)
    n = 20000
    x0 = torch.full((n, 1), 0.8, dtype=torch.float64)
    x = x0.clone()
    for t, beta in enumerate(s.betas.tolist()):
        x = math.sqrt(1.0 - beta) * x + math.sqrt(beta) * torch.randn(
            n, 1, generator=g, dtype=x.dtype
        )
        if t in (0, 9, 49, 99):
            mean, var = q_mean_var(s, x0[:1], torch.tensor([t]))
            se = math.sqrt(float(var) / n)
            assert abs(float(x.mean()) - float(mean)) < 5 * se
            assert abs(float(x.var()) - float(var)) < 5 * float(var) * math.sqrt(2.0 / n)


@pytest.mark.parametrize("sched", SCHEDULES, ids=IDS)
def test_q_posterior_is_gaussian_conditioning(sched):
    """Given x0, (x_{t-1}, x_t) is jointly Gaussian per coordinate with
        E = (sqrt(ab_{t-1}) x0, sqrt(ab_t) x0),
        Cov = [[1 - ab_{t-1}, sqrt(alpha_t)(1 - ab_{t-1})], [., 1 - ab_t]];
    conditioning on x_t (Schur complement) gives the posterior mean and variance."""
    s = _make(sched)
    ts = [0, 1, 2, 10, 300, 777, 998, 999]
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(len(ts), 3, 2, generator=g, dtype=torch.float64)
    xt = torch.randn(len(ts), 3, 2, generator=g, dtype=torch.float64)
    mean, var, log_var = q_posterior(s, x0, xt, torch.tensor(ts))
    assert mean.shape == x0.shape and var.shape == (len(ts), 1, 1)
    for i, t in enumerate(ts):
        ab_prev, ab_t = _alpha_bar(s.betas, t - 1), _alpha_bar(s.betas, t)
        alpha_t = 1.0 - s.betas[t]
        mu = np.array([math.sqrt(ab_prev), math.sqrt(ab_t)])
        cov = np.array(
            [
                [1.0 - ab_prev, math.sqrt(alpha_t) * (1.0 - ab_prev)],
                [math.sqrt(alpha_t) * (1.0 - ab_prev), 1.0 - ab_t],
            ]
        )
        gain = cov[0, 1] / cov[1, 1]
        exp_mean = mu[0] * x0[i] + gain * (xt[i] - mu[1] * x0[i])
        exp_var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
        torch.testing.assert_close(mean[i], exp_mean, rtol=1e-10, atol=1e-12)
        assert math.isclose(float(var[i].squeeze()), exp_var, rel_tol=1e-9, abs_tol=1e-15), t
        assert float(var[i].squeeze()) <= s.betas[t]
    # log variance: exact where the variance is positive, that of t = 1 at t = 0
    torch.testing.assert_close(log_var[1:], var[1:].log(), rtol=1e-12, atol=0)
    assert float(log_var[0]) == pytest.approx(float(var[1].log()))


def test_q_posterior_at_t0_is_the_data():
    s = NoiseSchedule.make("linear", T)
    x0 = torch.randn(5, 4, dtype=torch.float64)
    xt = torch.randn(5, 4, dtype=torch.float64)
    mean, var, _ = q_posterior(s, x0, xt, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(mean, x0, rtol=1e-12, atol=1e-12)
    assert torch.all(var == 0)


def test_q_posterior_monte_carlo():
    """Sample (x_{t-1}, x_t) by the forward chain, and regress x_{t-1} on x_t: the fitted slope,
    intercept and residual variance are the posterior's."""
    s = NoiseSchedule.make("linear", T)
    t, n = 200, 40000
    g = torch.Generator().manual_seed(11)
    x0 = torch.full((n, 1), -0.4, dtype=torch.float64)
    ab_prev = _alpha_bar(s.betas, t - 1)
    x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * torch.randn(
        n, 1, generator=g, dtype=x0.dtype
    )
    beta = s.betas[t]
    x_t = math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * torch.randn(
        n, 1, generator=g, dtype=x0.dtype
    )
    mean, var, _ = q_posterior(s, x0, x_t, torch.full((n,), t))
    resid = x_prev - mean
    assert abs(float(resid.mean())) < 5 * math.sqrt(float(var[0]) / n)
    assert abs(float(resid.var()) / float(var[0]) - 1) < 5 * math.sqrt(2 / n)
    # residual uncorrelated with x_t (the conditional mean is the regression)
    corr = torch.corrcoef(torch.stack([resid[:, 0], x_t[:, 0]]))[0, 1]
    assert abs(float(corr)) < 5 / math.sqrt(n)


def _bad_inputs():
    x = torch.zeros(4, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3])
    yield "noise-shape", x, torch.zeros(4, 2, dtype=torch.float64), t
    yield "noise-dtype", x, torch.zeros(4, 3, dtype=torch.float32), t
    yield "t-2d", x, x, t[:, None]
    yield "t-length", x, x, t[:3]
    yield "t-float", x, x, t.double()
    yield "t-too-large", x, x, torch.tensor([0, 1, 2, T])
    yield "t-negative", x, x, torch.tensor([0, -1, 2, 3])


@pytest.mark.parametrize("case", list(_bad_inputs()), ids=lambda c: c[0])
def test_bad_inputs_raise(case):
    _, x0, other, t = case
    s = NoiseSchedule.make("linear", T)
    with pytest.raises(ValueError):
        q_sample(s, x0, t, other)
    with pytest.raises(ValueError):
        q_posterior(s, x0, other, t)


@pytest.mark.parametrize(
    "t", [torch.tensor([0, 1, 2]), torch.tensor([0.0, 1, 2, 3]), torch.tensor([0, 1, 2, T])]
)
def test_q_mean_var_bad_t_raises(t):
    s = NoiseSchedule.make("linear", T)
    with pytest.raises(ValueError, match="t"):
        q_mean_var(s, torch.zeros(4, 3), t)
