"""Where a few-step sampler's misses on the test family come from: the draw, or the ODE.

A sampler that ends with a posterior draw (``sample_adams(last="posterior")``) is two stages:
the probability-flow ODE carries the initial noise to x_0, the smallest noise level, and one
Gaussian draw shaped by Jacobian-vector products takes x_0 to the data.  Each stage is
replaced in turn by an exact one, on every member of one split of :mod:`ddkit.verify.family`,
with the reference samples and floors of ``ddkit verify`` (:func:`ddkit.verify.runner.setup`):

* ``true x_0, m JVPs``: x_0 = sqrt(ab_0) x + sqrt(1 - ab_0) e from true samples x, then the
  draw shaped by m products (``krylov`` = m): what the draw can do given the exact marginal;
* ``fine ODE, m JVPs``: ``sample_adams`` (third order) on ``--fine`` (200) log-SNR steps to
  timestep 0, then the draw: what the sampler can do when the ODE's error is negligible;
* the candidate configurations at ``--nfe``, with the RMS distance of their x_0 to the fine
  ODE's x_0 from the same initial noise, in units of the noise level at x_0 (``err``);
* ``exact draw`` after any of these: the draw replaced by an exact sample of the mixture's own
  posterior p(x | x_0) (:meth:`ddkit.verify.oracle.GaussianMixture.posterior_sample`), so that
  only the ODE's error is left (after ``true x_0``: a perfect sampler).

Each member's line marks each metric inside (+) or not (.), row by row of the table, and the
candidates' ``err``, then gives each row's within-mode dispersion; each row of the table counts
the members inside the floor on all three metrics per seed, beside a perfect sampler's expected
count (:func:`ddkit.verify.runner.true_sample_rates`), and the members with dispersion in
0.9-1.1 (the few-step target at NFE 10: ``--nfe 10``).

    .venv/bin/python benchmarks/family_error_budget.py --split tuning --seeds 0 1 2 3

``--gaussians`` prints only the dispersion of ddkit's default, adams2 interpolating x0_hat in
(sigma / alpha)^0.25, adams3 in sigma / alpha (both ends) and the candidates (among them adams2
with the posterior end in (sigma / alpha)^0.25 and ^0.5) on a single isotropic Gaussian per
width (32-D): the ODE's own step error, with nothing else to blame.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from _machine import cpu_name  # noqa: E402

from ddkit.diffusion.schedule import NoiseSchedule  # noqa: E402
from ddkit.samplers import get_sampler, sample_adams  # noqa: E402
from ddkit.verify.family_report import family_problems  # noqa: E402
from ddkit.verify.oracle import GaussianMixture  # noqa: E402
from ddkit.verify.runner import (  # noqa: E402
    FEW_STEP,
    SamplerConfig,
    metrics,
    setup,
    true_sample_rates,
)
from ddkit.verify.statistics import dispersion  # noqa: E402

POST = {"last": "posterior"}
CANDIDATES = (
    SamplerConfig("adams2 PC logSNR>-4 post", "adams2", "log_snr", POST, -4.0),
    SamplerConfig("adams3 PC logSNR>-4 post", "adams3", "log_snr", POST, -4.0),
    SamplerConfig(
        "adams3 PC logSNR>-4 post lim", "adams3", "log_snr", {**POST, "limiter": 1.0}, -4.0
    ),
    SamplerConfig("adams3 PC logSNR>-4 post k2", "adams3", "log_snr", {**POST, "krylov": 2}, -4.0),
    SamplerConfig("adams3 PC logSNR>-6 post", "adams3", "log_snr", POST, -6.0),
    SamplerConfig("adams3 PC logSNR post k2", "adams3", "log_snr", {**POST, "krylov": 2}),
    SamplerConfig(
        "adams2 PC logSNR>-4 post sigma^0.25",
        "adams2",
        "log_snr",
        {**POST, "interpolate": "sigma^0.25"},
        -4.0,
    ),
    SamplerConfig(
        "adams2 PC logSNR>-4 post sigma^0.5",
        "adams2",
        "log_snr",
        {**POST, "interpolate": "sigma^0.5"},
        -4.0,
    ),
)


def sample_with_x0(cfg: SamplerConfig, den, x_T, ts, seed):
    """The sampler's output and its x at the last timestep (before the draw)."""
    seen = {}

    def keep(i, t, x, x0):
        if t == ts[-1]:
            seen["x"] = x.clone()

    gen = torch.Generator().manual_seed(seed + 1)
    out = get_sampler(cfg.sampler)(den, x_T, ts, generator=gen, callback=keep, **cfg.options)
    return out, seen["x"]


def true_x0(problem, den, seed: int) -> torch.Tensor:
    """True samples noised to the smallest noise level (timestep 0)."""
    ab = den.schedule.alpha_bar(0)
    gen = torch.Generator().manual_seed((seed + 0x5BD1E995) % (1 << 32))
    x, _ = problem.mixture.sample(problem.n, gen, dtype=torch.float64)
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return math.sqrt(ab) * x + math.sqrt(1.0 - ab) * noise


def exact_draw(problem, x_0: torch.Tensor, ab: float, seed: int) -> torch.Tensor:
    """x ~ p(x | x_0) exactly at alpha_bar ``ab``: the mixture's own posterior, not the draw."""
    gen = torch.Generator().manual_seed((seed + 0x2545F491) % (1 << 32))
    return problem.mixture.posterior_sample(x_0, ab, gen)


def gaussians(nfe: int, dim: int = 32, n: int = 4000) -> None:
    """Within-mode dispersion of each candidate on one isotropic Gaussian per width: no modes to
    choose between and no mixture posterior, so whatever is off is the ODE's step error (and the
    draw is exact: the posterior of a Gaussian is Gaussian, and isotropic)."""
    schedule = NoiseSchedule.make("linear", 1000)
    sig = {"interpolate": "sigma"}
    quarter = {"interpolate": "sigma^0.25"}
    configs = (
        FEW_STEP,
        SamplerConfig("adams2 PC logSNR>-4 sigma^0.25", "adams2", "log_snr_window", quarter),
        SamplerConfig("adams3 PC logSNR>-4 sigma", "adams3", "log_snr_window", sig),
        SamplerConfig(
            "adams3 PC logSNR>-4 sigma post", "adams3", "log_snr_window", {**sig, **POST}
        ),
    ) + CANDIDATES
    print(f"\n| std (spread 0.5), d = {dim} | " + " | ".join(c.label for c in configs) + " |")
    print("|---" * (len(configs) + 1) + "|")
    for std in (0.005, 0.02, 0.05, 0.1, 0.25, 0.5):
        mixture = GaussianMixture([1.0], [[0.0] * dim], [std * std * torch.eye(dim).numpy()])
        den = mixture.denoiser(schedule)
        x_T = torch.randn(n, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        cells = []
        for cfg in configs:
            gen = torch.Generator().manual_seed(1)
            out = get_sampler(cfg.sampler)(
                den, x_T, cfg.timesteps(schedule, nfe), generator=gen, **cfg.options
            )
            cells.append(f"{dispersion(out, mixture):.3f}")
        print(f"| {std:g} | " + " | ".join(cells) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="tuning", choices=("tuning", "held_out"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--nfe", type=int, default=20)
    ap.add_argument("--fine", type=int, default=200, help="log-SNR steps of the fine ODE")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--gaussians", action="store_true", help="only the single-Gaussian table")
    args = ap.parse_args()
    if args.gaussians:
        print(f"# one Gaussian per width, {time.strftime('%Y-%m-%d')}, NFE {args.nfe}")
        gaussians(args.nfe)
        return
    print(
        f"# error budget on the {args.split} family, {time.strftime('%Y-%m-%d')}, "
        f"torch {torch.__version__}, {cpu_name()}, n={args.n}, NFE {args.nfe}"
    )
    schedule = NoiseSchedule.make("linear", 1000)
    ab_0 = schedule.alpha_bar(0)
    s_0 = math.sqrt(1.0 - ab_0)
    fine = SamplerConfig("fine ODE", "adams3", "log_snr", POST)
    counts: dict[str, list[int]] = {}
    errors: dict[str, list[float]] = {}
    perfect = []
    disp_ok: dict[str, list[int]] = {}
    for seed in args.seeds:
        per_seed: dict[str, int] = {}
        per_seed_disp: dict[str, int] = {}
        perfect.append(0.0)
        for problem in family_problems(args.split, args.n):
            ref, ref_disp, floor, x_T = setup(problem, seed, 8)
            den = problem.mixture.denoiser(schedule)
            perfect[-1] += true_sample_rates(problem, ref, ref_disp, floor, seed)["all"]
            x0_true = true_x0(problem, den, seed)
            _, x0_fine = sample_with_x0(fine, den, x_T, fine.timesteps(schedule, args.fine), seed)
            outputs = {}
            for start, x_0 in (("true x_0", x0_true), ("fine ODE", x0_fine)):
                for m in (1, 2):
                    gen = torch.Generator().manual_seed(seed + 1)
                    outputs[f"{start}, {m} JVPs"] = sample_adams(  # the draw alone
                        den, x_0, [0], generator=gen, last="posterior", krylov=m
                    )
                outputs[f"{start}, exact draw"] = exact_draw(problem, x_0, ab_0, seed)
            member_errors = []
            for cfg in CANDIDATES:
                out, x0 = sample_with_x0(cfg, den, x_T, cfg.timesteps(schedule, args.nfe), seed)
                outputs[cfg.label] = out
                outputs[f"{cfg.label}, exact draw"] = exact_draw(problem, x0, ab_0, seed)
                err = float((x0 - x0_fine).pow(2).mean().sqrt()) / s_0
                errors.setdefault(cfg.label, []).append(err)
                member_errors.append(f"{err:.2f}")
            marks, disps = [], []
            for label, x in outputs.items():
                m = metrics(x, ref, problem.mixture, ref_disp)
                ok = floor.inside(m)
                per_seed[label] = per_seed.get(label, 0) + all(ok.values())
                per_seed_disp[label] = per_seed_disp.get(label, 0) + (0.9 <= m["disp"] <= 1.1)
                marks.append("".join("+" if ok[k] else "." for k in ("ed", "disp", "ll")))
                disps.append(f"{m['disp']:.3f}")
            print(
                f"seed {seed} {problem.name:<28} {' '.join(marks)}  err {' '.join(member_errors)}"
                f"\n{'':<34}disp {' '.join(disps)}",
                flush=True,
            )
        for label, c in per_seed.items():
            counts.setdefault(label, []).append(c)
            disp_ok.setdefault(label, []).append(per_seed_disp[label])
    members = len(family_problems(args.split, args.n))
    print(
        f"\n| stage replaced | inside (of {members}), seeds | mean | disp in 0.9-1.1, seeds | "
        "err, median / max |\n|---|---|---|---|---|"
    )
    for label, c in counts.items():
        e = errors.get(label)
        spread = f"{statistics.median(e):.2f} / {max(e):.2f}" if e else "-"
        d = disp_ok[label]
        print(
            f"| {label} | {', '.join(map(str, c))} | {sum(c) / len(c):.1f} | "
            f"{', '.join(map(str, d))} | {spread} |"
        )
    mean = sum(perfect) / len(perfect)
    print(
        f"| a perfect sampler (expected) | {', '.join(f'{p:.1f}' for p in perfect)} "
        f"| {mean:.1f} | - | - |"
    )


if __name__ == "__main__":
    main()
