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

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _fid import header, load_for_fid  # noqa: E402

from ddkit.evaluation.quality import sample_quality  # noqa: E402
from ddkit.generation import SampleSpec  # noqa: E402
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
    args = ap.parse_args()
    trained, featnet, ref = load_for_fid(args.run, args.ref_num)
    title = f"tuned vs default grid ({DEFAULT_SAMPLER}, start grid {DEFAULT_SPACING})"
    print(header(title, args.run, trained, featnet, ref, args.num), flush=True)
    rows = []
    for nfe in args.nfe:
        entry = tune_steps(
            trained,
            args.run,
            nfe=nfe,
            pilot=args.pilot,
            check=args.pilot,
            reference_steps=args.reference_steps,
            max_evals=args.evals,
            seed=1000,
        )
        steps = len(entry["timesteps"])
        specs = {
            "default": SampleSpec(DEFAULT_SAMPLER, steps, DEFAULT_SPACING),
            "tuned": SampleSpec(DEFAULT_SAMPLER, steps, tuple(entry["timesteps"])),
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
