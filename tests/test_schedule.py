"""Noise schedules and timestep selection, checked against closed forms and invariants.

Notation as in ``ddkit.diffusion.schedule``: index t in {0..T-1} is the paper's t + 1;
alpha_bar(DATA) = 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ddkit.diffusion.schedule import (
    DATA,
    SCHEDULES,
    SPACINGS,
    NoiseSchedule,
    cosine_betas,
    linear_betas,
    make_betas,
    rescale_zero_terminal_snr,
    timesteps,
)

T = 1000
N_STEPS = (1, 2, 3, 7, 10, 50, 333, 999, 1000)
ALL_SCHEDULES = [(name, ztsnr) for name in SCHEDULES for ztsnr in (False, True)]


def _schedule_id(p):
    return f"{p[0]}{'-ztsnr' if p[1] else ''}"


# -- beta schedules ---------------------------------------------------------------------------


def test_linear_T1000_is_exactly_the_ddpm_linspace():
    assert np.array_equal(linear_betas(1000), np.linspace(1e-4, 0.02, 1000))
    assert np.array_equal(make_betas("linear", 1000), np.linspace(1e-4, 0.02, 1000))


@pytest.mark.parametrize("T_", [21, 50, 100, 250, 999, 1000, 4000])
def test_linear_other_T_is_scaled_by_1000_over_T(T_):
    scale = 1000 / T_
    expected = np.linspace(1e-4 * scale, 0.02 * scale, T_)
    np.testing.assert_allclose(linear_betas(T_), expected, rtol=1e-14, atol=0)
    # sum(beta) = T (lo + hi) / 2 = 1000 (1e-4 + 0.02) / 2: the same integrated beta for every T
    assert math.isclose(linear_betas(T_).sum(), 1000 * (1e-4 + 0.02) / 2, rel_tol=1e-12)


@pytest.mark.parametrize("T_", [0, 1, 5, 20, -3])
def test_linear_T_too_small_raises(T_):
    with pytest.raises(ValueError, match="T"):
        linear_betas(T_)


@pytest.mark.parametrize("T_", [1.5, True, "1000"])
def test_T_must_be_an_integer(T_):
    with pytest.raises(ValueError):
        linear_betas(T_)
    with pytest.raises(ValueError):
        cosine_betas(T_)


@pytest.mark.parametrize("T_", [10, 100, 1000, 4000])
def test_cosine_matches_nichol_dhariwal_eq17(T_):
    s = 0.008

    def f(t):
        return math.cos((t / T_ + s) / (1 + s) * math.pi / 2) ** 2

    # alpha_bar at index t is the paper's alpha_bar(t + 1) = f(t + 1) / f(0)
    expected_ab = np.array([f(t + 1) / f(0) for t in range(T_)])
    expected_betas = 1.0 - expected_ab / np.concatenate([[1.0], expected_ab[:-1]])
    betas = cosine_betas(T_)
    clipped = expected_betas > 0.999
    np.testing.assert_allclose(betas[~clipped], expected_betas[~clipped], rtol=1e-9, atol=1e-15)
    assert np.all(betas[clipped] == 0.999)
    assert np.all(betas <= 0.999)
    # alpha_bar itself agrees up to the first clipped beta
    ab = NoiseSchedule.make("cosine", T_).alphas_cumprod
    first_clip = int(np.argmax(clipped)) if clipped.any() else T_
    np.testing.assert_allclose(ab[:first_clip], expected_ab[:first_clip], rtol=1e-9)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T_", [50, 1000])
def test_zero_terminal_snr_rescale(name, T_):
    original = NoiseSchedule.make(name, T_)
    rescaled = NoiseSchedule.make(name, T_, zero_terminal_snr=True)
    ab0, ab1 = original.alphas_cumprod, rescaled.alphas_cumprod
    assert ab1[-1] == 0.0
    assert rescaled.betas[-1] == 1.0
    assert math.isclose(ab1[0], ab0[0], rel_tol=1e-12)
    # sqrt(ab1) = p sqrt(ab0) + q: the residual of a least-squares affine fit is at rounding level
    x, y = np.sqrt(ab0), np.sqrt(ab1)
    design = np.stack([x, np.ones_like(x)], axis=1)
    (p, q), *_ = np.linalg.lstsq(design, y, rcond=None)
    np.testing.assert_allclose(p * x + q, y, atol=1e-12)
    # and the affine map is the one fixed by the two ends (Lin et al. 2024, Algorithm 1)
    p_exp = x[0] / (x[0] - x[-1])
    assert math.isclose(p, p_exp, rel_tol=1e-9)
    assert math.isclose(q, -x[-1] * p_exp, rel_tol=1e-9, abs_tol=1e-12)
    np.testing.assert_allclose(rescale_zero_terminal_snr(original.betas), rescaled.betas)


@pytest.mark.parametrize("sched", ALL_SCHEDULES, ids=_schedule_id)
@pytest.mark.parametrize("T_", [30, 1000])
def test_alpha_bar_strictly_decreasing_and_in_range(sched, T_):
    s = NoiseSchedule.make(sched[0], T_, zero_terminal_snr=sched[1])
    ab = s.alphas_cumprod
    assert np.all(np.diff(ab) < 0)
    assert 0.0 < ab[0] < 1.0
    assert ab[-1] >= 0.0
    np.testing.assert_allclose(ab, np.cumprod(1.0 - s.betas), rtol=1e-12, atol=0)


@pytest.mark.parametrize("sched", ALL_SCHEDULES, ids=_schedule_id)
def test_posterior_variance_at_most_beta(sched):
    s = NoiseSchedule.make(sched[0], T, zero_terminal_snr=sched[1])
    assert np.all(s.posterior_variance <= s.betas)
    assert np.all(s.posterior_variance >= 0)
    assert s.posterior_variance[0] == 0.0  # q(x_0 | x_1, x_0) is a point mass
    # the clipped log replaces only the first (zero) entry
    np.testing.assert_allclose(
        s.posterior_log_variance_clipped[1:], np.log(s.posterior_variance[1:]), rtol=1e-12
    )
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]


@pytest.mark.parametrize("sched", ALL_SCHEDULES, ids=_schedule_id)
def test_all_tables_are_float64_length_T(sched):
    s = NoiseSchedule.make(sched[0], T, zero_terminal_snr=sched[1])
    names = [
        "betas",
        "alphas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "posterior_variance",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "posterior_log_variance_clipped",
        "log_snr",
    ]
    for name in names:
        arr = getattr(s, name)
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float64, name
        assert arr.shape == (T,), name
    np.testing.assert_array_equal(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    assert s.alphas_cumprod_prev[0] == 1.0


def test_alpha_bar_accessor():
    s = NoiseSchedule.make("linear", T)
    assert s.alpha_bar(DATA) == 1.0
    assert isinstance(s.alpha_bar(0), float)
    assert s.alpha_bar(0) == s.alphas_cumprod[0]
    assert s.alpha_bar(T - 1) == s.alphas_cumprod[-1]
    for bad in (T, -2):
        with pytest.raises(ValueError, match=str(bad)):
            s.alpha_bar(bad)


def test_unknown_schedule_lists_allowed():
    with pytest.raises(ValueError) as err:
        make_betas("sigmoid", T)
    assert "sigmoid" in str(err.value)
    for name in SCHEDULES:
        assert name in str(err.value)


# -- timesteps --------------------------------------------------------------------------------


def _sched():
    return NoiseSchedule.make("linear", T)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("t_max", [None, 499])
def test_timesteps_basic_contract(spacing, t_max):
    top = T - 1 if t_max is None else t_max
    if spacing == "ddim_quadratic":  # the DDIM code's selection ends at 0.8 (t_max + 1)
        top = math.floor(0.8 * (top + 1))
    for n in [n for n in N_STEPS if n <= top + 1] + [top + 1]:
        ts = _sched().timesteps(n, spacing, t_max=t_max)
        assert isinstance(ts, list) and len(ts) == n, (spacing, n)
        assert all(type(t) is int for t in ts)
        assert all(a > b for a, b in zip(ts, ts[1:])), (spacing, n)
        assert 0 <= ts[-1] and ts[0] <= top
        if spacing != "leading":
            assert ts[0] == top, (spacing, n)
        if n == top + 1:  # every index must then be used
            assert ts == list(range(top, -1, -1))


@pytest.mark.parametrize("t_max", [None, 499, 17])
def test_leading_is_multiples_of_the_stride(t_max):
    span = T if t_max is None else t_max + 1
    for n in [n for n in N_STEPS if n <= span]:
        c = span // n
        assert timesteps(T, n, "leading", t_max=t_max) == [k * c for k in range(n)][::-1]


def test_trailing_matches_diffusers_formula():
    for n in N_STEPS:
        ref = (np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1).tolist()
        assert timesteps(T, n, "trailing") == ref, n


@pytest.mark.parametrize("t_max", [None, 499])
def test_trailing_for_every_n_rounds_the_exact_grid(t_max):
    # exact rational grid x_k = span - k span / n = span (n - k) / n, in integer arithmetic; ties
    # (x_k = j + 1/2) may round either way: there the float arange of diffusers differs too
    span = T if t_max is None else t_max + 1
    for n in range(1, span + 1):
        ts = np.array(timesteps(T, n, "trailing", t_max=t_max))
        num = span * (n - np.arange(n))
        floor, rem = num // n, num % n
        tie = 2 * rem == n
        nearest = floor + (2 * rem > n)
        assert np.all(ts[~tie] == nearest[~tie] - 1), n
        assert np.all((ts[tie] == floor[tie] - 1) | (ts[tie] == floor[tie])), n


@pytest.mark.parametrize("t_max", [None, 499, 99])
def test_quadratic_matches_ddim_paper_form_without_collisions(t_max):
    top = T - 1 if t_max is None else t_max
    for n in (2, 3, 5, 10):
        # c = t_max / (n-1)^2 >= 1, so floor(c i^2) is already strictly increasing
        expected = [(top * i * i) // ((n - 1) ** 2) for i in range(n)][::-1]
        assert timesteps(T, n, "quadratic", t_max=t_max) == expected, n


def test_ddim_quadratic_is_the_ddim_codes_selection():
    """The DDIM authors' code: (np.linspace(0, np.sqrt(0.8 T), n) ** 2).astype(int), 0-indexed
    timesteps up to 800 for T = 1000.  Equal wherever that list is distinct (n < 30); from n = 30
    on it repeats indices near 0, which are made distinct here with the top ones unchanged."""
    for n in range(2, 30):
        code = (np.linspace(0, np.sqrt(0.8 * T), n) ** 2).astype(int)
        assert len(set(code)) == n
        assert timesteps(T, n, "ddim_quadratic") == code[::-1].tolist(), n
    for n in (50, 100):
        code = (np.linspace(0, np.sqrt(0.8 * T), n) ** 2).astype(int)
        ours = timesteps(T, n, "ddim_quadratic")[::-1]
        assert len(set(code)) < n and len(set(ours)) == n and ours[-1] == 800
        assert ours[n // 2 :] == code[n // 2 :].tolist()
    assert timesteps(T, 1, "ddim_quadratic") == [800]
    assert timesteps(T, 10, "ddim_quadratic", t_max=499)[0] == 400
    with pytest.raises(ValueError, match="ddim_quadratic.*n=802"):
        timesteps(T, 802, "ddim_quadratic")


def test_quadratic_denser_near_the_data():
    ts = timesteps(T, 20, "quadratic")
    gaps = -np.diff(ts)
    assert np.all(np.diff(gaps) <= 1)  # non-increasing gaps towards t = 0 (up to rounding)
    assert gaps[0] > 5 * gaps[-1]


@pytest.mark.parametrize(
    "name,t_max,n",
    [("linear", None, 10), ("linear", None, 20), ("cosine", 950, 20), ("cosine", 980, 10)],
)
def test_log_snr_is_uniform_in_log_snr(name, t_max, n):
    s = NoiseSchedule.make(name, T)
    ts = s.timesteps(n, "log_snr", t_max=t_max)
    gaps = np.diff(s.log_snr[ts])  # log-SNR grows as t falls
    assert np.all(gaps > 0)
    assert gaps.std() / gaps.mean() < 0.1, gaps
    # ... which the other spacings are not
    for other in ("leading", "trailing", "linspace"):
        g = np.diff(s.log_snr[s.timesteps(n, other, t_max=t_max)])
        assert g.std() / g.mean() > 0.2, (other, g)


def test_log_snr_needs_the_table():
    with pytest.raises(ValueError, match="log"):
        timesteps(T, 10, "log_snr")


def test_log_snr_with_zero_terminal_snr():
    s = NoiseSchedule.make("linear", T, zero_terminal_snr=True)
    for n in (1, 2, 10, 100, 1000):
        ts = s.timesteps(n, "log_snr")
        assert len(ts) == n and ts[0] == T - 1
        assert n == 1 or ts[-1] == 0
        assert all(a > b for a, b in zip(ts, ts[1:]))


def test_user_list_is_sorted_decreasing():
    assert timesteps(T, 4, [5, 999, 0, 17]) == [999, 17, 5, 0]
    assert timesteps(T, 3, np.array([3, 1, 2])) == [3, 2, 1]
    assert timesteps(T, None, [7]) == [7]


@pytest.mark.parametrize(
    "seq,n,named",
    [
        pytest.param([5, 3, 5], 3, "5", id="duplicate"),
        pytest.param([5, 3, 7, 1000], 4, "1000", id="too-large"),
        pytest.param([1, 2, 3, 4, 1234], 5, "1234", id="too-large-4th"),
        pytest.param([5, -1, 3], 3, "-1", id="negative"),
        pytest.param([5, 2.5, 3], 3, "2.5", id="float"),
        pytest.param([5, 3.0], 2, "3.0", id="integral-float"),
        pytest.param([5, True], 2, "True", id="bool"),
        pytest.param([5, 3, 1], 4, "4", id="n-mismatch"),
    ],
)
def test_user_list_validation_names_the_value(seq, n, named):
    with pytest.raises(ValueError) as err:
        timesteps(T, n, seq)
    assert named in str(err.value)


def test_user_list_errors_name_only_the_bad_values():
    msg = str(pytest.raises(ValueError, timesteps, T, 6, [17, 1000, 3, 2000, 9, -4]).value)
    assert all(v in msg for v in ("1000", "2000", "-4")) and "17" not in msg
    msg = str(pytest.raises(ValueError, timesteps, T, 6, [17, 250, 17, 9, 250, 8]).value)
    assert "17" in msg and "250" in msg and "9" not in msg and "8" not in msg


def test_user_list_empty_raises():
    with pytest.raises(ValueError):
        timesteps(T, 0, [])


def test_unknown_spacing_lists_allowed():
    with pytest.raises(ValueError) as err:
        timesteps(T, 10, "uniform")
    msg = str(err.value)
    assert "uniform" in msg
    for name in SPACINGS:
        assert name in msg


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("n,t_max", [(0, None), (-1, None), (1001, None), (501, 499), (2.0, None)])
def test_n_outside_range_raises(spacing, n, t_max):
    with pytest.raises(ValueError, match="n="):
        _sched().timesteps(n, spacing, t_max=t_max)


@pytest.mark.parametrize("t_max", [-1, 1000, 5.0])
def test_bad_t_max_raises(t_max):
    with pytest.raises(ValueError, match="t_max"):
        timesteps(T, 10, "trailing", t_max=t_max)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("n", [3, 10])
def test_log_snr_window_jumps_to_min_log_snr_then_uniform(name, n):
    s = NoiseSchedule.make(name, T)
    lam = s.log_snr
    ts = s.timesteps(n, "log_snr", min_log_snr=-4.0)
    assert len(ts) == n and ts[0] == T - 1 and ts[-1] == 0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    # the second step is the index whose log-SNR is nearest -4
    assert ts[1] == int(np.abs(lam - (-4.0)).argmin())
    gaps = np.diff(lam[ts[1:]])
    assert gaps.std() / gaps.mean() < 0.1, gaps


@pytest.mark.parametrize("rho", [1.2, 1.5, 2.0])
def test_log_snr_rho_places_points_at_the_power_law(rho):
    """Point k of m from the data end sits at lam_0 - (lam_0 - lo) (k / (m - 1))^rho: the
    log-SNR gaps shrink toward the data, and rho = 1 is the uniform grid."""
    s = NoiseSchedule.make("linear", T)
    lam = s.log_snr
    plain = s.timesteps(19, "log_snr", min_log_snr=-4.0)
    assert s.timesteps(19, "log_snr", min_log_snr=-4.0, rho=1.0) == plain
    ts = s.timesteps(19, "log_snr", min_log_snr=-4.0, rho=rho)
    assert len(ts) == 19 and ts[0] == T - 1 and ts[1] == plain[1] and ts[-1] == 0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    k = np.arange(18)[::-1]  # from the data end, for ts[1:]
    want = lam[0] - (lam[0] - lam[ts[1]]) * (k / 17) ** rho
    got = lam[ts[1:]]
    # each index is the nearest to its target, up to the neighbours' rounding
    step = np.abs(np.diff(lam)).max()
    far = np.abs(got - want) > step
    assert far.sum() <= 4 and not far[:12].any(), (got, want)  # only the crowded data end moves
    gaps = np.diff(got[:12])
    assert gaps[0] > gaps[-1]  # gaps shrink toward the data


@pytest.mark.parametrize("rho", [0, -1.0, float("inf"), float("nan"), True, "2"])
def test_bad_rho_raises(rho):
    s = NoiseSchedule.make("linear", T)
    with pytest.raises(ValueError, match="rho"):
        s.timesteps(10, "log_snr", rho=rho)


def test_rho_is_for_log_snr_spacings_only():
    s = NoiseSchedule.make("linear", T)
    with pytest.raises(ValueError, match="rho=1.5 shapes log_snr spacings, not 'trailing'"):
        s.timesteps(10, "trailing", rho=1.5)
    with pytest.raises(ValueError, match="rho=2 shapes log_snr spacings"):
        s.timesteps(3, [999, 500, 0], rho=2)
    assert s.timesteps(10, "log_snr_window", rho=1.5)[1] == s.timesteps(10, "log_snr_window")[1]
