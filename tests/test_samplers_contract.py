"""The contract every sampler in ``ddkit.samplers.SAMPLERS`` must meet (with default options):
any n, any spacing, the first model call at timesteps[0], every timestep visited in order,
shape/dtype kept, finite output, reproducible from a seeded generator, clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from ddkit.diffusion.schedule import SPACINGS, NoiseSchedule
from ddkit.samplers import (
    SAMPLERS,
    get_sampler,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_pc,
)
from ddkit.verify.oracle import mixture_2d, mixture_lowrank

T = 1000
NAMES = sorted(SAMPLERS)
STOCHASTIC = {"ddpm", "euler_maruyama", "pc"}
DETERMINISTIC = {"ddim", "heun", "dpmpp_2m", "dpmpp_3m", "adams2", "adams3"}

_SCHEDULE = NoiseSchedule.make("linear", T)
_MIX = mixture_2d()


class Recorder:
    """Wraps a denoiser and records the timestep of every model evaluation."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.schedule = denoiser.schedule
        self.calls: list[int] = []

    def __call__(self, x, t):
        self.calls.append(int(t))
        return self.denoiser(x, t)


def _x_T(n=8, d=2, seed=0, dtype=torch.float32, shape=None):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape or (n, d), generator=g, dtype=dtype)


def _run(name, x, ts, *, seed=1, denoiser=None, callback=None):
    den = denoiser if denoiser is not None else _MIX.denoiser(_SCHEDULE)
    g = None if seed is None else torch.Generator().manual_seed(seed)
    return SAMPLERS[name](den, x, ts, generator=g, callback=callback)


@pytest.mark.parametrize("n", [1, 2, 5, 17])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("name", NAMES)
def test_any_n_any_spacing(name, spacing, n):
    ts = _SCHEDULE.timesteps(n, spacing)
    rec = Recorder(_MIX.denoiser(_SCHEDULE))
    seen = []

    def callback(i, t, x_t, x0):
        assert x_t.shape == x.shape and x0.shape == x.shape
        seen.append((i, t))

    x = _x_T()
    out = _run(name, x, ts, denoiser=rec, callback=callback)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.all(torch.isfinite(out))
    assert rec.calls[0] == ts[0]
    assert seen == list(enumerate(ts))  # each listed timestep, once, in order
    # model calls only at listed timesteps, never going back up, covering all of them
    assert set(rec.calls) <= set(ts)
    assert all(a >= b for a, b in zip(rec.calls, rec.calls[1:]))
    assert sorted(set(rec.calls), reverse=True) == ts
    assert len(rec.calls) == SAMPLERS[name].nfe(n)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spacing", [s for s in SPACINGS if s not in ("leading", "ddim_quadratic")])
def test_first_call_at_custom_t_max(name, spacing):
    ts = _SCHEDULE.timesteps(6, spacing, t_max=500)
    assert ts[0] == 500
    rec = Recorder(_MIX.denoiser(_SCHEDULE))
    out = _run(name, _x_T(), ts, denoiser=rec)
    assert rec.calls[0] == 500
    assert torch.all(torch.isfinite(out))


@pytest.mark.parametrize("name", NAMES)
def test_user_list_of_timesteps(name):
    ts = [900, 613, 250, 3]
    rec = Recorder(_MIX.denoiser(_SCHEDULE))
    _run(name, _x_T(), ts, denoiser=rec)
    assert rec.calls[0] == 900 and sorted(set(rec.calls), reverse=True) == ts


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_dtype_is_kept(name, dtype):
    x = _x_T(dtype=dtype)
    out = _run(name, x, _SCHEDULE.timesteps(4, "trailing"))
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.all(torch.isfinite(out))


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output(name):
    ts = _SCHEDULE.timesteps(5, "trailing")
    a = _run(name, _x_T(), ts, seed=123)
    b = _run(name, _x_T(), ts, seed=123)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_seed_dependence(name):
    ts = _SCHEDULE.timesteps(5, "trailing")
    a = _run(name, _x_T(), ts, seed=1)
    b = _run(name, _x_T(), ts, seed=2)
    if name in STOCHASTIC:
        assert not torch.equal(a, b)
        assert torch.all((a - b).abs().sum(1) > 0)  # every example gets its own noise
    elif name in DETERMINISTIC:
        c = _run(name, _x_T(), ts, seed=None)
        assert torch.equal(a, b) and torch.equal(a, c)
    else:
        pytest.fail(f"sampler {name!r} is new: add it to STOCHASTIC or DETERMINISTIC")


def test_ddim_eta_controls_stochasticity():
    ts = _SCHEDULE.timesteps(5, "trailing")
    den = _MIX.denoiser(_SCHEDULE)

    def run(seed, eta):
        return sample_ddim(den, _x_T(), ts, generator=torch.Generator().manual_seed(seed), eta=eta)

    assert torch.equal(run(1, 0.0), run(2, 0.0))
    assert not torch.equal(run(1, 1.0), run(2, 1.0))
    assert torch.equal(run(1, 0.5), run(1, 0.5))


@pytest.mark.parametrize("name", NAMES)
def test_image_shaped_input_equals_flat_input(name):
    """[N, C, H, W] works, and gives what the same sampler gives on the flattened [N, C*H*W]
    (same data, same noise stream): samplers must not depend on the layout."""
    mix = mixture_lowrank(dim=12, seed=1)
    den = mix.denoiser(_SCHEDULE)
    x_img = _x_T(shape=(5, 3, 2, 2), dtype=torch.float64)
    ts = _SCHEDULE.timesteps(6, "linspace")
    out_img = _run(name, x_img, ts, denoiser=den, seed=7)
    out_flat = _run(name, x_img.reshape(5, 12), ts, denoiser=den, seed=7)
    assert out_img.shape == x_img.shape
    assert torch.allclose(out_img.reshape(5, 12), out_flat, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_zero_terminal_snr_finite_or_clear_error(name):
    """From alpha_bar = 0 a sampler either works (finite output) or refuses with ValueError."""
    sched = NoiseSchedule.make("linear", T, zero_terminal_snr=True)
    den = _MIX.denoiser(sched)  # x0-prediction: defined at zero SNR
    ts = sched.timesteps(10, "trailing")
    assert ts[0] == T - 1
    try:
        out = SAMPLERS[name](
            den, _x_T(dtype=torch.float64), ts, generator=torch.Generator().manual_seed(0)
        )
    except ValueError as err:
        assert "SNR" in str(err) or "snr" in str(err)
        return
    assert torch.all(torch.isfinite(out))


# -- bad inputs -------------------------------------------------------------------------------

BAD_TIMESTEPS = {  # case: (timesteps, text the error must contain)
    "increasing": ([900, 10, 500], "10 is followed by 500"),
    "repeated": ([900, 500, 500, 10], "500"),
    "too-large": ([T + 7, 500], str(T + 7)),
    "negative": ([500, 3, -1], "-1"),
    "empty": ([], "empty"),
}


@pytest.mark.parametrize("case", list(BAD_TIMESTEPS))
@pytest.mark.parametrize("name", NAMES)
def test_bad_timesteps_raise(name, case):
    rec = Recorder(_MIX.denoiser(_SCHEDULE))
    seq, named = BAD_TIMESTEPS[case]
    with pytest.raises(ValueError) as err:
        _run(name, _x_T(), seq, denoiser=rec)
    assert named in str(err.value)  # the error names the bad value
    assert rec.calls == []  # refused before any model call


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "x",
    [
        torch.zeros(4, 2, dtype=torch.long),
        torch.zeros(4, 2, dtype=torch.int32),
        torch.zeros(4, 2, dtype=torch.bool),
        torch.zeros(2),  # not batched
    ],
    ids=["int64", "int32", "bool", "unbatched"],
)
def test_bad_x_raises(name, x):
    with pytest.raises(ValueError):
        _run(name, x, [500, 10])


@pytest.mark.parametrize("name", NAMES)
def test_non_integer_timesteps_raise(name):
    with pytest.raises(ValueError):
        _run(name, _x_T(), [500.7, 10.2])


@pytest.mark.parametrize("eta", [-0.1, -1.0, float("nan")])
def test_negative_eta_raises(eta):
    with pytest.raises(ValueError, match="eta"):
        sample_ddim(_MIX.denoiser(_SCHEDULE), _x_T(), [500, 10], eta=eta)


def test_bad_sampler_options_raise():
    den = _MIX.denoiser(_SCHEDULE)
    x = _x_T()
    with pytest.raises(ValueError, match="variance"):
        sample_ddpm(den, x, [500, 10], variance="learned")
    with pytest.raises(ValueError, match="order"):
        sample_dpmpp_2m(den, x, [500, 10], order=4)
    with pytest.raises(ValueError, match="snr"):
        sample_pc(den, x, [500, 10], snr=-0.1)
    with pytest.raises(ValueError, match="corrector_steps"):
        sample_pc(den, x, [500, 10], corrector_steps=-1)


def test_get_sampler():
    for name in NAMES:
        assert get_sampler(name) is SAMPLERS[name]
    with pytest.raises(ValueError) as err:
        get_sampler("ddim25")
    msg = str(err.value)
    assert "ddim25" in msg
    for name in NAMES:
        assert name in msg


def test_nfe_matches_documented_costs():
    n = 7
    assert SAMPLERS["ddim"].nfe(n) == n
    assert SAMPLERS["ddpm"].nfe(n) == n == SAMPLERS["ddpm"].nfe(n, variance="fixed_large")
    assert SAMPLERS["ddpm"].nfe(n, variance="tweedie", probes=3) == 6 * n
    assert SAMPLERS["ddpm"].nfe(n, variance="tweedie_jacobian") == 2 * n
    assert SAMPLERS["ddpm"].nfe(n, variance="tweedie_jacobian", krylov=3) == 6 * n
    assert SAMPLERS["heun"].nfe(n) == 2 * n - 1
    assert SAMPLERS["pc"].nfe(n) == 2 * n
    assert SAMPLERS["pc"].nfe(n, corrector_steps=3) == 4 * n
    rec = Recorder(_MIX.denoiser(_SCHEDULE))
    sample_pc(rec, _x_T(), _SCHEDULE.timesteps(n, "trailing"), corrector_steps=3)
    assert len(rec.calls) == 4 * n


def test_callback_sees_the_current_state():
    """callback(i, t, x_t, x0_hat): x_t is the sampler's state before step i and x0_hat the
    denoiser's estimate at (x_t, t)."""
    den = _MIX.denoiser(_SCHEDULE)
    ts = _SCHEDULE.timesteps(4, "trailing")
    x = _x_T(dtype=torch.float64)
    states = []
    out = sample_ddim(
        den, x, ts, callback=lambda i, t, x_t, x0: states.append((t, x_t.clone(), x0))
    )
    assert torch.equal(states[0][1], x)
    for t, x_t, x0 in states:
        _, x0_exp = den(x_t, t)
        assert torch.allclose(x0, x0_exp)
    assert math.isfinite(float(out.sum()))
