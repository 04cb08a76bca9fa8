"""Choosing the few-step default on the tuning family, and checking it on the held-out family.

Candidate configurations (grid, its packing toward the data, first-step window, solver order,
corrector, the variable x0_hat is interpolated in (log-SNR, sigma / alpha, its square or fourth
root), the order limiter (with each variable at the posterior end), last step: the ODE's own,
or a tail of 1 to 4 posterior draws, each shaped by 1 to 4 Jacobian-vector products) run with
the exact denoiser of every member of one split of :mod:`ddkit.verify.family` at NFE 5, 10 and
20 (where the budget leaves the draws their steps and calls); the table is the worst case over
the members (:func:`ddkit.verify.family_report.worst_case`).  The rule: the smallest sum over
the NFEs of log(worst ed/floor) + log(max(disp, 1/disp)), among the candidates that ran at every
NFE; the best at each NFE alone is listed too.  The choice is made on ``--split tuning`` only;
``--split held_out`` reports it.

    .venv/bin/python benchmarks/family_defaults.py --split tuning [--n 2000] [--json FILE]

``--seeds 0 1 2 3`` repeats the runs with other reference samples, floors and initial noise, and
lists the members inside the floor per seed beside a perfect sampler's expected count
(:func:`ddkit.verify.runner.true_sample_rates`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from _machine import cpu_name  # noqa: E402

from ddkit.verify.family_report import (  # noqa: E402
    FAMILY_NFES,
    WORST_HEADER,
    family_problems,
    format_worst,
    worst_case,
)
from ddkit.verify.runner import SamplerConfig, run  # noqa: E402


def candidates() -> list[SamplerConfig]:
    out = [SamplerConfig("dpm++2m logSNR", "dpmpp_2m", "log_snr")]
    for window in (None, -2.0, -3.0, -4.0, -5.0, -6.0):
        name = "" if window is None else f">{window:g}"
        out.append(SamplerConfig(f"adams3 PC logSNR{name}", "adams3", "log_snr", {}, window))
    out += [
        SamplerConfig("adams3 P logSNR>-4", "adams3", "log_snr", {"corrector": False}, -4.0),
        SamplerConfig("adams2 PC logSNR>-4", "adams2", "log_snr", {}, -4.0),
        SamplerConfig("adams2 PC logSNR", "adams2", "log_snr"),
        SamplerConfig("dpm++3m logSNR>-4", "dpmpp_3m", "log_snr", {}, -4.0),
    ]
    post = {"last": "posterior"}  # the last step a draw from the posterior (one JVP)
    out += [
        SamplerConfig("adams2 PC logSNR>-4 post", "adams2", "log_snr", post, -4.0),
        SamplerConfig("adams2 PC logSNR post", "adams2", "log_snr", post),
        SamplerConfig("adams3 PC logSNR>-4 post", "adams3", "log_snr", post, -4.0),
        SamplerConfig("adams3 PC logSNR>-5 post", "adams3", "log_snr", post, -5.0),
        SamplerConfig("adams3 PC logSNR>-6 post", "adams3", "log_snr", post, -6.0),
        SamplerConfig("adams3 PC logSNR post", "adams3", "log_snr", post),
        SamplerConfig(
            "adams2 P logSNR>-4 post", "adams2", "log_snr", {**post, "corrector": False}, -4.0
        ),
    ]
    out += [  # log-SNR steps packed toward the data (NoiseSchedule.timesteps' rho)
        SamplerConfig(f"adams3 PC logSNR>-4 rho{rho:g} post", "adams3", "log_snr", post, -4.0, rho)
        for rho in (1.2, 1.33)
    ]
    for m in (2, 3, 4):  # the last m steps Tweedie ancestral draws
        tail = {**post, "tail": m}
        out.append(SamplerConfig(f"adams2 PC logSNR>-4 post{m}", "adams2", "log_snr", tail, -4.0))
    for m in (2, 3, 4):  # one draw shaped by m Lanczos steps (m JVPs)
        lz = {**post, "krylov": m}
        out.append(SamplerConfig(f"adams2 PC logSNR>-4 post k{m}", "adams2", "log_snr", lz, -4.0))
    for m in (2, 3):
        lz = {**post, "krylov": m}
        out.append(SamplerConfig(f"adams3 PC logSNR>-4 post k{m}", "adams3", "log_snr", lz, -4.0))
        out.append(SamplerConfig(f"adams3 PC logSNR>-6 post k{m}", "adams3", "log_snr", lz, -6.0))
        out.append(SamplerConfig(f"adams3 PC logSNR post k{m}", "adams3", "log_snr", lz))
        out.append(SamplerConfig(f"adams2 PC logSNR post k{m}", "adams2", "log_snr", lz))
    for var in ("sigma", "sigma^0.5", "sigma^0.25"):  # x0_hat in sigma / alpha or a root of it
        opts = {"interpolate": var}
        for order in (2, 3):
            name = f"adams{order}"
            out += [
                SamplerConfig(f"{name} PC logSNR>-4 {var}", name, "log_snr", opts, -4.0),
                SamplerConfig(
                    f"{name} PC logSNR>-4 post {var}", name, "log_snr", {**post, **opts}, -4.0
                ),
            ]
            if var == "sigma":
                out.append(
                    SamplerConfig(f"{name} PC logSNR post sigma", name, "log_snr", {**post, **opts})
                )
    sig = {"interpolate": "sigma"}
    out.append(
        SamplerConfig("adams2 PC logSNR>-6 post sigma", "adams2", "log_snr", {**post, **sig}, -6.0)
    )
    for order in (2, 3):
        for window in (None, -3.0, -5.0, -6.0):
            name = "" if window is None else f">{window:g}"
            label = f"adams{order} PC logSNR{name} sigma"
            out.append(SamplerConfig(label, f"adams{order}", "log_snr", sig, window))
    out.append(
        SamplerConfig(
            "adams3 P logSNR>-4 sigma", "adams3", "log_snr", {"corrector": False, **sig}, -4.0
        )
    )
    lim = {"limiter": 1.0}  # first order where x0_hat switches modes (sample_adams)
    for order in (2, 3):
        name = f"adams{order}"
        out += [
            SamplerConfig(f"{name} PC logSNR>-4 lim", name, "log_snr", lim, -4.0),
            SamplerConfig(f"{name} PC logSNR>-4 post lim", name, "log_snr", {**post, **lim}, -4.0),
        ]
        for var in ("sigma", "sigma^0.5", "sigma^0.25"):
            opts = {**post, **lim, "interpolate": var}
            out.append(
                SamplerConfig(f"{name} PC logSNR>-4 post lim {var}", name, "log_snr", opts, -4.0)
            )
    return out


def score(row: dict) -> float:
    """The rule's value of one worst-case row: log(worst ed/floor) + log(max(disp, 1/disp))."""
    disp = max(row["disp"], 1.0 / row["disp"])
    return math.log(max(row["ed_over_floor"], 1e-3)) + math.log(disp)


def rule(worst: list[dict]) -> dict[str, float]:
    """Each sampler's score under the rule of the module docstring (lower is better): the sum
    over the NFEs, for the samplers that ran at every NFE of the table."""
    nfes = {r["nfe"] for r in worst}
    ran: dict[str, set] = {}
    for r in worst:
        ran.setdefault(r["sampler"], set()).add(r["nfe"])
    return {
        label: sum(score(r) for r in worst if r["sampler"] == label)
        for label, done in ran.items()
        if done == nfes
    }


def report(worst: list[dict]) -> None:
    print(f"\n{WORST_HEADER}")
    for row in sorted(worst, key=lambda r: (r["nfe"], r["sampler"])):
        print(format_worst(row))
    print("\n| sampler | score (lower is better) |\n|---|---|")
    for label, value in sorted(rule(worst).items(), key=lambda kv: kv[1]):
        print(f"| {label} | {value:.2f} |")
    print("\n| NFE | best at this NFE | its score | runner-up | its score |\n|---|---|---|---|---|")
    for nfe in sorted({r["nfe"] for r in worst}):
        ranked = sorted((score(r), r["sampler"]) for r in worst if r["nfe"] == nfe)
        (a, best), (b, second) = ranked[0], ranked[1] if len(ranked) > 1 else (math.nan, "-")
        print(f"| {nfe} | {best} | {a:.2f} | {second} | {b:.2f} |")


def seed_summary(runs: dict) -> None:
    """Members inside the floor per seed, beside a perfect sampler's expected count."""
    seeds = sorted(runs)
    names = ", ".join(map(str, seeds))
    print(f"\n| sampler | NFE | inside, seeds {names} | mean |\n|---|---|---|---|")
    keys = sorted({(r["sampler"], r["nfe"]) for run in runs.values() for r in run["worst"]})
    for label, nfe in sorted(keys, key=lambda k: (k[1], k[0])):
        counts = [
            r["inside"]
            for s in seeds
            for r in runs[s]["worst"]
            if (r["sampler"], r["nfe"]) == (label, nfe)
        ]
        print(
            f"| {label} | {nfe} | {', '.join(map(str, counts))} | {sum(counts) / len(counts):.1f} |"
        )
    perfect = [runs[s]["perfect_inside"] for s in seeds]
    members = runs[seeds[0]]["worst"][0]["members"]
    print(
        f"| a perfect sampler (expected, of {members}) | any | "
        f"{', '.join(f'{p:.1f}' for p in perfect)} | {sum(perfect) / len(perfect):.1f} |"
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="tuning", choices=("tuning", "held_out"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--nfe", type=int, nargs="+", default=list(FAMILY_NFES))
    ap.add_argument("--only", nargs="+", help="only these candidate labels")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="reference and noise seeds")
    ap.add_argument("--json", help="write the per-member results and worst case here")
    ap.add_argument("--from-json", help="print the tables of a --json file; run nothing")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            doc = json.load(f)
        if "seeds" not in doc:  # a file of one seed, from before --seeds
            report(worst_case(doc["members"]))
            return
        runs = {int(k): v for k, v in doc["seeds"].items()}
        for seed in sorted(runs):
            print(f"\n# seed {seed}")
            report(runs[seed]["worst"])
        seed_summary(runs)
        return
    configs = [c for c in candidates() if not args.only or c.label in args.only]
    unknown = set(args.only or ()) - {c.label for c in configs}
    if unknown or not configs:
        ap.error(f"--only: no candidate {', '.join(sorted(unknown))}")
    print(
        f"# few-step candidates on the {args.split} family, {time.strftime('%Y-%m-%d')}, "
        f"torch {torch.__version__}, {cpu_name()}, n={args.n} per member"
    )
    problems = family_problems(args.split, args.n)
    runs = {}
    for seed in args.seeds:
        print(f"\n# seed {seed}")
        results = run(configs, tuple(args.nfe), seed=seed, perfect_draws=8, on=problems, log=print)
        worst = worst_case(results)
        report(worst)
        perfect = sum(res["perfect"]["all"] for res in results.values())
        runs[seed] = {"members": results, "worst": worst, "perfect_inside": perfect}
    seed_summary(runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"split": args.split, "seeds": runs}, f, indent=1)


if __name__ == "__main__":
    main()
