"""FID of a trained image model at a few model calls: the default few-step grid beside the grid
``ddkit tune-steps`` tunes for the model, over several sampling seeds.

For each NFE the grid is tuned once (``ddkit.tuned_steps.tune_steps``: pilot noises from seed
1000, so no sampling seed below is tuned on; the grid is also stored in the run folder), then
``--num`` samples per seed are drawn with each grid from the same initial noise and scored by
FID against ``--ref-num`` training images, on ddkit's classifier features for the run's data set
(or Inception where its weights are found).

    .venv/bin/python benchmarks/tuned_steps_fid.py runs/fashion_mnist_cond \\
        [--nfe 5 10] [--seeds 0 1 2] [--num 2000] [--pilot 32] [--evals 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from _machine import cpu_name  # noqa: E402

from ddkit.evaluation.quality import (  # noqa: E402
    feature_network,
    reference_features,
    sample_quality,
)
from ddkit.generation import SampleSpec  # noqa: E402
from ddkit.trained import load_trained  # noqa: E402
from ddkit.tuned_steps import DEFAULT_SAMPLER, DEFAULT_SPACING, tune_steps  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--ref-num", type=int, default=10_000)
    ap.add_argument("--pilot", type=int, default=32)
    ap.add_argument("--evals", type=int, default=40)
    ap.add_argument("--reference-steps", type=int, default=200)
    ap.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=("adams2", "adams3"))
    ap.add_argument("--interpolate", default="sigma", choices=("log_snr", "sigma"))
    args = ap.parse_args()
    trained = load_trained(args.run)
    featnet = feature_network(trained)
    ref = reference_features(featnet, trained.config.data, args.ref_num)
    print(
        f"# tuned vs default grid, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
        f"{cpu_name()}, {torch.get_num_threads()} threads; {args.run} step {trained.step}; "
        f"{featnet.metric_name} of {args.num} samples vs {len(ref)} training images; sampler "
        f"{args.sampler} ({args.interpolate}), start grid {DEFAULT_SPACING}",
        flush=True,
    )
    options = {"interpolate": args.interpolate}
    rows = []
    for nfe in args.nfe:
        entry = tune_steps(
            trained,
            args.run,
            nfe=nfe,
            sampler=args.sampler,
            options=options,
            pilot=args.pilot,
            check=args.pilot,
            reference_steps=args.reference_steps,
            max_evals=args.evals,
            seed=1000,
        )
        steps = len(entry["timesteps"])
        specs = {
            "default": SampleSpec(args.sampler, steps, DEFAULT_SPACING, options),
            "tuned": SampleSpec(args.sampler, steps, tuple(entry["timesteps"]), options),
        }
        for name, spec in specs.items():
            fids = []
            for seed in args.seeds:
                q = sample_quality(trained, spec, featnet, ref, args.num, seed=seed)
                fids.append(q.fid)
                print(f"NFE {nfe} {name} seed {seed}: {q.line()}", flush=True)
            rows.append((nfe, name, spec.timesteps(trained.schedule), fids, entry))
    print("\n| NFE | grid | timesteps | FID per seed | mean |\n|---|---|---|---|---|")
    for nfe, name, ts, fids, _ in rows:
        per = ", ".join(f"{f:.2f}" for f in fids)
        print(f"| {nfe} | {name} | {ts} | {per} | {statistics.mean(fids):.2f} |")
    for nfe, name, _, _, entry in rows:
        if name == "tuned":
            r = entry["rms_to_reference"]
            print(
                f"NFE {nfe}: RMS to the ODE solution, check noises: {r['check']['start']:.4f} -> "
                f"{r['check']['tuned']:.4f} (pilot {r['pilot']['start']:.4f} -> "
                f"{r['pilot']['tuned']:.4f}), {entry['evaluations']} sampler runs, "
                f"{entry['seconds']:.0f} s"
            )


if __name__ == "__main__":
    main()
