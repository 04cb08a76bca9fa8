"""Few-step accuracy with the exact denoiser: ddkit's samplers beside diffusers' DPM-Solver++.

Same mixtures, reference samples, noise floors and initial noise x_T as ``ddkit verify``
(``ddkit.verify.runner.setup``); diffusers' schedulers get the same exact x0-predicting model
(prediction_type="sample") called at their own integer timesteps.

Every sampler here maps the same x_T deterministically, so part of each row's distance to the
truth is that x_T's own sampling noise.  The first row of each table is the (numerically) exact
probability-flow map of that x_T (``sample_adams`` on 400 log-SNR steps); the solver's own error
is its difference from that row.

    .venv/bin/python benchmarks/few_step_vs_diffusers.py [--n-2d 10000] [--n-64d 4000]

With ``--family held_out`` (or ``tuning``) it runs instead on every mixture of that split of the
test family (:mod:`ddkit.verify.family`) at NFE 5, 10 and 20, with diffusers' best configuration
(DPM-Solver++(2M), lu-lambdas), ddkit's few-step default (``runner.FEW_STEP``), that default on
a grid tuned for the mixture (:func:`ddkit.samplers.tuning.tune_timesteps`, 256 pilot noises from
another seed than the measured ones), with its last step drawn from the posterior
(``last="posterior"``, its JVP counted as two model calls), and with both (a grid of one step
fewer tuned on the ODE with its last timestep kept at the smallest noise level, then ended by
the draw), and the NFE-20 configuration (``runner.NFE20``: adams3, posterior end, order
limiter); it prints the per-member and worst-case tables
(:func:`ddkit.verify.family_report.worst_case`) and, per NFE, the members on which each energy
distance is no worse than diffusers' (lower, or inside the floor).

    .venv/bin/python benchmarks/few_step_vs_diffusers.py --family held_out [--n 2000]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
import warnings

import torch

from ddkit.diffusion.schedule import NoiseSchedule
from ddkit.samplers import get_sampler
from ddkit.verify import runner as verify

warnings.filterwarnings("ignore")


def diffusers_configs():
    from diffusers import DPMSolverMultistepScheduler

    base = dict(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        algorithm_type="dpmsolver++",
        prediction_type="sample",
    )
    return {
        "diffusers dpm++2m use_lu_lambdas": lambda: DPMSolverMultistepScheduler(
            **base, use_lu_lambdas=True
        ),
        "diffusers dpm++2m (default)": lambda: DPMSolverMultistepScheduler(**base),
        "diffusers dpm++3m use_lu_lambdas": lambda: DPMSolverMultistepScheduler(
            **base, solver_order=3, use_lu_lambdas=True
        ),
        "diffusers dpm++2m karras": lambda: DPMSolverMultistepScheduler(
            **base, use_karras_sigmas=True
        ),
    }


def run_diffusers(make, model, x_T, nfe):
    sched = make()
    sched.set_timesteps(nfe)
    x = x_T.clone() * sched.init_noise_sigma
    for t in sched.timesteps:
        out = model(x, torch.full((x.shape[0],), int(t), dtype=torch.long))
        x = sched.step(out, t, x).prev_sample
    return x, len(sched.timesteps)


def family(split: str, n: int, nfes, seed: int, evals: int) -> None:
    from ddkit.samplers.tuning import ode_reference, tune_timesteps
    from ddkit.verify.family_report import WORST_HEADER, family_problems, format_worst, worst_case

    schedule = NoiseSchedule.make("linear", 1000)
    label_d, make_d = next(iter(diffusers_configs().items()))
    cfg = verify.FEW_STEP
    sampler = get_sampler(cfg.sampler)
    ode_options = {k: v for k, v in cfg.options.items() if k != "last"}
    post = dataclasses.replace(cfg, options={**ode_options, "last": "posterior"})
    nfe20 = verify.NFE20

    def gen():
        return torch.Generator().manual_seed(seed + 1)

    results = {}
    for problem in family_problems(split, n):
        ref, ref_disp, floor, x_T = verify.setup(problem, seed, 8)
        model = problem.mixture.model(schedule)
        den = problem.mixture.denoiser(schedule)
        pilot = torch.randn(
            256,
            problem.mixture.dim,
            generator=torch.Generator().manual_seed(seed + 123),
            dtype=torch.float64,
        )
        target = ode_reference(den, pilot)
        rows = []
        print(
            f"\n## {problem.name}\n\n| NFE | sampler | ED | disp | ll gap | in floor |\n"
            "|---|---|---|---|---|---|"
        )
        for nfe in nfes:
            t0 = time.perf_counter()

            def tune(start, keep_last, den=den, pilot=pilot, target=target):  # on the ODE
                run = lambda ts: sampler(den, pilot, ts, **ode_options)  # noqa: E731
                return tune_timesteps(
                    run, start, target, schedule, max_evals=evals, keep_last=keep_last
                )

            tuned = tune(cfg.timesteps(schedule, nfe), False)
            # one step fewer (the draw's call), the last kept at the smallest noise level
            tuned_post = tune(post.timesteps(schedule, nfe), True)
            tune_s = time.perf_counter() - t0
            runs = {
                label_d: run_diffusers(make_d, model, x_T, nfe)[0],
                "ddkit " + cfg.label: sampler(
                    den, x_T, cfg.timesteps(schedule, nfe), generator=gen(), **cfg.options
                ),
                "ddkit " + cfg.label + " tuned grid": sampler(
                    den, x_T, tuned.timesteps, generator=gen(), **cfg.options
                ),
                "ddkit " + cfg.label + ", posterior end": sampler(
                    den, x_T, post.timesteps(schedule, nfe), generator=gen(), **post.options
                ),
                "ddkit " + cfg.label + " tuned grid, posterior end": sampler(
                    den, x_T, tuned_post.timesteps, generator=gen(), **post.options
                ),
                "ddkit " + nfe20.label: get_sampler(nfe20.sampler)(
                    den, x_T, nfe20.timesteps(schedule, nfe), generator=gen(), **nfe20.options
                ),
            }
            for label, x in runs.items():
                m = verify.metrics(x, ref, problem.mixture, ref_disp)
                row = {"sampler": label, "nfe": nfe, **m, "inside": floor.inside(m)}
                rows.append(row)
                ok = "".join("+" if v else "." for v in row["inside"].values())
                print(
                    f"| {nfe} | {label} | {m['ed']:.2e} | {m['disp']:.4f} | {m['ll']:.4f} | {ok} |",
                    flush=True,
                )
            print(
                f"(grids tuned in {tune_s:.1f} s: {tuned.timesteps}; for the posterior end "
                f"{tuned_post.timesteps})",
                flush=True,
            )
        results[problem.name] = {"floor": dataclasses.asdict(floor), "rows": rows}
    print(f"\n## worst case over the {len(results)} {split} mixtures, n={n} each\n\n{WORST_HEADER}")
    for row in sorted(worst_case(results), key=lambda r: r["nfe"]):
        print(format_worst(row))
    print(f"\nmembers with energy distance no worse than {label_d}'s (lower, or inside the floor)")
    for nfe in nfes:
        counts = {}
        for res in results.values():
            rows = [r for r in res["rows"] if r["nfe"] == nfe]
            best = next(r["ed"] for r in rows if r["sampler"] == label_d)
            for r in rows:
                ok = r["ed"] <= best or r["inside"]["ed"]
                counts[r["sampler"]] = counts.get(r["sampler"], 0) + ok
        print(f"NFE {nfe}: " + "; ".join(f"{k} {v}/{len(results)}" for k, v in counts.items()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=("tuning", "held_out"))
    ap.add_argument("--n", type=int, default=2000, help="samples per --family mixture")
    ap.add_argument("--evals", type=int, default=100, help="sampler runs to tune each grid")
    ap.add_argument("--n-2d", type=int, default=10_000)
    ap.add_argument("--n-64d", type=int, default=4_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    args = ap.parse_args()
    import diffusers

    print(
        f"# few-step accuracy, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, {platform.processor() or platform.machine()}, "
        f"threads {torch.get_num_threads()}"
    )
    if args.family:
        family(
            args.family,
            args.n,
            args.nfe if args.nfe != [10, 20] else [5, 10, 20],
            args.seed,
            args.evals,
        )
        return
    schedule = NoiseSchedule.make("linear", 1000)
    kinds = ("dpmpp_2m", "dpmpp_3m", "adams3", "heun", "ddim")
    ours = [c for c in verify.CONFIGS if c.sampler in kinds]
    for problem in verify.problems(args.n_2d, args.n_64d):
        ref, ref_disp, floor, x_T = verify.setup(problem, args.seed, 8)
        model = problem.mixture.model(schedule)
        den = problem.mixture.denoiser(schedule)
        print(f"\n## {problem.name} (d={problem.mixture.dim}, n={problem.n})")
        print(
            f"noise floor (worst of 8 true sets): ED {floor.ed:.2e}, |disp-1| {floor.disp:.4f}, "
            f"|ll| {floor.ll:.4f}\n"
        )
        print(
            "| NFE | sampler | ED | ED / diffusers-lu | disp | ll gap | inside floor (ed,disp,ll) |"
        )
        print("|---|---|---|---|---|---|---|")
        exact = get_sampler("adams3")(den, x_T, schedule.timesteps(400, "log_snr"))
        m = verify.metrics(exact, ref, problem.mixture, ref_disp)
        ok = "".join("+" if v else "." for v in floor.inside(m).values())
        print(
            f"| 400 | exact ODE map of x_T (adams3) | {m['ed']:.2e} | | {m['disp']:.4f} "
            f"| {m['ll']:.4f} | {ok} |",
            flush=True,
        )
        for nfe in args.nfe:
            results = []
            for label, make in diffusers_configs().items():
                x, _ = run_diffusers(make, model, x_T, nfe)
                results.append((label, verify.metrics(x, ref, problem.mixture, ref_disp)))
            base_ed = results[0][1]["ed"]
            for cfg in ours:
                x = get_sampler(cfg.sampler)(den, x_T, cfg.timesteps(schedule, nfe), **cfg.options)
                results.append(
                    ("ddkit " + cfg.label, verify.metrics(x, ref, problem.mixture, ref_disp))
                )
            for label, m in results:
                ok = "".join("+" if v else "." for v in floor.inside(m).values())
                print(
                    f"| {nfe} | {label} | {m['ed']:.2e} | {m['ed'] / base_ed:.2f} "
                    f"| {m['disp']:.4f} "
                    f"| {m['ll']:.4f} | {ok} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
