"""What a checkpoint's integrity hash and schema checks cost: save and load of a training
checkpoint of a preset's U-Net, and the share of each spent hashing (``tensors_sha256``).

The checkpoint holds what training writes for the model: its state, the EMA, and Adam's two
moments (four copies of the parameters), saved and loaded through ``ddkit.checkpoint`` into a
temporary folder (the page cache, so the figures are the CPU's, not the disk's).  Medians over
``--reps``.

    .venv/bin/python benchmarks/checkpoint_io.py [--preset ddpm-cifar10] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _machine import cpu_and_torch

from ddkit import checkpoint as ckpt
from ddkit.models import preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="ddpm-cifar10")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    state = preset(args.preset).build().state_dict()
    tensors = {}
    for prefix in ("model", "ema", "optim/exp_avg", "optim/exp_avg_sq"):
        tensors |= {f"{prefix}/{k}": v.clone() for k, v in state.items()}
    size = sum(v.numel() * v.element_size() for v in tensors.values())
    times = {"hash": [], "save": [], "load": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ckpt.checkpoint_name(1)
        for _ in range(args.reps):
            t0 = time.perf_counter()
            ckpt.tensors_digest(tensors)
            t1 = time.perf_counter()
            ckpt.save_checkpoint(path, tensors, {"step": 1, "config": {}})
            t2 = time.perf_counter()
            ckpt.load_checkpoint(path)
            t3 = time.perf_counter()
            times["hash"].append(t1 - t0)
            times["save"].append(t2 - t1)
            times["load"].append(t3 - t2)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(cpu_and_torch(torch.get_num_threads()))
    print(f"{args.preset}: {size / 2**20:.0f} MiB of tensors, median of {args.reps}")
    print("| operation | seconds | hashing's share |")
    print("|---|---|---|")
    print(f"| hash all tensors (SHA-256) | {med['hash']:.2f} | |")
    for k in ("save", "load"):
        print(f"| {k} (hash included) | {med[k]:.2f} | {med['hash'] / med[k]:.0%} |")


if __name__ == "__main__":
    main()
