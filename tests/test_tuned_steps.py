"""Tuned step grids: the search improves a held-out test mixture on noises and samples it never
saw, never returns a worse grid on its pilot batch, keeps a valid grid; ``ddkit tune-steps``
stores it, ``ddkit sample --steps tuned`` uses it, and a hostile ``tuned_steps.json`` is refused
in one line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_run import MLP_CONFIG, one_line_error, write_checkpoint

from ddkit.cli import main
from ddkit.diffusion.schedule import NoiseSchedule
from ddkit.samplers import get_sampler
from ddkit.samplers.tuning import ode_reference, rms, tune_timesteps
from ddkit.tuned_steps import FILE, read_grids
from ddkit.verify.family import HELD_OUT
from ddkit.verify.family_report import family_problems
from ddkit.verify.runner import FEW_STEP, metrics, setup

SCHEDULE = NoiseSchedule.make("linear", 1000)


def _noise(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_tuned_grid_improves_a_held_out_mixture_on_unseen_noise_and_samples():
    """On a held-out member at NFE 5, the grid tuned on 256 pilot noises is closer to the exact
    ODE map on 512 other noises, and its 2000 samples (from a third seed) are closer in energy
    distance to true samples, than the default grid's."""
    member = next(m for m in HELD_OUT if m.name == "lowrank-d4-k8-w0.3-s103")
    (problem,) = [p for p in family_problems("held_out", 2000) if p.name == member.name]
    den = problem.mixture.denoiser(SCHEDULE)
    sampler = get_sampler(FEW_STEP.sampler)
    start = FEW_STEP.timesteps(SCHEDULE, 5)
    pilot, check = _noise(256, member.dim, 11), _noise(512, member.dim, 12)
    ref_pilot, ref_check = ode_reference(den, pilot), ode_reference(den, check)
    res = tune_timesteps(lambda ts: sampler(den, pilot, ts), start, ref_pilot, SCHEDULE)
    assert res.start == start and res.error < res.start_error
    before = rms(sampler(den, check, start), ref_check)
    after = rms(sampler(den, check, res.timesteps), ref_check)
    assert after < 0.5 * before
    ref, ref_disp, floor, x_T = setup(problem, 0, 4)
    m0 = metrics(sampler(den, x_T, start), ref, problem.mixture, ref_disp)
    m1 = metrics(sampler(den, x_T, res.timesteps), ref, problem.mixture, ref_disp)
    assert m1["ed"] < 0.5 * m0["ed"] and abs(m1["disp"] - 1) < abs(m0["disp"] - 1)


def test_search_keeps_a_valid_grid_and_never_ends_worse_than_it_started():
    """Whatever the start, the result is strictly decreasing, starts at the same t_max, has the
    same length, counts its evaluations, and is no worse on the pilot batch."""
    mix = HELD_OUT[0].build()
    den = mix.denoiser(SCHEDULE)
    pilot = _noise(64, mix.dim, 5)
    ref = ode_reference(den, pilot, 50)
    sampler = get_sampler("dpmpp_2m")
    for start in ([999, 500, 20, 1], [999, 998, 997, 996, 995], [999, 3, 2, 1, 0]):
        seen: list[float] = []
        res = tune_timesteps(
            lambda ts: sampler(den, pilot, ts),
            start,
            ref,
            SCHEDULE,
            max_evals=25,
            on_eval=lambda k, e, seen=seen: seen.append(e),
        )
        ts = res.timesteps
        assert ts[0] == 999 and len(ts) == len(start) and ts[-1] >= 0
        assert all(a > b for a, b in zip(ts, ts[1:]))
        assert res.error <= res.start_error and res.evaluations == len(seen) <= 25
        assert res.error == pytest.approx(rms(sampler(den, pilot, ts), ref), rel=1e-12)
        assert seen == sorted(seen, reverse=True)  # the best so far never rises


def test_keep_last_leaves_the_last_timestep_where_it_started():
    """For a posterior draw at the end the grid must end at the smallest noise level: with
    ``keep_last`` the search moves every other timestep (from a start it improves on) and never
    the last one."""
    member = next(m for m in HELD_OUT if m.name == "lowrank-d4-k8-w0.3-s103")
    mix = member.build()
    den = mix.denoiser(SCHEDULE)
    pilot = _noise(128, mix.dim, 6)
    ref = ode_reference(den, pilot, 50)
    sampler = get_sampler("adams2")
    start = SCHEDULE.timesteps(4, "log_snr_window")
    free = tune_timesteps(lambda ts: sampler(den, pilot, ts), start, ref, SCHEDULE, max_evals=30)
    kept = tune_timesteps(
        lambda ts: sampler(den, pilot, ts), start, ref, SCHEDULE, max_evals=30, keep_last=True
    )
    assert start[-1] == 0 and free.timesteps[-1] != 0  # the free search moves it here
    assert kept.timesteps[-1] == 0 and kept.timesteps[0] == 999
    assert kept.timesteps != start and kept.error < kept.start_error


def test_search_refuses_bad_settings():
    with pytest.raises(ValueError, match="max_evals"):
        tune_timesteps(lambda ts: None, [999, 0], torch.zeros(1), SCHEDULE, max_evals=0)
    with pytest.raises(ValueError, match="min_delta"):
        tune_timesteps(lambda ts: None, [999, 0], torch.zeros(1), SCHEDULE, min_delta=2.0)


def test_log_snr_window_spacing_is_log_snr_with_the_first_step_to_minus_4():
    for n in (3, 5, 10, 20):
        window = SCHEDULE.timesteps(n, "log_snr_window")
        assert window == SCHEDULE.timesteps(n, "log_snr", min_log_snr=-4.0)
        assert SCHEDULE.log_snr[window[1]] == pytest.approx(-4.0, abs=0.05)


@pytest.fixture()
def run_folder(tmp_path):
    cfg = copy.deepcopy(MLP_CONFIG)
    cfg["diffusion"]["T"] = 100
    write_checkpoint(tmp_path / "run" / "checkpoints" / "ckpt-00000001.safetensors", cfg)
    return tmp_path / "run"


def test_cli_tunes_stores_and_samples_with_the_grid(run_folder, tmp_path, capsys):
    argv = ["tune-steps", str(run_folder), "--nfe", "5", "--pilot", "16", "--check", "16"]
    assert main([*argv, "--evals", "12", "--reference-steps", "40"]) == 0
    (entry,) = read_grids(run_folder, 100)
    assert entry["sampler"] == "adams2" and entry["nfe"] == 5 and len(entry["timesteps"]) == 5
    pilot = entry["rms_to_reference"]["pilot"]
    assert pilot["tuned"] <= pilot["start"] and entry["evaluations"] <= 12
    assert main([*argv, "--evals", "8", "--sampler", "dpmpp_2m"]) == 0
    assert main([*argv, "--evals", "8"]) == 0  # replaces the adams2 entry
    assert sorted(g["sampler"] for g in read_grids(run_folder, 100)) == ["adams2", "dpmpp_2m"]
    (entry,) = [g for g in read_grids(run_folder, 100) if g["sampler"] == "adams2"]
    out = tmp_path / "s"
    args = ["sample", str(run_folder), "--sampler", "adams2", "--num", "8", "--out", str(out)]
    assert main([*args, "--steps", "tuned"]) == 0
    settings = json.loads((out / "sampler.json").read_text())
    assert settings["timesteps"] == entry["timesteps"] and settings["steps"] == 5
    post = tmp_path / "post"  # the same grid with a posterior draw at the end: one call more
    assert main([*args[:-1], str(post), "--steps", "tuned", "--last-step", "posterior"]) == 0
    settings = json.loads((post / "sampler.json").read_text())
    assert settings["timesteps"] == entry["timesteps"] and settings["nfe"] == 6
    assert settings["options"] == {"last": "posterior"}
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "s2"), "--steps", "tuned:7"]) == 2
    one_line_error(capsys, "tuned:5", "tune-steps")
    assert not (tmp_path / "s2").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["tune-steps", str(run_folder), "--nfe", "5", "--sampler", "ddpm"])
    assert exit_.value.code == 2
    one_line_error(capsys, "ddpm", "adams2")
    ddim = ["tune-steps", str(run_folder), "--nfe", "5", "--sampler", "ddim"]
    assert main([*ddim, "--interpolate", "sigma"]) == 2
    one_line_error(capsys, "--interpolate", "adams2")
    assert main([*ddim, "--limiter", "1"]) == 2
    one_line_error(capsys, "--limiter", "adams2")


def test_cli_interpolate_and_limiter_are_stored_and_matched(run_folder, tmp_path, capsys):
    """tune-steps --interpolate sigma --limiter 1.5 stores the grid with those options; sample
    takes it with the same options and records them in sampler.json, and refuses it without."""
    argv = ["tune-steps", str(run_folder), "--nfe", "4", "--pilot", "8", "--check", "8"]
    argv += ["--evals", "4", "--reference-steps", "20"]
    assert main([*argv, "--interpolate", "sigma", "--limiter", "1.5"]) == 0
    (entry,) = read_grids(run_folder, 100)
    assert entry["options"] == {"interpolate": "sigma", "limiter": 1.5}
    out = tmp_path / "s"
    args = ["sample", str(run_folder), "--sampler", "adams2", "--steps", "tuned", "--num", "4"]
    assert main([*args, "--interpolate", "sigma", "--limiter", "1.5", "--out", str(out)]) == 0
    settings = json.loads((out / "sampler.json").read_text())
    assert settings["options"] == {"interpolate": "sigma", "limiter": 1.5}
    assert settings["timesteps"] == entry["timesteps"]
    capsys.readouterr()
    assert main([*args, "--interpolate", "sigma", "--out", str(tmp_path / "s2")]) == 2
    one_line_error(capsys, "tuned adams2 grid was made with options", "'limiter': 1.5")
    assert not (tmp_path / "s2").exists()


HOSTILE = {
    "junk": b"\x00\x01not json",
    "format": json.dumps({"format": "other", "grids": []}).encode(),
    "rising": json.dumps(
        {
            "format": "ddkit-tuned-steps",
            "grids": [{"sampler": "adams2", "nfe": 3, "timesteps": [1, 5, 9]}],
        }
    ).encode(),
    "range": json.dumps(
        {
            "format": "ddkit-tuned-steps",
            "grids": [{"sampler": "adams2", "nfe": 2, "timesteps": [500, 0]}],
        }
    ).encode(),
    "bools": json.dumps(
        {
            "format": "ddkit-tuned-steps",
            "grids": [{"sampler": "adams2", "nfe": 2, "timesteps": [True, False]}],
        }
    ).encode(),
    "sampler": json.dumps(
        {
            "format": "ddkit-tuned-steps",
            "grids": [{"sampler": "ddpm", "nfe": 2, "timesteps": [9, 0]}],
        }
    ).encode(),
    "huge": b" " * (2 << 20),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_tuned_steps_file_is_refused_inone_line_error(kind, run_folder, tmp_path, capsys):
    (run_folder / FILE).write_bytes(HOSTILE[kind])
    out = tmp_path / "s"
    argv = ["sample", str(run_folder), "--sampler", "adams2", "--steps", "tuned", "--out", str(out)]
    assert main(argv) == 2
    one_line_error(capsys, FILE)
    assert not out.exists()


def test_a_folder_in_place_of_the_file_is_refused(run_folder, capsys):
    (run_folder / FILE).mkdir()
    assert main(["tune-steps", str(run_folder), "--nfe", "5"]) == 2
    one_line_error(capsys, FILE, "regular file")


def test_tuning_that_would_not_fit_in_memory_is_refused_before_any_work(run_folder, capsys):
    argv = ["tune-steps", str(run_folder), "--nfe", "5", "--pilot", str(10**12)]
    assert main(argv) == 2
    one_line_error(capsys, "--pilot")
    assert main(["tune-steps", str(run_folder), "--nfe", str(10**15)]) == 2  # T = 100
    one_line_error(capsys, "--nfe", "1..100")
    assert not (run_folder / FILE).exists()


def test_the_command_lines_names_are_the_librarys():
    """The parser names the tunable samplers and defaults without importing torch; they are the
    library's."""
    from ddkit import tuned_steps
    from ddkit.cli import sampling, steps
    from ddkit.samplers import ode

    assert steps.TUNABLE_NAMES == tuned_steps.TUNABLE
    assert sampling.INTERPOLATIONS == ode.INTERPOLATIONS
    assert (steps.DEFAULT_SAMPLER, steps.DEFAULT_SPACING) == (
        tuned_steps.DEFAULT_SAMPLER,
        tuned_steps.DEFAULT_SPACING,
    )


def test_a_tuned_grid_with_a_posterior_end_warns(run_folder, tmp_path, capsys):
    """Tuned grids measure the ODE's error after its own last step; BENCHMARKS.md found them worse
    with a posterior draw at the end at NFE 5 and 10, and sample says so in one line."""
    assert main(["tune-steps", str(run_folder), "--nfe", "4", "--pilot", "8", "--check", "8",
                 "--evals", "4", "--reference-steps", "20"]) == 0  # fmt: skip
    args = ["sample", str(run_folder), "--sampler", "adams2", "--num", "4", "--steps", "tuned"]
    for extra, warns in (([], False), (["--last-step", "posterior"], True)):
        capsys.readouterr()
        assert main([*args, *extra, "--out", str(tmp_path / f"s{len(extra)}")]) == 0
        err = capsys.readouterr().err
        assert ("prefer --steps N" in err) is warns, err
        assert len([line for line in err.splitlines() if "tuned grid is" in line]) == warns, err
