"""``ddkit train`` with glibc's malloc kept (its default since 2026-11-30) against glibc's own
defaults (``DDKIT_MALLOC_TUNING=0``): minor page faults and steps/s, in alternating runs.

Each run is ``ddkit train`` in a fresh process on Fashion-MNIST with the ``ddpm-28`` preset at
batch 64 for ``--steps`` steps (no sampling, one final checkpoint), two threads; steps/s is read
from ``metrics.jsonl`` for the logging windows after step 10, page faults are the process's
(startup and data loading included).

    .venv/bin/python benchmarks/train_malloc.py [--pairs 4] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = """
[model]
preset = "ddpm-28"
[data]
name = "fashion_mnist"
hflip = true
[train]
max_steps = {steps}
batch_size = 64
log_every = 10
sample_every = 0
ckpt_every = 100000
keep_last = 1
progress = false
tensorboard = false
out_dir = "{out}"
"""

CHILD = """
import resource, sys
from ddkit.cli import main
code = main(["train", sys.argv[1]])
print("FAULTS", resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
sys.exit(code)
"""


def run(tmp: Path, kept: bool, steps: int) -> tuple[float, int]:
    out = tmp / ("kept" if kept else "plain")
    cfg = tmp / "run.toml"
    cfg.write_text(CONFIG.format(steps=steps, out=out))
    env = {**os.environ, "DDKIT_MALLOC_TUNING": "1" if kept else "0", "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(cfg)], env=env, capture_output=True, text=True, check=True
    )
    faults = int(next(x for x in done.stdout.splitlines() if x.startswith("FAULTS")).split()[1])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rate = statistics.mean(r["steps_per_s"] for r in rows if r["step"] > 10)
    shutil.rmtree(out)
    return rate, faults


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    a = p.parse_args()
    res = {True: [], False: []}
    with tempfile.TemporaryDirectory() as d:
        for k in range(a.pairs):
            for kept in (True, False):
                rate, faults = run(Path(d), kept, a.steps)
                res[kept].append((rate, faults))
                print(
                    f"pair {k}: {'kept ' if kept else 'glibc'} {rate:.3f} steps/s, "
                    f"{faults:,} page faults",
                    flush=True,
                )
    ratios = [k[0] / g[0] for k, g in zip(res[True], res[False])]
    extra = statistics.median((g[1] - k[1]) / a.steps for k, g in zip(res[True], res[False]))
    print(
        f"kept / glibc defaults, steps/s per pair: {', '.join(f'{r:.2f}' for r in ratios)} "
        f"(median {statistics.median(ratios):.3f}); page faults saved per step (median): "
        f"{extra:,.0f}"
    )


if __name__ == "__main__":
    main()
