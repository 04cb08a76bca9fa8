"""Tests for ddkit.diffusion.likelihood on Gaussian data, where the exact denoiser, the true NLL
(the entropy) and the expected VLB are all known in closed form."""

import math

import numpy as np
import pytest
import torch

from ddkit.diffusion.likelihood import (
    gaussian_vlb_terms,
    ode_bpd,
    optimal_reverse_variance,
    vlb_bpd,
)
from ddkit.diffusion.losses import VarianceType, prior_bpd
from ddkit.diffusion.schedule import NoiseSchedule
from ddkit.verify.oracle import GaussianMixture

F64 = torch.float64
LN2 = math.log(2)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gaussian(stds, angle=0.0, mean=None):
    """N(mean, R diag(stds^2) R^T), R a rotation by ``angle`` in the first two coordinates."""
    d = len(stds)
    rot = np.eye(d)
    c, s = math.cos(angle), math.sin(angle)
    rot[:2, :2] = [[c, -s], [s, c]]
    mean = np.linspace(-0.3, 0.4, d) if mean is None else mean
    return GaussianMixture([1.0], [mean], (rot @ np.diag(np.square(stds)) @ rot.T)[None])


def entropy_bpd(data):
    return data.gaussian_nll() / (data.dim * LN2)


def fixed_sigma2(schedule, variance):
    t = torch.arange(schedule.T)
    log_var = VarianceType.parse(variance).log_variance(
        schedule, t, torch.zeros(schedule.T, 1, dtype=F64)
    )
    return log_var.exp().numpy().ravel()


def expected_gap(data, schedule, sigma2):
    terms, prior = gaussian_vlb_terms(
        schedule, data.eigvals[0].numpy(), data.means[0].numpy(), sigma2
    )
    return terms.sum() + prior - entropy_bpd(data)


def test_prior_bpd_closed_form():
    sched = NoiseSchedule.make("linear", 1000)
    x0 = torch.linspace(-1, 1, 12, dtype=F64).reshape(3, 4)
    ab = sched.alphas_cumprod[-1]
    want = 0.5 * (1 - ab + ab * x0**2 - 1 - math.log(1 - ab)).mean(1) / LN2
    torch.testing.assert_close(prior_bpd(sched, x0), want)
    zt = NoiseSchedule.make("linear", 1000, zero_terminal_snr=True)
    assert torch.all(prior_bpd(zt, x0) == 0)


def test_optimal_variance_makes_the_bound_tight():
    """With the true reverse variance Var(x_{t-1} | x_t) the bound telescopes: E[VLB] = H(x0) +
    KL(q(x_{T-1}) || N(0, I)), for any T (DDPM eq. 5 with p = q's reverse)."""
    data = gaussian([0.3, 0.6, 0.1], angle=0.5)
    for T in (30, 1000):
        sched = NoiseSchedule.make("linear", T)
        lam, ab = data.eigvals[0].numpy(), sched.alphas_cumprod[-1]
        c = ab * lam + 1 - ab  # marginal covariance eigenvalues at T-1
        marginal_kl = 0.5 * (
            c.sum() + ab * (data.means[0].numpy() ** 2).sum() - 3 - np.log(c).sum()
        )
        gap = expected_gap(data, sched, optimal_reverse_variance(sched, lam))
        assert gap == pytest.approx(marginal_kl / (3 * LN2), abs=1e-10)


def test_expected_vlb_bounds_nll_and_decreases_with_T():
    """Closed-form E[VLB] of the exact denoiser >= the entropy for every T and fixed variance, and
    it decreases with T.  FIXED_LARGE (beta_t, also at index 0) converges to the NLL, gap ~ 1.6/T;
    FIXED_SMALL does not: near the data the reverse variance is ~beta_t, not beta-tilde_t ~ beta_t
    t/(t+1), and the harmonic mismatch sums to (gamma + 1 - ln 2)/2 nats/dim (~0.64 bits/dim)."""
    data = gaussian([0.5, 0.25, 0.8, 0.5], angle=0.3)
    gaps = {v: [] for v in ("fixed_small", "fixed_large")}
    for T in (50, 200, 1000):
        sched = NoiseSchedule.make("linear", T)
        for v in gaps:
            gaps[v].append(expected_gap(data, sched, fixed_sigma2(sched, v)))
    for v, g in gaps.items():
        assert all(x > 0 for x in g), (v, g)
        assert g[0] > g[1] > g[2], (v, g)
    assert gaps["fixed_large"][2] < 0.01
    assert gaps["fixed_large"][1] / gaps["fixed_large"][2] == pytest.approx(5, rel=0.1)
    limit = (0.5772156649 + 1 - LN2) / (2 * LN2)
    assert limit < gaps["fixed_small"][2] < limit + 0.25


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_vlb_bpd_matches_closed_form_expectation(variance):
    data, sched = gaussian([0.3, 0.6], angle=0.5), NoiseSchedule.make("linear", 50)
    g = torch.Generator().manual_seed(0)
    x0, _ = data.sample(4000, g, dtype=F64)
    res = vlb_bpd(
        data.denoiser(sched), sched, x0, variance=variance, decoder="gaussian", generator=g
    )
    assert res.total.shape == (4000,) and res.terms.shape == (4000, 50)
    torch.testing.assert_close(res.total, res.prior + res.decoder + res.diffusion)
    # per example minus its own NLL removes most of the data's sampling variance
    gap = res.total - (-data.log_prob(x0) / (2 * LN2))
    want = expected_gap(data, sched, fixed_sigma2(sched, variance))
    assert abs(float(gap.mean()) - want) < 4 * float(gap.std()) / math.sqrt(4000)


def test_vlb_bpd_chunking_and_model_paths_agree():
    data, sched = gaussian([0.3, 0.5, 0.2]), NoiseSchedule.make("linear", 40)
    x0, _ = data.sample(5, torch.Generator().manual_seed(1), dtype=F64)

    def run(model, batch_t, **kw):
        gen = torch.Generator().manual_seed(7)
        return vlb_bpd(model, sched, x0, decoder="gaussian", batch_t=batch_t, generator=gen, **kw)

    ref = run(data.denoiser(sched), 1, variance="fixed_large")
    torch.testing.assert_close(
        run(data.denoiser(sched), 7, variance="fixed_large").terms, ref.terms
    )
    raw = data.model(sched)  # a network predicting x0
    torch.testing.assert_close(
        run(raw, 16, variance="fixed_large", prediction="x0").terms, ref.terms
    )

    def learned(x_t, t):  # v = +1: the top of the learned range is fixed_large
        return torch.cat([raw(x_t, t), torch.ones_like(x_t)], dim=1)

    got = run(learned, 5, variance="learned_range", prediction="x0")
    torch.testing.assert_close(got.terms, ref.terms)
    with pytest.raises(ValueError, match="no learned variance"):
        run(data.denoiser(sched), 1, variance="learned_range")
    with pytest.raises(ValueError, match="batch_t"):
        run(data.denoiser(sched), 0)
    with pytest.raises(ValueError, match="schedule"):
        vlb_bpd(data.denoiser(NoiseSchedule.make("linear", 41)), sched, x0)


def _prior_error(data, sched, res):
    """Bits/dim by which N(0, I) differs from the true q(x_{T-1}) at the ODE's end points."""
    log_q = data.log_prob(res.latent, sched.alpha_bar(sched.T - 1))
    return log_q / (data.dim * LN2) + res.prior


def test_ode_integrator_is_accurate():
    """Axis-aligned Gaussian: the flow's Jacobian is diagonal, so Rademacher probes give the exact
    trace and only the integration error remains: second order (Heun), < 1e-3 bits/dim with 200
    quadratic steps, < 2e-3 with 100 for stds >= 0.3."""
    data, sched = gaussian([0.3, 0.6, 0.15]), NoiseSchedule.make("linear", 1000)
    x0, _ = data.sample(16, torch.Generator().manual_seed(2), dtype=F64)
    err = {}
    for n in (100, 200):
        res = ode_bpd(data.denoiser(sched), x0, n_steps=n, hutchinson_samples=2)
        assert torch.all(res.stderr == 0)
        exact = -data.log_prob(x0, sched.alpha_bar(0)) / (3 * LN2) + _prior_error(data, sched, res)
        err[n] = float((res.bpd - exact).abs().max())
    assert err[200] < 1e-3 and err[100] / err[200] > 3
    # starting at index 0 instead of at the data changes each variance l by ~beta_0 (1 - l), so
    # log p by O(beta_0 / l) per dim per example (here l >= 0.15^2: < 5e-3 bits/dim), and by
    # only KL(p_data || p_0) = O((beta_0 / l)^2) in expectation
    shift = (data.log_prob(x0) - data.log_prob(x0, sched.alpha_bar(0))) / (3 * LN2)
    assert float(shift.abs().max()) < 5e-3


def test_ode_bpd_matches_closed_form_within_standard_errors():
    """Rotated (non-diagonal) covariance, Gaussian probes: per example, the ODE NLL agrees with
    the exact -log p_0(x0) within 3 standard errors of the Hutchinson estimate plus 2e-3 bits/dim
    for the integrator (100 steps, see above); the mean agrees with the entropy within 3 standard
    errors of the mean (data and probes) plus the same allowance."""
    data, sched = gaussian([0.3, 0.6, 0.4], angle=0.7), NoiseSchedule.make("linear", 1000)
    g = torch.Generator().manual_seed(3)
    x0, _ = data.sample(64, g, dtype=F64)
    res = ode_bpd(
        data.denoiser(sched), x0, n_steps=100, hutchinson_samples=4, probe="gaussian", generator=g
    )
    assert res.bpd.shape == res.stderr.shape == (64,) and torch.all(res.stderr > 0)
    exact = -data.log_prob(x0, sched.alpha_bar(0)) / (3 * LN2) + _prior_error(data, sched, res)
    err = res.bpd - exact
    se_mean = float(res.stderr.pow(2).sum().sqrt()) / 64
    assert abs(float(err.mean())) < 3 * se_mean + 2e-3
    assert float((err.abs() - 3 * res.stderr).quantile(0.9)) < 2e-3
    se = float(res.bpd.std()) / 8
    assert abs(float(res.bpd.mean()) - entropy_bpd(data)) < 3 * se + 2e-3


def test_ode_bpd_options_and_validation():
    data, sched = gaussian([0.5, 0.5]), NoiseSchedule.make("linear", 200)
    x0 = torch.round(
        (data.sample(8, torch.Generator().manual_seed(4), dtype=F64)[0].clamp(-1, 1) + 1) * 127.5
    )
    x0 = x0 / 127.5 - 1  # on the 8-bit grid
    den = data.denoiser(sched)
    plain = ode_bpd(den, x0, n_steps=40)
    deq = ode_bpd(den, x0, n_steps=40, dequantize=True, generator=torch.Generator().manual_seed(0))
    # within one bin log p changes by at most |x - m| / (0.25 * 255) < 0.03 nats per dim: the
    # difference is the log2(127.5) bin-volume offset
    offset = torch.full_like(plain.bpd, math.log2(127.5))
    torch.testing.assert_close(deq.bpd - plain.bpd, offset, atol=0.03 / LN2, rtol=0)
    assert torch.isnan(plain.stderr).all()
    for kw, msg in [
        (dict(n_steps=200), "n_steps"),
        (dict(hutchinson_samples=0), "hutchinson"),
        (dict(probe="sphere"), "probe"),
    ]:
        with pytest.raises(ValueError, match=msg):
            ode_bpd(den, x0, **kw)
    zt = NoiseSchedule.make("linear", 200, zero_terminal_snr=True)
    with pytest.raises(ValueError, match="finite SNR"):
        ode_bpd(data.denoiser(zt), x0, n_steps=10)
