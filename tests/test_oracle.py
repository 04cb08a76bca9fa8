"""The Gaussian-mixture oracle: exact diffused densities, scores, posterior means and samples,
checked against independent computations (full matrix inverses, torch.distributions, numerical
integration, importance sampling, autograd)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from ddkit.diffusion.schedule import NoiseSchedule
from ddkit.verify.oracle import GaussianMixture, mixture_2d, mixture_lowrank

ALPHA_BARS = [0.9999, 0.9, 0.5, 0.1, 0.001]


def _mixture_1d() -> GaussianMixture:
    return GaussianMixture([0.5, 0.3, 0.2], [[-1.0], [0.5], [2.0]], [[[0.04]], [[0.25]], [[0.01]]])


def _single_gaussian() -> GaussianMixture:
    L = np.array([[0.6, 0.0, 0.0], [0.3, 0.2, 0.0], [-0.2, 0.1, 0.1]])
    return GaussianMixture([1.0], [[0.5, -1.0, 2.0]], [L @ L.T])


def _diffused(mix: GaussianMixture, ab: float) -> MixtureSameFamily:
    """p_t as a torch.distributions object: sum_k pi_k N(a m_k, a^2 S_k + s^2 I)."""
    a = math.sqrt(ab)
    eye = torch.eye(mix.dim, dtype=torch.float64)
    comps = MultivariateNormal(a * mix.means, covariance_matrix=ab * mix.covs + (1 - ab) * eye)
    return MixtureSameFamily(Categorical(probs=mix.weights), comps)


def _brute_force_posterior_mean(mix: GaussianMixture, x: torch.Tensor, ab: float) -> torch.Tensor:
    """E[x0 | x_t = x] with full inverses: responsibilities from MultivariateNormal densities and
    per-component Gaussian conditioning m_k + a S_k C_k^{-1} (x - a m_k)."""
    a = math.sqrt(ab)
    eye = torch.eye(mix.dim, dtype=torch.float64)
    out = torch.zeros(x.shape, dtype=torch.float64)
    logr = []
    cond = []
    for k in range(mix.n_components):
        S, m = mix.covs[k], mix.means[k]
        C = ab * S + (1 - ab) * eye
        logr.append(
            MultivariateNormal(a * m, covariance_matrix=C).log_prob(x) + mix.weights[k].log()
        )
        cond.append(m + (a * S @ torch.linalg.inv(C) @ (x - a * m).T).T)
    r = torch.softmax(torch.stack(logr, 1), dim=1)
    for k in range(mix.n_components):
        out += r[:, k : k + 1] * cond[k]
    return out


# -- posterior mean ---------------------------------------------------------------------------


@pytest.mark.parametrize("ab", ALPHA_BARS)
def test_single_gaussian_posterior_mean_is_the_linear_estimator(ab):
    gm = _single_gaussian()
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    a, s2 = math.sqrt(ab), 1 - ab
    S = gm.covs[0].numpy()
    m = gm.means[0].numpy()
    K = a * S @ np.linalg.inv(ab * S + s2 * np.eye(3))
    expected = m + (x.numpy() - a * m) @ K.T
    np.testing.assert_allclose(gm.posterior_mean(x, ab).numpy(), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("ab", [0.9999, 0.5, 0.001])
@pytest.mark.parametrize("which", ["2d", "lowrank16"])
def test_mixture_posterior_mean_matches_brute_force(which, ab):
    mix = mixture_2d() if which == "2d" else mixture_lowrank(dim=16)
    g = torch.Generator().manual_seed(1)
    x0, _ = mix.sample(64, generator=g, dtype=torch.float64)
    x = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(
        x0.shape, generator=g, dtype=torch.float64
    )
    np.testing.assert_allclose(
        mix.posterior_mean(x, ab).numpy(),
        _brute_force_posterior_mean(mix, x, ab).numpy(),
        rtol=1e-8,
        atol=1e-9,
    )
    # responsibilities are a distribution
    r = mix.responsibilities(x, ab)
    assert torch.all(r >= 0)
    np.testing.assert_allclose(r.sum(1).numpy(), 1.0, rtol=1e-12)


@pytest.mark.parametrize("ab", [0.5, 0.1])
def test_mixture_posterior_mean_matches_importance_sampling(ab):
    """E[x0 | x_t] = E_prior[x0 N(x_t; a x0, s^2 I)] / E_prior[N(x_t; a x0, s^2 I)], by
    self-normalized importance sampling from the true data distribution."""
    mix = mixture_2d()
    g = torch.Generator().manual_seed(2)
    prior, _ = mix.sample(200_000, generator=g, dtype=torch.float64)
    a, s2 = math.sqrt(ab), 1 - ab
    queries = torch.tensor([[0.0, 0.0], [-0.5, -0.3], [0.4, 0.4], [0.3, -0.5], [1.0, 1.0]])
    queries = queries.double() * a
    logw = -((queries[:, None, :] - a * prior[None]) ** 2).sum(-1) / (2 * s2)  # [q, M]
    w = torch.softmax(logw, dim=1)
    est = w @ prior
    # standard error of a self-normalized IS estimate: sqrt(sum w_i^2 (x_i - est)^2)
    se = torch.sqrt(((w**2)[:, :, None] * (prior[None] - est[:, None]) ** 2).sum(1))
    exact = mix.posterior_mean(queries, ab)
    assert torch.all((est - exact).abs() < 5 * se + 1e-4), (est, exact, se)


# -- densities --------------------------------------------------------------------------------


@pytest.mark.parametrize("ab", [1.0, 0.99, 0.5, 0.05, 0.0])
def test_1d_log_prob_integrates_to_one_and_has_the_right_moments(ab):
    mix = _mixture_1d()
    grid = torch.linspace(-12.0, 12.0, 48001, dtype=torch.float64)
    p = mix.log_prob(grid[:, None], ab).exp()
    mass = torch.trapezoid(p, grid)
    assert abs(float(mass) - 1.0) < 1e-8
    mean = float(torch.trapezoid(p * grid, grid))
    var = float(torch.trapezoid(p * grid**2, grid)) - mean**2
    # closed form: E x_t = a E x0, Var x_t = a^2 Var x0 + s^2
    w, m, c = mix.weights, mix.means[:, 0], mix.covs[:, 0, 0]
    mu0 = float((w * m).sum())
    var0 = float((w * (c + m**2)).sum()) - mu0**2
    assert mean == pytest.approx(math.sqrt(ab) * mu0, abs=1e-8)
    assert var == pytest.approx(ab * var0 + (1 - ab), rel=1e-7)


@pytest.mark.parametrize("t", [0, 300])
def test_1d_log_prob_matches_q_sampled_true_samples(t):
    """Moments of exp(log_prob) (numerically integrated) against those of x_t = a x0 + s eps
    with x0 drawn from the mixture, and a histogram check of the density itself."""
    mix = _mixture_1d()
    sched = NoiseSchedule.make("linear", 1000)
    ab = sched.alpha_bar(t)
    g = torch.Generator().manual_seed(t)
    n = 100_000
    x0, _ = mix.sample(n, generator=g, dtype=torch.float64)
    xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    grid = torch.linspace(-12.0, 12.0, 48001, dtype=torch.float64)
    p = mix.log_prob(grid[:, None], ab).exp()
    mean = float(torch.trapezoid(p * grid, grid))
    var = float(torch.trapezoid(p * grid**2, grid)) - mean**2
    assert abs(float(xt.mean()) - mean) < 5 * math.sqrt(var / n)
    assert abs(float(xt.var()) / var - 1) < 0.02
    # probability of a few intervals: integral of the density vs sample frequency
    for lo, hi in [(-1.5, -0.5), (0.0, 1.0), (1.8, 2.2)]:
        sel = (grid >= lo) & (grid <= hi)
        prob = float(torch.trapezoid(p[sel], grid[sel]))
        freq = float(((xt >= lo) & (xt <= hi)).double().mean())
        assert abs(freq - prob) < 5 * math.sqrt(prob * (1 - prob) / n) + 1e-4


@pytest.mark.parametrize("ab", [1.0, 0.3, 0.0])
@pytest.mark.parametrize("which", ["2d", "lowrank"])
def test_log_prob_matches_torch_distributions(which, ab):
    mix = mixture_2d() if which == "2d" else mixture_lowrank(dim=16)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(100, mix.dim, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(
        mix.log_prob(x, ab).numpy(), _diffused(mix, ab).log_prob(x).numpy(), rtol=1e-10, atol=1e-9
    )


@pytest.mark.parametrize("ab", [0.9999, 0.5, 0.001])
@pytest.mark.parametrize("which", ["1d", "2d", "lowrank"])
def test_score_is_the_gradient_of_log_prob(which, ab):
    mix = {"1d": _mixture_1d, "2d": mixture_2d, "lowrank": lambda: mixture_lowrank(dim=32)}[which]()
    g = torch.Generator().manual_seed(4)
    x0, _ = mix.sample(50, generator=g, dtype=torch.float64)
    x = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(x, ab).sum(), x)
    score = mix.score(x.detach(), ab)
    np.testing.assert_allclose(score.numpy(), grad.numpy(), rtol=1e-7, atol=1e-7 / (1 - ab))


# -- samples ----------------------------------------------------------------------------------


def test_samples_have_the_mixture_mean_covariance_and_weights():
    mix = mixture_2d()
    n = 200_000
    x, k = mix.sample(n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert x.shape == (n, 2) and x.dtype == torch.float64 and k.shape == (n,)
    w, m, c = mix.weights, mix.means, mix.covs
    mu = (w[:, None] * m).sum(0)
    cov = (w[:, None, None] * (c + m[:, :, None] * m[:, None, :])).sum(0) - torch.outer(mu, mu)
    se = (torch.diagonal(cov) / n).sqrt()
    assert torch.all((x.mean(0) - mu).abs() < 5 * se)
    emp_cov = torch.cov(x.T)
    # entry-wise standard error of a sample covariance: sqrt((S_ii S_jj + S_ij^2) / n)
    se_cov = ((torch.diagonal(cov)[:, None] * torch.diagonal(cov)[None] + cov**2) / n).sqrt()
    assert torch.all((emp_cov - cov).abs() < 6 * se_cov)
    freq = torch.bincount(k, minlength=5).double() / n
    assert torch.all((freq - w).abs() < 5 * (w * (1 - w) / n).sqrt())
    # each component's samples have that component's mean and covariance
    for j in range(5):
        xj = x[k == j]
        nj = xj.shape[0]
        assert torch.all((xj.mean(0) - m[j]).abs() < 5 * (torch.diagonal(c[j]) / nj).sqrt())
        np.testing.assert_allclose(torch.cov(xj.T).numpy(), c[j].numpy(), rtol=0.05, atol=0.002)


def test_sample_dtype_and_reproducibility():
    mix = mixture_2d()
    a, _ = mix.sample(10, generator=torch.Generator().manual_seed(9))
    b, _ = mix.sample(10, generator=torch.Generator().manual_seed(9))
    c, _ = mix.sample(10, generator=torch.Generator().manual_seed(10))
    assert a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gaussian_nll_is_the_entropy():
    gm = _single_gaussian()
    ent = MultivariateNormal(gm.means[0], covariance_matrix=gm.covs[0]).entropy()
    assert gm.gaussian_nll() == pytest.approx(float(ent), rel=1e-12)
    x, _ = gm.sample(100_000, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    nll = -gm.log_prob(x)
    assert abs(float(nll.mean()) - gm.gaussian_nll()) < 5 * float(nll.std()) / math.sqrt(1e5)
    with pytest.raises(ValueError):
        mixture_2d().gaussian_nll()


# -- the oracle as a model --------------------------------------------------------------------


def test_model_handles_mixed_timesteps_and_image_shapes():
    mix = mixture_lowrank(dim=12)
    sched = NoiseSchedule.make("linear", 1000)
    model = mix.model(sched)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 999, 500, 0, 500, 10])
    out = model(x, t)
    assert out.shape == x.shape and out.dtype == x.dtype
    for i, ti in enumerate(t.tolist()):
        exp = mix.posterior_mean(x[i].reshape(1, -1), sched.alpha_bar(ti)).reshape(3, 2, 2)
        np.testing.assert_allclose(out[i].numpy(), exp.numpy(), rtol=1e-12, atol=1e-12)
    out32 = model(x.float(), t)
    assert out32.dtype == torch.float32


def test_mixture_lowrank_is_deterministic_given_seed():
    a, b, c = mixture_lowrank(seed=3), mixture_lowrank(seed=3), mixture_lowrank(seed=4)
    assert torch.equal(a.means, b.means) and torch.equal(a.covs, b.covs)
    assert not torch.equal(a.means, c.means)
    assert a.dim == 64 and a.n_components == 4


@pytest.mark.parametrize(
    "weights,means,covs",
    [
        ([0.5, 0.6], [[0.0], [1.0]], [[[1.0]], [[1.0]]]),  # weights do not sum to 1
        ([1.5, -0.5], [[0.0], [1.0]], [[[1.0]], [[1.0]]]),  # negative weight
        ([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]]),  # not symmetric
        ([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]]),  # not positive definite
        ([1.0], [[0.0, 0.0]], [[[1.0]]]),  # covariance of the wrong size
        ([0.5, 0.5], [[0.0]], [[[1.0]], [[1.0]]]),  # K mismatch
    ],
)
def test_invalid_mixtures_raise(weights, means, covs):
    with pytest.raises(ValueError):
        GaussianMixture(weights, means, covs)


@pytest.mark.parametrize("ab", [0.9999, 0.5, 0.05])
def test_posterior_sample_has_the_tweedie_mean_and_covariance(ab):
    """Draws of x0 | x_t for one x_t have mean E[x0 | x_t] and covariance (s^2 / a) times the
    Jacobian of that mean (Tweedie's second-order formula, by autograd): the mixture posterior's
    spread between components included."""
    mix = mixture_2d()
    gen = torch.Generator().manual_seed(3)
    x_t = math.sqrt(ab) * mix.sample(1, gen, dtype=torch.float64)[0] + 0.3 * math.sqrt(1 - ab)
    n = 200_000
    draws = mix.posterior_sample(x_t.expand(n, 2), ab, gen)
    mean = mix.posterior_mean(x_t, ab)[0]
    jac = torch.autograd.functional.jacobian(lambda y: mix.posterior_mean(y[None], ab)[0], x_t[0])
    cov = (1 - ab) / math.sqrt(ab) * jac
    se = (torch.diagonal(cov) / n).sqrt()
    assert torch.all((draws.mean(0) - mean).abs() < 5 * se)
    se_cov = ((torch.diagonal(cov)[:, None] * torch.diagonal(cov)[None] + cov**2) / n).sqrt()
    assert torch.all((torch.cov(draws.T) - cov).abs() < 6 * se_cov)


def test_posterior_sample_of_noised_data_is_the_data():
    """x0 -> x_t -> x0' ~ p(x0 | x_t) leaves the data distribution unchanged: the component
    frequencies of x0' match the weights (x0' assigned to its most likely component)."""
    mix = mixture_2d()
    gen = torch.Generator().manual_seed(8)
    n, ab = 100_000, 0.3
    x0, _ = mix.sample(n, gen, dtype=torch.float64)
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(x0.shape, generator=gen).double()
    back = mix.posterior_sample(x_t, ab, gen)
    for y in (x0, back):
        assert y.dtype == torch.float64 and y.shape == (n, 2)
    label = mix.responsibilities(back).argmax(1)
    label_true = mix.responsibilities(x0).argmax(1)
    for j in range(mix.n_components):
        f, f_true = (label == j).double().mean(), (label_true == j).double().mean()
        assert abs(f - f_true) < 5 * math.sqrt(2 * f_true * (1 - f_true) / n)
    assert torch.allclose(back.mean(0), x0.mean(0), atol=5 * float(x0.std(0).max()) / n**0.5)
