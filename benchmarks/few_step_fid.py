"""FID of a trained image model at a few model calls, few-step configurations side by side:
ddkit's default (``runner.FEW_STEP``: adams2 interpolating x0_hat in log-SNR) and adams3
interpolating it in sigma / alpha, the best on the tuning family of test mixtures by the rule
in BENCHMARKS.md; with ``--all`` also adams2 in sigma / alpha and adams3 in log-SNR.  All on the
log-SNR grid whose first step jumps to log-SNR -4, with the ODE's own last step: a choice made
on mixtures, checked on images it never saw.  ``--limiter`` compares instead the default and
adams3 with the posterior end, each with and without the order limiter (``limiter=1``), and
adams2 with the posterior end and the limiter in sigma / alpha and its square root;
``--power`` compares adams2 interpolating in log-SNR, in (sigma / alpha)^0.25 and in its square
root, each with the ODE's last step and with the posterior end.

Each configuration draws ``--num`` samples per seed from the same initial noise, scored by FID
against ``--ref-num`` training images on ddkit's classifier features for the run's data set (or
Inception where its weights are found).

    .venv/bin/python benchmarks/few_step_fid.py runs/fashion_mnist_cond [--nfe 5 10] \\
        [--seeds 0 1] [--num 500] [--all | --limiter | --power]
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _fid import header, load_for_fid  # noqa: E402

from ddkit.evaluation.quality import sample_quality  # noqa: E402
from ddkit.generation import SampleSpec  # noqa: E402
from ddkit.verify.runner import FEW_STEP, SamplerConfig  # noqa: E402

CONFIGS = {
    "default (adams2, in log-SNR)": (FEW_STEP.sampler, FEW_STEP.options),
    "adams3, in sigma (best on the test family)": ("adams3", {"interpolate": "sigma"}),
}
MORE = {
    "adams2, in sigma": ("adams2", {"interpolate": "sigma"}),
    "adams3, in log-SNR": ("adams3", {}),
}
POST = {"last": "posterior"}
LIMITER = {
    "default": (FEW_STEP.sampler, FEW_STEP.options),
    "default, limiter 1": (FEW_STEP.sampler, {**FEW_STEP.options, "limiter": 1.0}),
    "adams3, posterior end": ("adams3", POST),
    "adams3, posterior end, limiter 1": ("adams3", {**POST, "limiter": 1.0}),
    "adams2, posterior end, limiter 1, in sigma/alpha": (
        "adams2",
        {**POST, "limiter": 1.0, "interpolate": "sigma"},
    ),
    "adams2, posterior end, limiter 1, in (sigma/alpha)^0.5": (
        "adams2",
        {**POST, "limiter": 1.0, "interpolate": "sigma^0.5"},
    ),
}

QUARTER, HALF = {"interpolate": "sigma^0.25"}, {"interpolate": "sigma^0.5"}
POWER = {
    "default (adams2, in log-SNR)": (FEW_STEP.sampler, FEW_STEP.options),
    "adams2, in (sigma/alpha)^0.25": ("adams2", QUARTER),
    "adams2, in (sigma/alpha)^0.5": ("adams2", HALF),
    "adams2, posterior end": ("adams2", POST),
    "adams2, posterior end, in (sigma/alpha)^0.25": ("adams2", {**POST, **QUARTER}),
    "adams2, posterior end, in (sigma/alpha)^0.5": ("adams2", {**POST, **HALF}),
}


def spec_for(sampler: str, options: dict, nfe: int) -> SampleSpec:
    """The spec with the most steps whose model calls fit in ``nfe``."""
    steps = SamplerConfig(sampler, sampler, FEW_STEP.spacing, options).steps_for(nfe)
    return SampleSpec(sampler, steps, FEW_STEP.spacing, options)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--ref-num", type=int, default=10_000)
    ap.add_argument("--all", action="store_true", help="also adams2 in sigma, adams3 in log-SNR")
    ap.add_argument(
        "--limiter", action="store_true", help="instead: with and without the order limiter"
    )
    ap.add_argument(
        "--power",
        action="store_true",
        help="instead: adams2 in log-SNR, (sigma/alpha)^0.25 or ^0.5",
    )
    args = ap.parse_args()
    configs = {**CONFIGS, **MORE} if args.all else CONFIGS
    configs = LIMITER if args.limiter else POWER if args.power else configs
    trained, featnet, ref = load_for_fid(args.run, args.ref_num)
    print(header("few-step FID", args.run, trained, featnet, ref, args.num), flush=True)
    rows = []
    for nfe in args.nfe:
        for name, (sampler, options) in configs.items():
            spec = spec_for(sampler, options, nfe)
            fids = []
            for seed in args.seeds:
                q = sample_quality(trained, spec, featnet, ref, args.num, seed=seed)
                fids.append(q.fid)
                print(f"NFE {nfe} {name} seed {seed}: {q.line()}", flush=True)
            rows.append((nfe, name, fids))
    seeds = " / ".join(map(str, args.seeds))
    print(f"\n| NFE | configuration | FID, seeds {seeds} | mean |\n|---|---|---|---|")
    for nfe, name, fids in rows:
        cells = " / ".join(f"{f:.2f}" for f in fids)
        print(f"| {nfe} | {name} | {cells} | {statistics.mean(fids):.2f} |")


if __name__ == "__main__":
    main()
