"""FID / KID against closed forms and invariants."""

import numpy as np
import pytest
import scipy.linalg
import torch

from ddkit.evaluation.fid import FeatureStats, FIDWarning, feature_stats, frechet_distance, kid


def spd(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_of_diagonal_gaussians_closed_form():
    mu_a, mu_b = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    va, vb = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    a = FeatureStats(mu_a.double(), torch.diag(va).double(), 10)
    b = FeatureStats(mu_b.double(), torch.diag(vb).double(), 10)
    expected = float(((mu_a - mu_b) ** 2).sum() + ((va.sqrt() - vb.sqrt()) ** 2).sum())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_for_non_commuting_covariances():
    d = 12
    sa, sb = spd(d, 0), spd(d, 1)
    mu = torch.linspace(-1, 1, d, dtype=torch.float64)
    cross = scipy.linalg.sqrtm(sa.numpy() @ sb.numpy()).real
    expected = float(mu @ mu) + float(np.trace(sa.numpy() + sb.numpy() - 2 * cross))
    got = frechet_distance(FeatureStats(mu, sa, 100), FeatureStats(mu * 0, sb, 100))
    assert got == pytest.approx(expected, rel=1e-9)


def test_fid_of_a_set_with_itself_is_zero_and_symmetric():
    f = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    s = feature_stats(f)
    assert frechet_distance(s, s) == pytest.approx(0.0, abs=1e-9)
    t = feature_stats(f[:, torch.randperm(16)] * 1.5)
    assert frechet_distance(s, t) == pytest.approx(frechet_distance(t, s), rel=1e-9)


def test_too_few_samples_warns():
    with pytest.warns(FIDWarning, match="biased below N = 64"):
        feature_stats(torch.randn(40, 32))


def digits_pixels():
    sklearn = pytest.importorskip("sklearn.datasets")
    x = sklearn.load_digits().images.reshape(-1, 1, 8, 8) / 8.0 - 1.0
    return torch.as_tensor(x, dtype=torch.float64)


def test_fid_rises_monotonically_with_noise_and_blur_on_real_images():
    """Raw-pixel features of the 8x8 digits: more noise or more blur, larger distance."""
    x = digits_pixels()
    ref = feature_stats(x.flatten(1))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    by_noise = [
        frechet_distance(ref, feature_stats((x + s * noise).flatten(1)))
        for s in (0.05, 0.1, 0.2, 0.4, 0.8)
    ]
    assert all(a < b for a, b in zip(by_noise, by_noise[1:])), by_noise
    by_blur = []
    for sigma in (0.5, 0.8, 1.2, 2.0):
        k = torch.exp(-(torch.arange(-3, 4, dtype=torch.float64) ** 2) / (2 * sigma**2))
        k = k / k.sum()
        b = torch.nn.functional.conv2d(x, k.view(1, 1, 1, 7), padding=(0, 3))
        b = torch.nn.functional.conv2d(b, k.view(1, 1, 7, 1), padding=(3, 0))
        by_blur.append(frechet_distance(ref, feature_stats(b.flatten(1))))
    assert all(a < b for a, b in zip(by_blur, by_blur[1:])), by_blur


def test_kid_is_unbiased_near_zero_for_the_same_distribution_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 8, generator=g), torch.randn(2000, 8, generator=g)
    same = kid(a, b, subsets=50, subset_size=500, generator=g)
    assert abs(same.mean) < 3 * same.std / 50**0.5 + 1e-4
    shifted = kid(a, b + 0.3, subsets=50, subset_size=500, generator=g)
    assert shifted.mean > 10 * same.std


def test_bad_features_are_refused():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(feature_stats(torch.randn(50, 3)), feature_stats(torch.randn(50, 4)))
    with pytest.raises(ValueError, match="NaN"):
        feature_stats(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"\[N >= 2, d\]"):
        kid(torch.randn(5), torch.randn(5, 1))
