"""The family of test distributions: every member's exact score and denoiser agree with
autograd and with finite differences of its exact log-density, at several noise levels; the
members cover the stated ranges; the tuning and held-out sets are disjoint and fixed."""

from __future__ import annotations

import math

import pytest
import torch

from ddkit.verify.family import HELD_OUT, SPREAD, TUNING, Member, members

ALL = [*TUNING, *HELD_OUT]
ALPHA_BARS = (0.999, 0.5, 0.01)  # near the data, midway, near the prior


def _points(mixture, alpha_bar: float, n: int, seed: int) -> torch.Tensor:
    """Draws of x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, where the score is evaluated."""
    g = torch.Generator().manual_seed(seed)
    x0, _ = mixture.sample(n, g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps


@pytest.mark.parametrize("member", ALL, ids=lambda m: m.name)
def test_exact_score_is_the_gradient_of_the_exact_log_density(member):
    """score(x) (from the posterior mean, Tweedie) equals autograd's gradient of log p_t, and
    a central finite difference along a random direction, at three noise levels."""
    mix = member.build()
    for i, ab in enumerate(ALPHA_BARS):
        x = _points(mix, ab, 6, seed=i).requires_grad_(True)
        (grad,) = torch.autograd.grad(mix.log_prob(x, ab).sum(), x)
        score = mix.score(x.detach(), ab)
        assert torch.allclose(score, grad, rtol=1e-7, atol=1e-7 * grad.abs().max()), member.name
        v = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        v /= v.norm(dim=1, keepdim=True)
        h = 1e-4 * min(1.0, math.sqrt(1 - ab + ab * member.width**2 * SPREAD**2))
        with torch.no_grad():
            fd = (mix.log_prob(x + h * v, ab) - mix.log_prob(x - h * v, ab)) / (2 * h)
        directional = (score * v).sum(1)
        assert torch.allclose(fd, directional, rtol=1e-4, atol=1e-4 * directional.abs().max())


@pytest.mark.parametrize("member", ALL, ids=lambda m: m.name)
def test_denoiser_is_tweedies_formula_and_recovers_the_data_at_low_noise(member):
    """E[x0 | x_t] = (x_t + (1 - ab) grad log p_t) / sqrt(ab) with autograd's gradient; and at
    ab -> 1 the denoiser returns x_t itself (its error shrinks with the noise)."""
    mix = member.build()
    ab = 0.7
    x = _points(mix, ab, 5, seed=3).requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(x, ab).sum(), x)
    tweedie = (x.detach() + (1 - ab) * grad) / math.sqrt(ab)
    mean = mix.posterior_mean(x.detach(), ab)
    assert torch.allclose(mean, tweedie, rtol=1e-7, atol=1e-7 * tweedie.abs().max())
    x0, _ = mix.sample(5, torch.Generator().manual_seed(4), dtype=torch.float64)
    errs = []
    for ab in (1 - 1e-4, 1 - 1e-6):
        xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn_like(x0)
        errs.append(float((mix.posterior_mean(xt, ab) - x0).norm() / x0.norm()))
    assert errs[1] < errs[0] and errs[1] < 0.05


def test_the_family_covers_the_stated_ranges_in_both_sets():
    for split in (TUNING, HELD_OUT):
        dims = [m.dim for m in split]
        ks = [m.components for m in split]
        assert min(dims) == 2 and max(dims) == 256
        assert min(ks) <= 3 and max(ks) >= 24
        assert {m.covariance for m in split} == {"isotropic", "lowrank", "scales"}
        widths = [m.width for m in split]
        assert min(widths) == 0.01 and max(widths) >= 0.3
    assert max(m.components for m in ALL) == 64 and max(m.width for m in ALL) == 0.5


def test_the_sets_are_disjoint_and_fixed():
    assert not {m.seed for m in TUNING} & {m.seed for m in HELD_OUT}
    assert not {m.name for m in TUNING} & {m.name for m in HELD_OUT}
    a, b = HELD_OUT[3].build(), HELD_OUT[3].build()
    assert torch.equal(a.means, b.means) and torch.equal(a.covs, b.covs)
    assert members("held_out") == HELD_OUT
    with pytest.raises(ValueError, match="allowed: tuning, held_out"):
        members("test")


def test_weights_are_unequal_and_no_mode_is_empty():
    for m in ALL:
        w = m.build().weights
        assert float(w.min()) >= 0.2 / m.components / 1.5
        if m.components > 2:
            assert float(w.max() / w.min()) > 1.5, m.name


def test_scale_mixtures_are_heavy_tailed():
    """Per coordinate about its centre, a scale mixture's excess kurtosis is far above a
    Gaussian's 0."""
    heavy = Member(2, 16, 0.01, "scales", 9).build()
    x, k = heavy.sample(200_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    centred = x - heavy.means[k]
    kurt = float((centred**4).mean(0).mean() / (centred**2).mean(0).mean() ** 2) - 3
    assert kurt > 3.0, kurt


def test_bad_members_are_refused():
    with pytest.raises(ValueError, match="covariance 'diag'"):
        Member(2, 2, 0.1, "diag", 0).build()
    with pytest.raises(ValueError, match="width in"):
        Member(2, 2, 0.0, "isotropic", 0).build()


def test_worst_case_takes_each_metric_relative_to_each_members_floor():
    """Two members, one configuration: the worst ed/floor, the dispersion farthest from 1, the
    lowest ll gap and the counts are those of the rows, each against its own floor."""
    from ddkit.verify.family_report import worst_case

    def res(floor_eds, ed, disp, ll, inside):
        row = {"sampler": "s", "nfe": 5, "ed": ed, "disp": disp, "ll": ll, "inside": inside}
        return {"floor": {"reps": [{"ed": e} for e in floor_eds]}, "rows": [row]}

    yes, no = dict(ed=True, disp=True, ll=True), dict(ed=True, disp=False, ll=True)
    results = {"a": res([1e-3, -4e-3], 2e-3, 0.95, -0.5, yes), "b": res([2e-2], 1e-2, 1.3, 0.1, no)}
    (row,) = worst_case(results)
    assert row["ed_over_floor"] == pytest.approx(0.5)  # a: 2e-3 / 4e-3; b: 1e-2 / 2e-2
    assert row["disp"] == 1.3 and row["ll"] == -0.5
    assert (row["inside"], row["disp_ok"], row["members"]) == (1, 1, 2)


def test_verify_family_writes_per_member_and_worst_case_results(tmp_path, capsys):
    """``ddkit verify --family held_out`` runs every held-out member and writes its JSON and plot;
    ``--quick`` with ``--family`` is refused in one line."""
    import json

    from ddkit.cli import main

    out = tmp_path / "fam"
    argv = ["verify", "--family", "held_out", "--n", "150", "--nfe", "5", "--floor-reps", "2"]
    assert main([*argv, "--config", "adams2 PC logSNR>-4", "--out", str(out)]) == 0
    result = json.loads((out / "family.json").read_text())
    assert sorted(result["members"]) == sorted(m.name for m in HELD_OUT)
    (row,) = result["worst"]
    assert row["members"] == len(HELD_OUT) and row["nfe"] == 5
    assert (out / "family_worst_case.png").stat().st_size > 0
    from ddkit.verify.family_report import family_problems
    from ddkit.verify.runner import setup, true_sample_rates

    perfect = 0.0
    for p in family_problems("held_out", 150):  # the same floors, recomputed from the seed
        perfect += true_sample_rates(p, *setup(p, 0, 2)[:3], 0)["all"]
    assert result["perfect_inside"] == pytest.approx(perfect)
    printed = capsys.readouterr().out
    assert "worst case over the 11 held_out mixtures" in printed and "a perfect sampler" in printed
    assert main(["verify", "--family", "tuning", "--quick", "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--quick" in err and not (tmp_path / "q").exists()


def test_dispersion_is_one_for_true_samples_and_scales_with_the_spread():
    """Within-mode dispersion of true samples of a well-separated member is 1 within Monte Carlo
    error (E[Mahalanobis^2] = d); samples pushed c times farther from their own mode give c^2;
    and it equals the per-sample projection on each sample's component, computed directly."""
    from ddkit.verify.statistics import dispersion

    mix = Member(16, 4, 0.05, "lowrank", 3).build()
    n = 4000
    x, comp = mix.sample(n, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert dispersion(x, mix) == pytest.approx(1.0, abs=4 * math.sqrt(2 / (16 * n)))
    wide = mix.means[comp] + 1.1 * (x - mix.means[comp])
    assert dispersion(wide, mix) == pytest.approx(1.21, rel=0.03)
    k = mix.responsibilities(x).argmax(1)
    direct = torch.einsum("ndj,nd->nj", mix.eigvecs[k], x - mix.means[k])
    expected = float((direct**2 / mix.eigvals[k]).sum(1).mean() / mix.dim)
    assert dispersion(x, mix) == pytest.approx(expected, rel=1e-12)


def test_a_true_sample_is_inside_each_metrics_floor_with_probability_reps_over_reps_plus_1():
    """A further true sample is exchangeable with the floor's: over seeds, the rate at which it
    is no worse than the worst of r floor sets is r / (r + 1) on each metric (here r = 3: 3/4),
    within 4 standard errors; and inside on all three is rarer than on any one."""
    from ddkit.verify.runner import Problem, setup, true_sample_rates

    problem = Problem("m", Member(4, 3, 0.1, "lowrank", 5).build(), 100)
    seeds, reps = 150, 3
    rates = []
    for s in range(seeds):
        ref, ref_disp, floor, _ = setup(problem, s, reps)
        rates.append(true_sample_rates(problem, ref, ref_disp, floor, s, draws=1))
    p = reps / (reps + 1)
    for k in ("ed", "disp", "ll"):
        mean = sum(r[k] for r in rates) / seeds
        assert abs(mean - p) < 4 * math.sqrt(p * (1 - p) / seeds), (k, mean)
    means = {k: sum(r[k] for r in rates) / seeds for k in ("ed", "disp", "ll", "all")}
    assert means["all"] < min(means["ed"], means["disp"], means["ll"]) - 0.1, means


def test_a_tail_of_draws_runs_only_where_the_budget_leaves_a_step_per_draw():
    from ddkit.verify.runner import SamplerConfig

    tail3 = SamplerConfig("t3", "adams2", "log_snr_window", {"last": "posterior", "tail": 3})
    assert [tail3.steps_for(n) for n in (5, 6, 10)] == [2, 3, 7]
    assert [tail3.fits(n) for n in (5, 6, 10)] == [False, True, True]
    assert SamplerConfig("ode", "adams2", "log_snr_window").fits(1)
    # a draw of m products costs 2m calls: with m = 3, NFE 5 leaves no step, 6 one, 7 two
    k3 = SamplerConfig("k3", "adams2", "log_snr_window", {"last": "posterior", "krylov": 3})
    assert [k3.fits(n) for n in (5, 6, 7)] == [False, True, True]
    assert [k3.steps_for(n) for n in (6, 7)] == [1, 2]
