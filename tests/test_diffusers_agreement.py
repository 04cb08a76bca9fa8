"""Agreement of our samplers with Hugging Face diffusers' schedulers (a test-only dependency).

Each test gives diffusers' ``scheduler.step`` loop and our sampler the same x_T, the same
deterministic fake network and the same noise, and compares the numbers step by step.

Diffusers keeps its schedule in float32 (1 - alpha_bar at t=0 is off by 1.7e-4 relative); tests
about step arithmetic replace its tables by ours (float64) and run in float64, so the two agree to
rounding (``EXACT``).  Tests named ``*_stock_*`` keep diffusers' float32 tables and compare float32
runs to 1e-5 (``FLOAT32``).  DPM-Solver casts the sample to float32 inside ``step``, so its
comparisons use ``FLOAT32`` too.

Where diffusers departs from the mathematics, a test documents the difference and checks our
step against the paper's formula instead:
  * DDIM computes t_prev = t - T // n (diffusers issue #12633): wrong for "linspace" and for
    "trailing" when n does not divide T.
  * DDPM adds noise on the last step whenever its timestep is above 0 (Algorithm 2: z = 0 there).
  * "trailing" timesteps come from a float ``np.arange``, which for some n yields n + 1 steps
    ending at the invalid index -1, or rounds an exact .5 tie the other way.
  * DPM-Solver multistep with solver_order=3 and fewer than 15 steps lowers the order of the
    second-to-last step to 2 ("lower_order_final"); ours stays at order 3.
  * DPM-Solver++ of order >= 2: diffusers' last step (to sigma = 0) is first order and returns
    x0_hat; ours integrates that step by the trapezoid rule in sigma (ddkit's choice).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from ddkit.diffusion.denoiser import Denoiser
from ddkit.diffusion.parameterization import Prediction
from ddkit.diffusion.schedule import NoiseSchedule, timesteps
from ddkit.samplers.ddim import sample_ddim
from ddkit.samplers.ddpm import sample_ddpm
from ddkit.samplers.ode import sample_dpmpp, sample_dpmpp_2m

diffusers = pytest.importorskip(
    "diffusers",
    reason="diffusers is the reference for these agreement tests: pip install -e '.[test]'",
)

# diffusers' DPM-Solver set_timesteps calls np.array(tensor) in a way numpy 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

T = 1000
SCHEDULE = NoiseSchedule.make("linear", T)
AB = SCHEDULE.alphas_cumprod  # float64 alpha_bar, index t in 0..T-1
SHAPE = (4, 3, 8, 8)
PREDICTIONS = {"epsilon": Prediction.EPS, "sample": Prediction.X0, "v_prediction": Prediction.V}
EXACT = {"rtol": 1e-10, "atol": 1e-10}  # same float64 tables: agreement to rounding
FLOAT32 = {"rtol": 1e-5, "atol": 1e-5}  # float32 arithmetic on one side or both

# the fake network's "data": N(DATA_MEAN, DATA_VAR I), plus a small nonlinearity
DATA_MEAN, DATA_VAR, WIGGLE = 0.3, 0.25, 0.05


def fake_model(prediction: str):
    """A deterministic, smooth, nonlinear stand-in for a trained network, answering in diffusers'
    ``prediction`` parameterization.  x0_hat is the exact posterior mean of Gaussian data
    N(0.3, 0.25 I) plus 0.05 tanh(x_t), so trajectories stay O(1) and tolerances are absolute."""
    ab_table = torch.from_numpy(AB.copy())

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = ab_table[t.long()].to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        a, s = ab.sqrt(), (1.0 - ab).sqrt()
        gain = a * DATA_VAR / (ab * DATA_VAR + 1.0 - ab)
        x0 = DATA_MEAN + gain * (x - a * DATA_MEAN) + WIGGLE * torch.tanh(x)
        eps = (x - a * x0) / s
        return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[prediction]

    return model


def randn(seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def t_vec(t, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), int(t), dtype=torch.long)


def with_our_tables(scheduler):
    """Replace a DDPM/DDIM scheduler's float32 tables by ours (float64), so that a comparison
    isolates the step arithmetic."""
    scheduler.betas = torch.from_numpy(SCHEDULE.betas.copy())
    scheduler.alphas = torch.from_numpy(SCHEDULE.alphas.copy())
    scheduler.alphas_cumprod = torch.from_numpy(AB.copy())
    one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(scheduler, "final_alpha_cumprod"):  # DDIM, with set_alpha_to_one=True
        scheduler.final_alpha_cumprod = one
    if hasattr(scheduler, "one"):  # DDPM
        scheduler.one = one
    return scheduler


def with_our_sigmas(scheduler):
    """DPM-Solver reads sigma = sqrt((1 - ab) / ab) at its timesteps (then 0, the data) from a
    float32 table made by set_timesteps; replace it by ours in float64."""
    ab = AB[scheduler.timesteps.numpy()]
    scheduler.sigmas = torch.from_numpy(np.append(np.sqrt((1.0 - ab) / ab), 0.0))
    return scheduler


def diffusers_states(scheduler, model, x, noises=None, **step_kwargs) -> list[torch.Tensor]:
    """diffusers' sampling loop over scheduler.timesteps: [x_T, x after step 0, ..., final]."""
    states = [x]
    for i, t in enumerate(scheduler.timesteps):
        kwargs = dict(step_kwargs)
        if noises is not None:
            kwargs["variance_noise"] = noises[i]
        x = scheduler.step(model(x, t_vec(t, x)), t, x, **kwargs).prev_sample
        states.append(x)
    return states


def our_states(sampler, denoiser, x, ts, **kwargs) -> list[torch.Tensor]:
    """Our sampler's trajectory [x_T, x after step 0, ..., final], read through its callback."""
    states = []
    out = sampler(denoiser, x, ts, callback=lambda i, t, x_t, x0: states.append(x_t), **kwargs)
    return states + [out]


def assert_trajectories_close(ours, theirs, **tol):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b.to(a.dtype), msg=lambda m, i=i: f"state {i}: {m}", **tol)


def eps_x0(prediction: str, out: torch.Tensor, x: torch.Tensor, ab: float):
    """(eps, x0) from a network output, written out here independently of ddkit."""
    a, s = ab**0.5, (1.0 - ab) ** 0.5
    if prediction == "epsilon":
        return out, (x - s * out) / a
    if prediction == "sample":
        return (x - a * out) / s, out
    return s * x + a * out, a * x - s * out


# -- schedules and timesteps ----------------------------------------------------------------------


def test_linear_schedule_matches_diffusers_to_float32_rounding():
    theirs = diffusers.DDPMScheduler().alphas_cumprod.double().numpy()
    np.testing.assert_allclose(theirs, AB, rtol=1e-6, atol=3e-7)
    # diffusers forms 1 - beta in float32, which loses beta's low bits where beta ~ 1e-4
    rel = np.abs((1.0 - theirs[0]) / (1.0 - AB[0]) - 1.0)
    assert 1e-5 < rel < 1e-3


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_timesteps_equal_diffusers(spacing):
    scheduler = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=0)
    ns = [1, 2, 3, 7, 10, 20, 25, 50, 100, 250, 500, 999, 1000]
    if spacing == "leading":
        ns = range(1, T + 1)
    for n in ns:
        scheduler.set_timesteps(n)
        theirs = scheduler.timesteps.tolist()
        if spacing == "linspace" and n == 1:
            # np.linspace(0, T-1, 1) = [0]: diffusers' single step starts from nearly clean data;
            # ours starts at t_max, as every sampler must (DESIGN.md)
            assert (theirs, timesteps(T, 1, spacing)) == ([0], [T - 1])
            continue
        assert timesteps(T, n, spacing) == theirs, f"n={n}"


def test_trailing_timesteps_differ_from_diffusers_only_by_its_float_arange():
    """Diffusers builds "trailing" as round(np.arange(T, 0, -T/n)) - 1.  The float arange yields
    n + 1 elements for some n (the extra one is the invalid index -1) and accumulates rounding
    error, so exact .5 ties T - k T/n round differently.  Ours rounds the exact value k T / n
    (half to even).  Every difference over n = 1..T is one of these two."""
    scheduler = diffusers.DDIMScheduler(timestep_spacing="trailing", steps_offset=0)
    extra_step, ties = [], []
    for n in range(1, T + 1):
        scheduler.set_timesteps(n)
        theirs, ours = scheduler.timesteps.tolist(), timesteps(T, n, "trailing")
        if theirs == ours:
            continue
        if len(theirs) == n + 1:
            assert theirs[-1] == -1, f"n={n}"
            extra_step.append(n)
            continue
        assert len(theirs) == n, f"n={n}"
        for k, (a, b) in enumerate(zip(theirs, ours)):
            if a != b:
                exact = T - Fraction(k * T, n)
                assert exact - int(exact) == Fraction(1, 2), f"n={n}, k={k}: not a tie"
                assert b == round(exact) - 1 and abs(a - b) == 1, f"n={n}, k={k}"
        ties.append(n)
    # documents diffusers 0.42's behaviour; if this fails, diffusers changed and so may this test
    assert 61 in extra_step and 48 in ties
    assert all(T % n for n in extra_step + ties)  # n dividing T is never affected


# -- DDPM
# -------------------------------------------------------------------------------------------


def our_ddpm_one_step(prediction, x_t, t, variance, seed):
    """Our DDPM step t -> t-1 with noise from a generator seeded ``seed``: the state after the
    first step of sample_ddpm on [t, t-1] (the last step, to the data, adds no noise; at t=0
    the one step is that last step)."""
    denoiser = Denoiser(fake_model(prediction), SCHEDULE, PREDICTIONS[prediction])
    g = torch.Generator().manual_seed(seed)
    if t == 0:
        return sample_ddpm(denoiser, x_t, [0], generator=g, variance=variance)
    states = our_states(sample_ddpm, denoiser, x_t, [t, t - 1], generator=g, variance=variance)
    return states[1]


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction", list(PREDICTIONS))
@pytest.mark.parametrize("t", [0, 1, 500, 998, 999])
def test_ddpm_one_step_matches_diffusers(t, prediction, variance):
    scheduler = with_our_tables(
        diffusers.DDPMScheduler(
            variance_type=variance, prediction_type=prediction, clip_sample=False
        )
    )
    x_t = randn(1)
    out = fake_model(prediction)(x_t, t_vec(t, x_t))
    g = torch.Generator().manual_seed(7)
    theirs = scheduler.step(out, t, x_t, generator=g).prev_sample
    ours = our_ddpm_one_step(prediction, x_t, t, variance, seed=7)
    torch.testing.assert_close(ours, theirs, **EXACT)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("t", [0, 1, 500, 999])
def test_ddpm_one_step_is_algorithm_2(t, variance):
    """Ho et al. (2020) Algorithm 2, line 4, from the betas alone:
    x_{t-1} = (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t) + sigma_t z, z = 0 at t = 1
    (our index 0), sigma^2 = beta_t or beta-tilde_t.  At that last step no noise is added, so
    fixed_large's value there (beta_0, or beta-tilde_1 in Ho's log-variance table) never matters
    for sampling; diffusers adds none at t = 0 either."""
    betas = np.linspace(1e-4, 0.02, T)
    ab = np.cumprod(1.0 - betas)
    ab_prev = 1.0 if t == 0 else ab[t - 1]
    sigma2 = betas[t] if variance == "fixed_large" else betas[t] * (1 - ab_prev) / (1 - ab[t])
    x_t = randn(2)
    eps = fake_model("epsilon")(x_t, t_vec(t, x_t))
    z = torch.zeros_like(x_t) if t == 0 else randn(9)  # the generator's first draw
    expected = (x_t - betas[t] / np.sqrt(1 - ab[t]) * eps) / np.sqrt(1 - betas[t])
    expected = expected + np.sqrt(sigma2) * z
    ours = our_ddpm_one_step("epsilon", x_t, t, variance, seed=9)
    torch.testing.assert_close(ours, expected, **EXACT)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction", list(PREDICTIONS))
@pytest.mark.parametrize("source", ["leading-50", "quadratic-20"])
def test_ddpm_trajectory_matches_diffusers(source, prediction, variance):
    """Whole ancestral trajectories on a sub-sequence ending at t = 0, same generator seed:
    diffusers' "leading" timesteps, or our "quadratic" list passed to it as custom timesteps."""
    scheduler = with_our_tables(
        diffusers.DDPMScheduler(
            variance_type=variance,
            prediction_type=prediction,
            clip_sample=False,
            timestep_spacing="leading",
        )
    )
    spacing, n = source.split("-")
    if spacing == "leading":
        scheduler.set_timesteps(int(n))
    else:
        scheduler.set_timesteps(timesteps=timesteps(T, int(n), spacing))
    ts = scheduler.timesteps.tolist()
    assert ts[-1] == 0
    model = fake_model(prediction)
    x_T = randn(3)
    theirs = diffusers_states(scheduler, model, x_T, generator=torch.Generator().manual_seed(5))
    denoiser = Denoiser(model, SCHEDULE, PREDICTIONS[prediction])
    g = torch.Generator().manual_seed(5)
    ours = our_states(sample_ddpm, denoiser, x_T, ts, generator=g, variance=variance)
    assert_trajectories_close(ours, theirs, **EXACT)


def test_ddpm_stock_float32_trajectory_matches_diffusers():
    scheduler = diffusers.DDPMScheduler(clip_sample=False, timestep_spacing="leading")
    scheduler.set_timesteps(50)
    model = fake_model("epsilon")
    x_T = randn(4, torch.float32)
    theirs = diffusers_states(scheduler, model, x_T, generator=torch.Generator().manual_seed(6))
    denoiser = Denoiser(model, SCHEDULE, Prediction.EPS)
    g = torch.Generator().manual_seed(6)
    ours = our_states(sample_ddpm, denoiser, x_T, scheduler.timesteps.tolist(), generator=g)
    assert ours[-1].dtype == torch.float32
    assert_trajectories_close(ours, theirs, **FLOAT32)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_diffusers_adds_noise_on_last_step_above_t0(variance):
    """diffusers adds noise whenever t > 0, so when the last timestep is above 0 ("trailing":
    T/n - 1) its final step to the data is noisy: std sqrt(1 - ab_t) for fixed_large (beta of
    the step t -> data), and 1e-10 for fixed_small (beta-tilde = 0, clamped at 1e-20).  We follow
    Algorithm 2 (z = 0 on the last step): the result is x0_hat.  All earlier states agree."""
    n, seed = 20, 11
    scheduler = with_our_tables(
        diffusers.DDPMScheduler(
            variance_type=variance, clip_sample=False, timestep_spacing="trailing"
        )
    )
    scheduler.set_timesteps(n)
    ts = scheduler.timesteps.tolist()
    last = ts[-1]
    assert last == T // n - 1 == 49
    model = fake_model("epsilon")
    x_T = randn(8)
    theirs = diffusers_states(scheduler, model, x_T, generator=torch.Generator().manual_seed(seed))
    denoiser = Denoiser(model, SCHEDULE, Prediction.EPS)
    g = torch.Generator().manual_seed(seed)
    ours = our_states(sample_ddpm, denoiser, x_T, ts, generator=g, variance=variance)
    assert_trajectories_close(ours[:-1], theirs[:-1], **EXACT)
    # ours: the posterior mean with ab_prev = 1, which is x0_hat
    _, x0_hat = eps_x0("epsilon", model(ours[-2], t_vec(last, x_T)), ours[-2], AB[last])
    torch.testing.assert_close(ours[-1], x0_hat, **EXACT)
    # theirs: the same plus std * z, z the generator's n-th draw
    draws = torch.Generator().manual_seed(seed)
    z = [torch.randn(SHAPE, generator=draws, dtype=torch.float64) for _ in range(n)][-1]
    std = np.sqrt(1.0 - AB[last]) if variance == "fixed_large" else 1e-10
    torch.testing.assert_close(theirs[-1] - ours[-1], std * z, **EXACT)


# -- DDIM
# -------------------------------------------------------------------------------------------


def ddim_scheduler(prediction, spacing, n, stock=False):
    scheduler = diffusers.DDIMScheduler(
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type=prediction,
        timestep_spacing=spacing,
    )
    if not stock:
        with_our_tables(scheduler)
    scheduler.set_timesteps(n)
    return scheduler


@pytest.mark.parametrize("spacing_n", [("leading", 7), ("leading", 50), ("trailing", 10)])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prediction", list(PREDICTIONS))
def test_ddim_trajectory_matches_diffusers(prediction, eta, spacing_n):
    """Whole DDIM trajectories, on spacings where diffusers' t - T//n is the next listed step.
    With eta > 0 diffusers gets our generator's draws as variance_noise (its last step has
    sigma = 0, where we draw nothing)."""
    spacing, n = spacing_n
    scheduler = ddim_scheduler(prediction, spacing, n)
    ts = scheduler.timesteps.tolist()
    assert ts == timesteps(T, n, spacing)
    assert all(a - b == T // n for a, b in zip(ts, ts[1:]))
    model = fake_model(prediction)
    x_T = randn(3)
    draws = torch.Generator().manual_seed(21)
    noises = [torch.randn(SHAPE, generator=draws, dtype=torch.float64) for _ in range(n)]
    theirs = diffusers_states(scheduler, model, x_T, noises=noises, eta=eta)
    denoiser = Denoiser(model, SCHEDULE, PREDICTIONS[prediction])
    g = torch.Generator().manual_seed(21)
    ours = our_states(sample_ddim, denoiser, x_T, ts, generator=g, eta=eta)
    assert_trajectories_close(ours, theirs, **EXACT)


@pytest.mark.parametrize("prediction", list(PREDICTIONS))
def test_ddim_stock_float32_trajectory_matches_diffusers(prediction):
    scheduler = ddim_scheduler(prediction, "trailing", 50, stock=True)
    model = fake_model(prediction)
    x_T = randn(4, torch.float32)
    theirs = diffusers_states(scheduler, model, x_T, eta=0.0)
    denoiser = Denoiser(model, SCHEDULE, PREDICTIONS[prediction])
    ours = our_states(sample_ddim, denoiser, x_T, scheduler.timesteps.tolist())
    assert_trajectories_close(ours, theirs, **FLOAT32)


def ddim_eq12(prediction, out, x_t, ab_t, ab_prev):
    """DDIM eq. 12 with eta = 0: sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) eps_hat."""
    eps, x0 = eps_x0(prediction, out, x_t, ab_t)
    return np.sqrt(ab_prev) * x0 + np.sqrt(1.0 - ab_prev) * eps


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing_n", [("linspace", 10), ("trailing", 7)])
def test_ddim_diffusers_previous_timestep_is_not_the_next_listed_one(spacing_n, prediction):
    """diffusers' DDIMScheduler.step takes t_prev = t - T // n (issue #12633), which is not the
    next element of its own list for "linspace" (and for "trailing" when n does not divide T),
    so it integrates to a different noise level than the one it evaluates the model at next.
    We read t_prev from the list: our step is eq. 12 with alpha_bar_prev = alpha_bar[next t].
    For trailing n = 7 its last step even ends at t = 0 (alpha_bar = 0.9999), not at the data."""
    spacing, n = spacing_n
    scheduler = ddim_scheduler(prediction, spacing, n)
    ts = scheduler.timesteps.tolist()
    assert ts == timesteps(T, n, spacing)
    their_prev = [t - T // n for t in ts]
    mismatched = [i for i in range(n - 1) if their_prev[i] != ts[i + 1]]
    assert mismatched, "diffusers now steps to the listed timestep: drop this test"
    model = fake_model(prediction)
    denoiser = Denoiser(model, SCHEDULE, PREDICTIONS[prediction])
    for i in [*mismatched, n - 1]:
        t = ts[i]
        x_t = randn(30 + i)
        out = model(x_t, t_vec(t, x_t))
        ours = our_states(sample_ddim, denoiser, x_t, ts[i:])[1]
        our_prev = ts[i + 1] if i < n - 1 else None
        ab_prev = AB[our_prev] if our_prev is not None else 1.0
        torch.testing.assert_close(ours, ddim_eq12(prediction, out, x_t, AB[t], ab_prev), **EXACT)
        theirs = scheduler.step(out, t, x_t).prev_sample
        their_ab_prev = AB[their_prev[i]] if their_prev[i] >= 0 else 1.0
        expected = ddim_eq12(prediction, out, x_t, AB[t], their_ab_prev)
        torch.testing.assert_close(theirs, expected, **EXACT)
        if their_prev[i] != our_prev and their_prev[i] >= 0:  # far beyond rounding
            assert not torch.allclose(theirs, ours, **FLOAT32)
    if spacing == "trailing":
        assert ts[-1] == T // n and their_prev[-1] == 0


# -- DPM-Solver++ (multistep)
# -----------------------------------------------------------------------


def dpm_scheduler(prediction, spacing, n, order=2, lower_order_final=True, stock=False):
    scheduler = diffusers.DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++",
        solver_order=order,
        solver_type="midpoint",
        lower_order_final=lower_order_final,
        final_sigmas_type="zero",
        prediction_type=prediction,
        timestep_spacing=spacing,
        steps_offset=0,
    )
    scheduler.set_timesteps(n)
    if not stock:
        with_our_sigmas(scheduler)
    return scheduler


def spy_orders(scheduler) -> list[int]:
    """Record the order of the update diffusers applies at each step."""
    orders: list[int] = []
    names = [
        "dpm_solver_first_order_update",
        "multistep_dpm_solver_second_order_update",
        "multistep_dpm_solver_third_order_update",
    ]
    for k, name in enumerate(names, start=1):
        method = getattr(scheduler, name)

        def wrapped(*args, _method=method, _k=k, **kwargs):
            orders.append(_k)
            return _method(*args, **kwargs)

        setattr(scheduler, name, wrapped)
    return orders


def check_dpmpp_last_steps(prediction, model, ts, ours, theirs):
    """The last step, t = ts[-1] -> data, is where the two differ by design.

    diffusers (final_sigmas_type="zero") takes the first-order update, whose value at sigma = 0
    is the plain x0_hat.  Ours (order >= 2, since ddkit 40dd2d7) integrates d x~ / d sigma = eps_hat
    (x~ = x / alpha, sigma = sqrt((1 - ab) / ab)) from sigma_t to 0 by the trapezoid rule, with
    eps_hat at sigma = 0 extrapolated linearly in sigma from the last two evaluations.  Each side
    is checked against its own formula, evaluated on its own trajectory."""
    t, t_before = ts[-1], ts[-2]
    sig_t, sig_before = (np.sqrt((1.0 - AB[s]) / AB[s]) for s in (t, t_before))
    x = ours[-2]
    eps_t, _ = eps_x0(prediction, model(x, t_vec(t, x)), x, AB[t])
    eps_before, _ = eps_x0(prediction, model(ours[-3], t_vec(t_before, x)), ours[-3], AB[t_before])
    eps_0 = eps_t + (eps_t - eps_before) * sig_t / (sig_before - sig_t)
    trapezoid = x / np.sqrt(AB[t]) - 0.5 * sig_t * (eps_t + eps_0)
    torch.testing.assert_close(ours[-1], trapezoid, **EXACT)
    x = theirs[-2]
    _, x0_hat = eps_x0(prediction, model(x, t_vec(t, x)), x, AB[t])
    torch.testing.assert_close(theirs[-1], x0_hat.to(theirs[-1].dtype), **FLOAT32)
    assert not torch.allclose(ours[-1], theirs[-1].to(ours[-1].dtype), **FLOAT32)


@pytest.mark.parametrize("n", [10, 20])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("prediction", list(PREDICTIONS))
def test_dpmpp_2m_trajectory_matches_diffusers(prediction, spacing, n):
    """sample_dpmpp_2m on diffusers' own timestep list.  Both take a first-order first step (no
    history) and second-order steps after it; the states agree up to the input of the last step,
    which differs by design (see check_dpmpp_last_steps).  diffusers' lower_order_final (n < 15)
    changes nothing here: with solver_order=2 its lower_order_second only chooses between the
    second- and third-order updates, and its last step is first order for any n because
    final_sigmas_type="zero"."""
    scheduler = dpm_scheduler(prediction, spacing, n)
    orders = spy_orders(scheduler)
    model = fake_model(prediction)
    x_T = randn(3)
    theirs = diffusers_states(scheduler, model, x_T)
    assert orders == [1] + [2] * (n - 2) + [1]
    ts = scheduler.timesteps.tolist()
    denoiser = Denoiser(model, SCHEDULE, PREDICTIONS[prediction])
    ours = our_states(sample_dpmpp_2m, denoiser, x_T, ts)
    assert_trajectories_close(ours[:-1], theirs[:-1], **FLOAT32)
    check_dpmpp_last_steps(prediction, model, ts, ours, theirs)


@pytest.mark.parametrize("prediction", list(PREDICTIONS))
def test_dpmpp_2m_stock_float32_trajectory_matches_diffusers(prediction):
    scheduler = dpm_scheduler(prediction, "linspace", 20, stock=True)
    model = fake_model(prediction)
    x_T = randn(4, torch.float32)
    theirs = diffusers_states(scheduler, model, x_T)
    denoiser = Denoiser(model, SCHEDULE, PREDICTIONS[prediction])
    ours = our_states(sample_dpmpp_2m, denoiser, x_T, scheduler.timesteps.tolist())
    assert_trajectories_close(ours[:-1], theirs[:-1], **FLOAT32)


@pytest.mark.parametrize("prediction", list(PREDICTIONS))
def test_dpmpp_1_matches_diffusers_to_the_end(prediction):
    """First order (solver_order=1 / order=1): the whole trajectory, last step included, agrees."""
    scheduler = dpm_scheduler(prediction, "linspace", 10, order=1)
    model = fake_model(prediction)
    x_T = randn(3)
    theirs = diffusers_states(scheduler, model, x_T)
    denoiser = Denoiser(model, SCHEDULE, PREDICTIONS[prediction])
    ours = our_states(sample_dpmpp, denoiser, x_T, scheduler.timesteps.tolist(), order=1)
    assert_trajectories_close(ours, theirs, **FLOAT32)


@pytest.mark.parametrize(
    "n_lower", [(20, True), (10, False)], ids=["20-steps", "10-steps-no-lower-order-final"]
)
@pytest.mark.parametrize("prediction", list(PREDICTIONS))
def test_dpmpp_3m_trajectory_matches_diffusers(prediction, n_lower):
    n, lower_order_final = n_lower
    scheduler = dpm_scheduler(prediction, "linspace", n, 3, lower_order_final)
    orders = spy_orders(scheduler)
    model = fake_model(prediction)
    x_T = randn(3)
    theirs = diffusers_states(scheduler, model, x_T)
    assert orders == [1, 2] + [3] * (n - 3) + [1]
    ts = scheduler.timesteps.tolist()
    denoiser = Denoiser(model, SCHEDULE, PREDICTIONS[prediction])
    ours = our_states(sample_dpmpp, denoiser, x_T, ts, order=3)
    assert_trajectories_close(ours[:-1], theirs[:-1], **FLOAT32)
    check_dpmpp_last_steps(prediction, model, ts, ours, theirs)


def test_dpmpp_3m_diffusers_lowers_second_to_last_step_below_15_steps():
    """With solver_order=3, lower_order_final=True and fewer than 15 steps, diffusers' step()
    sets lower_order_second at step n-2 and takes the second-order update there
    (scheduling_dpmsolver_multistep.py, step()); ours keeps order 3 up to the last step.  The
    states agree up to the input of that step and differ after it; with lower_order_final off
    they agree up to the last step (test above)."""
    n = 10
    scheduler = dpm_scheduler("epsilon", "linspace", n, 3, lower_order_final=True)
    orders = spy_orders(scheduler)
    model = fake_model("epsilon")
    x_T = randn(3)
    theirs = diffusers_states(scheduler, model, x_T)
    assert orders == [1, 2] + [3] * (n - 4) + [2, 1]
    denoiser = Denoiser(model, SCHEDULE, Prediction.EPS)
    ours = our_states(sample_dpmpp, denoiser, x_T, scheduler.timesteps.tolist(), order=3)
    assert_trajectories_close(ours[: n - 1], theirs[: n - 1], **FLOAT32)
    assert not torch.allclose(ours[n - 1], theirs[n - 1], **FLOAT32)
