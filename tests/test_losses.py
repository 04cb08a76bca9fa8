"""Tests for ddkit.diffusion.losses against closed forms: Gaussian KL, discretized likelihood, VLB
terms, training losses with the exact (oracle) denoiser, and the unbiasedness of timestep
samplers."""

import math

import numpy as np
import pytest
import torch

from ddkit.diffusion.losses import (
    Decoder,
    LossSecondMomentSampler,
    LossType,
    UniformSampler,
    VarianceType,
    discretized_gaussian_log_likelihood,
    normal_kl,
    training_losses,
    vlb_terms,
)
from ddkit.diffusion.parameterization import Prediction
from ddkit.diffusion.process import q_posterior, q_sample
from ddkit.diffusion.schedule import NoiseSchedule
from ddkit.verify.oracle import GaussianMixture

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gaussian(dim=4, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    cov = q @ np.diag(np.linspace(0.1, 0.6, dim) ** 2) @ q.T
    return GaussianMixture([1.0], rng.normal(0, 0.3, size=(1, dim)), cov[None])


def test_normal_kl_closed_form_and_zero():
    g = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = torch.randn(4, 50, generator=g, dtype=F64)
    p = torch.distributions.Normal(m1, (0.5 * lv1).exp())
    q = torch.distributions.Normal(m2, (0.5 * lv2).exp())
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), torch.distributions.kl_divergence(p, q))
    assert torch.all(normal_kl(m1, lv1, m2, lv2) >= 0)
    assert torch.all(normal_kl(m1, lv1, m1, lv1).abs() < 1e-12)
    assert torch.allclose(normal_kl(m1, 0.0, m1, 0.0), torch.zeros_like(m1))  # float arguments


def _bins(dtype):
    return (torch.arange(256, dtype=dtype) * 2 / 255 - 1)[:, None]  # [256, 1]


@pytest.mark.parametrize(
    "mean,log_scale", [(0.0, -3.0), (0.37, -6.0), (-1.2, -1.0), (2.0, 1.0), (0.5, -9.0)]
)
def test_discretized_bins_sum_to_one(mean, log_scale):
    x = _bins(F64)
    logp = discretized_gaussian_log_likelihood(
        x, torch.full_like(x, mean), torch.full_like(x, log_scale)
    )
    assert torch.isfinite(logp).all()
    assert abs(float(logp.exp().sum()) - 1.0) < 1e-9


def test_discretized_matches_direct_cdf_difference():
    x = _bins(F64).expand(256, 7)
    means = torch.linspace(-1.1, 1.1, 7, dtype=F64).expand(256, 7)
    log_scales = torch.full_like(x, math.log(0.2))
    got = discretized_gaussian_log_likelihood(x, means, log_scales)
    sd = log_scales.exp()

    def ndtr(z):  # accurate in the lower tail, unlike 1 + erf (torch.special.ndtr cancels there)
        return 0.5 * torch.special.erfc(-z / math.sqrt(2))

    lo, hi = (x - means - 1 / 255) / sd, (x - means + 1 / 255) / sd
    # direct difference, using the symmetric form in the upper tail to avoid cancellation
    p = torch.where(lo > 0, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))
    p = torch.where(x < -0.999, ndtr(hi), torch.where(x > 0.999, ndtr(-lo), p))
    torch.testing.assert_close(got, p.log(), rtol=1e-9, atol=1e-12)


def test_discretized_tails_finite_in_float32():
    x = _bins(torch.float32)
    args = (torch.full_like(x, -0.9), torch.full_like(x, math.log(0.02)))
    lp32 = discretized_gaussian_log_likelihood(x, *args)
    lp64 = discretized_gaussian_log_likelihood(x.double(), *(a.double() for a in args))
    assert torch.isfinite(lp32).all() and float(lp32.min()) < -1e3  # far tail, no -inf
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        discretized_gaussian_log_likelihood(x * 2, x, x)


def test_vlb_terms_zero_for_exact_posterior_and_decoder_at_zero():
    sched = NoiseSchedule.make("linear", 100)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(6, 3, 4, 4, generator=g, dtype=F64) * 2 - 1
    t = torch.tensor([0, 1, 5, 50, 98, 99])
    x_t = q_sample(sched, x0, t, torch.randn(x0.shape, generator=g, dtype=F64))
    mean, _, log_var = q_posterior(sched, x0, x_t, t)
    bits = vlb_terms(sched, mean, log_var, x0, x_t, t)
    assert bits.shape == (6,)
    assert torch.all(bits[1:].abs() < 1e-10)
    ll = discretized_gaussian_log_likelihood(x0[:1], mean[:1], 0.5 * log_var[:1].expand(1, 3, 4, 4))
    torch.testing.assert_close(bits[0], -ll.mean() / math.log(2))
    gauss = vlb_terms(sched, mean, log_var, x0, x_t, t, decoder="gaussian")
    torch.testing.assert_close(gauss[1:], bits[1:])


def test_learned_range_ends_are_the_fixed_variances():
    sched = NoiseSchedule.make("cosine", 50)
    t = torch.arange(50)
    x = torch.zeros(50, 2, 3, dtype=F64)
    lr = VarianceType.LEARNED_RANGE
    small = VarianceType.FIXED_SMALL.log_variance(sched, t, x)
    large = VarianceType.FIXED_LARGE.log_variance(sched, t, x)
    torch.testing.assert_close(
        lr.log_variance(sched, t, x, -torch.ones_like(x)), small.expand_as(x)
    )
    torch.testing.assert_close(lr.log_variance(sched, t, x, torch.ones_like(x)), large.expand_as(x))
    assert torch.all(small <= large + 1e-12)
    torch.testing.assert_close(large.exp().reshape(-1), torch.from_numpy(sched.betas.copy()))
    with pytest.raises(ValueError, match="allowed"):
        VarianceType.parse("fixed_medium")
    with pytest.raises(ValueError, match="needs the model"):
        lr.log_variance(sched, t, x)


def oracle_model(data, sched, prediction):
    """The exact denoiser as a network predicting ``prediction``."""
    x0_model = data.model(sched)

    def model(x_t, t):
        a = sched.coef("sqrt_alphas_cumprod", t, x_t)
        s = sched.coef("sqrt_one_minus_alphas_cumprod", t, x_t)
        x0 = x0_model(x_t, t)
        eps = (x_t - a * x0) / s
        return prediction.target(x0, eps, a, s)

    return model


def test_simple_loss_oracle_consistent_across_predictions():
    data, sched = gaussian(), NoiseSchedule.make("linear", 200)
    g = torch.Generator().manual_seed(2)
    x0, _ = data.sample(4000, g, dtype=F64)
    t = torch.randint(0, 200, (4000,), generator=g)
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    mse = {
        p: training_losses(oracle_model(data, sched, p), sched, x0, t, prediction=p, noise=noise)
        for p in Prediction
    }
    ab = torch.from_numpy(sched.alphas_cumprod.copy())[t]
    for out in mse.values():
        assert set(out) == {"loss", "mse"} and out["loss"].shape == (4000,)
    # exact identities: eps error = -(a/s) x0 error, v error = -(1/s) x0 error
    torch.testing.assert_close(
        mse[Prediction.EPS]["mse"], mse[Prediction.X0]["mse"] * ab / (1 - ab)
    )
    torch.testing.assert_close(mse[Prediction.V]["mse"], mse[Prediction.X0]["mse"] / (1 - ab))
    # E[mse_x0] = mean over eigen-directions of Var(x0 | x_t) = l s^2 / (a^2 l + s^2)
    lam = data.eigvals[0]
    post = (lam[None] * (1 - ab[:, None]) / (ab[:, None] * lam[None] + 1 - ab[:, None])).mean(1)
    err = mse[Prediction.X0]["mse"] - post
    assert abs(float(err.mean())) < 4 * float(err.std()) / math.sqrt(4000)
    # a model that knows the noise has zero loss for every prediction type
    for p in Prediction:
        a = sched.coef("sqrt_alphas_cumprod", t, x0)
        s = sched.coef("sqrt_one_minus_alphas_cumprod", t, x0)

        def knows(x_t, tt, p=p, a=a, s=s):
            return p.target(x0, noise, a, s)

        assert (
            float(training_losses(knows, sched, x0, t, prediction=p, noise=noise)["mse"].max())
            < 1e-20
        )


def test_hybrid_and_vlb_losses():
    sched = NoiseSchedule.make("linear", 100)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(8, 2, 3, 3, generator=g) * 2 - 1
    t = torch.randint(0, 100, (8,), generator=g)
    t[0] = 0
    param = torch.randn(1, 4, 3, 3, generator=g).clamp(-1, 1).requires_grad_(True)

    def model(x_t, tt):
        return param.expand(x_t.shape[0], -1, -1, -1) + 0 * x_t.repeat(1, 2, 1, 1)

    kw = dict(
        prediction="eps", variance="learned_range", generator=torch.Generator().manual_seed(0)
    )
    hyb = training_losses(model, sched, x0, t, loss_type="hybrid", **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    vlb = training_losses(model, sched, x0, t, loss_type=LossType.VLB, **kw)
    torch.testing.assert_close(hyb["loss"], hyb["mse"] + 1e-3 * 100 * hyb["vb"])
    torch.testing.assert_close(vlb["loss"], 100 * vlb["vb"])
    torch.testing.assert_close(hyb["vb"], vlb["vb"])
    assert all(v.shape == (8,) for v in hyb.values())
    # the mean is stop-gradient in the hybrid's vb term: the prediction channels see only the mse
    (grad_vb,) = torch.autograd.grad(hyb["vb"].sum(), param, retain_graph=True)
    assert torch.all(grad_vb[:, :2] == 0) and torch.any(grad_vb[:, 2:] != 0)
    (grad_vlb,) = torch.autograd.grad(vlb["vb"].sum(), param)
    assert torch.any(grad_vlb[:, :2] != 0)


def test_training_losses_validation():
    sched = NoiseSchedule.make("linear", 50)
    x0 = torch.zeros(4, 3)
    t = torch.tensor([0, 1, 2, 3])

    def model(x, tt):
        return x

    bad = [
        (dict(t=torch.tensor([0, 1, 2, 50])), "outside"),
        (dict(t=torch.tensor([0.0, 1, 2, 3])), "integer"),
        (dict(t=torch.tensor([True, False, True, True])), "integer"),
        (dict(t=torch.tensor([0, 1])), "shape"),
        (dict(noise=torch.zeros(4, 2)), "noise"),
        (dict(noise=torch.zeros(4, 3, dtype=F64)), "noise"),
        (dict(loss_type="l1"), "allowed"),
        (dict(prediction="score"), "allowed"),
        (dict(variance="learned_range", loss_type="simple"), "trains no variance"),
        (dict(variance="learned_range", loss_type="hybrid"), "channels"),
        (dict(x0=torch.zeros(4, 3, dtype=torch.long)), "floating"),
        (dict(model=lambda x, tt: x[:, :2]), "output shape"),
    ]
    for over, msg in bad:
        kw = dict(model=model, schedule=sched, x0=x0, t=t) | over
        with pytest.raises(ValueError, match=msg):
            training_losses(kw.pop("model"), kw.pop("schedule"), kw.pop("x0"), kw.pop("t"), **kw)
    assert Decoder.parse("gaussian") is Decoder.GAUSSIAN


def test_uniform_sampler():
    s = UniformSampler(7)
    t, w = s.sample(1000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < 7 and torch.all(w == 1)
    t2, _ = s.sample(1000, torch.Generator().manual_seed(0))
    assert torch.equal(t, t2)
    with pytest.raises(ValueError, match="batch_size"):
        s.sample(0)


def test_importance_sampler_is_unbiased():
    T = 20
    s = LossSecondMomentSampler(T, history=3, uniform_prob=0.05)
    true_loss = (
        torch.linspace(0.1, 5.0, T, dtype=F64) ** 2
    )  # E[L_t]; losses at t are L_t * (1 +- 0.5)
    g = torch.Generator().manual_seed(4)
    while not s.warmed_up:
        torch.testing.assert_close(s.probabilities(), torch.full((T,), 1 / T, dtype=F64))
        t, _ = s.sample(16, g)
        s.update(t, true_loss[t] * (1 + 0.5 * torch.randn(16, generator=g, dtype=F64).sign()))
    p = s.probabilities()
    second = s.state_dict()["losses"].pow(2).mean(1).sqrt()
    torch.testing.assert_close(p, 0.95 * second / second.sum() + 0.05 / T)
    assert float(p.max() / p.min()) > 10  # far from uniform
    # exact: sum_t p_t w_t L_t = mean_t L_t
    torch.testing.assert_close((p / (T * p) * true_loss).sum(), true_loss.mean())
    # Monte Carlo: E[w L_t] over the sampler equals mean_t L_t
    t, w = s.sample(200_000, g)
    est = w.double() * true_loss[t]
    assert abs(float(est.mean() - true_loss.mean())) < 4 * float(est.std()) / math.sqrt(200_000)


def test_importance_sampler_history_and_validation():
    s = LossSecondMomentSampler(2, history=2)
    s.update(torch.tensor([0, 0, 0, 1, 1]), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    losses = s.state_dict()["losses"]
    assert sorted(losses[0].tolist()) == [2.0, 3.0] and sorted(losses[1].tolist()) == [4.0, 5.0]
    again = LossSecondMomentSampler(2, history=2)
    again.load_state_dict(s.state_dict())
    torch.testing.assert_close(again.probabilities(), s.probabilities())
    assert UniformSampler(2).state_dict() == {}
    for kw, msg in [
        (dict(history=0), "history"),
        (dict(uniform_prob=0.0), "uniform_prob"),
        (dict(uniform_prob=1.5), "uniform_prob"),
    ]:
        with pytest.raises(ValueError, match=msg):
            LossSecondMomentSampler(5, **kw)
    with pytest.raises(ValueError, match="outside"):
        s.update(torch.tensor([2]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="sizes"):
        s.update(torch.tensor([0, 1]), torch.tensor([1.0]))
