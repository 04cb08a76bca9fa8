"""What OpenMP's wait policy costs: a small U-Net's training step and sampling call and the 2-D
MLP's training step under ``OMP_WAIT_POLICY`` = PASSIVE (what the ``ddkit`` command sets),
ACTIVE and unset (the OpenMP runtime's default), each alone and beside a competing process that
keeps both cores busy (a shared machine).

    .venv/bin/python benchmarks/omp_wait_policy.py [--limit 120]

Each case runs in a fresh process (the policy is read when torch loads OpenMP); a case still
running after ``--limit`` seconds is reported as over it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from _machine import cpu_and_torch

WORK = r"""
import dataclasses, time, torch
from ddkit.models.presets import preset
torch.manual_seed(0)
unet = dataclasses.replace(preset("ddpm-8"), num_res_blocks=1, dropout=0.0).build()
mlp = preset("mlp-2d").build()

def train(model, x, t, n):
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for i in range(n + 3):  # 3 warm-up steps
        if i == 3:
            t0 = time.perf_counter()
        loss = model(x, t).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / n * 1e3

unet_ms = train(unet, torch.randn(64, 1, 8, 8), torch.randint(0, 1000, (64,)), 40)
x, t = torch.randn(40, 1, 8, 8), torch.full((40,), 500)
with torch.inference_mode():
    unet(x, t)
    t0 = time.perf_counter()
    for _ in range(60):
        unet(x, t)
sample_ms = (time.perf_counter() - t0) / 60 * 1e3
mlp_ms = train(mlp, torch.randn(256, 2), torch.randint(0, 1000, (256,)), 200)
print(f"{unet_ms:.0f} | {sample_ms:.1f} | {mlp_ms:.1f}")
"""

LOAD = r"""
import torch
torch.set_num_threads(2)
a = torch.randn(256, 256)
while True:
    a = (a @ a).tanh()
"""


def case(policy: str | None, limit: float) -> str:
    """The WORK line under ``policy`` (None: unset), or a note that it ran over ``limit``."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    try:
        done = subprocess.run(
            [sys.executable, "-c", WORK], env=env, capture_output=True, text=True, timeout=limit
        )
    except subprocess.TimeoutExpired:
        return f"over {limit:.0f} s | | "
    return done.stdout.strip() or done.stderr.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=float, default=120.0, help="seconds per case")
    args = ap.parse_args()
    print(f"{cpu_and_torch(2)}, {time.strftime('%Y-%m-%d')}\n")
    print("| machine | OMP_WAIT_POLICY | U-Net train step, ms | U-Net call (40), ms | MLP step, ms")
    print("|---|---|---|---|---")
    for loaded in (False, True):
        load = None
        if loaded:
            env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
            load = subprocess.Popen([sys.executable, "-c", LOAD], env=env)
            time.sleep(3)
        try:
            for policy in ("PASSIVE", "ACTIVE", None):
                where = "beside a 2-thread load" if loaded else "alone"
                line = case(policy, args.limit)
                print(f"| {where} | {policy or 'unset'} | {line}", flush=True)
        finally:
            if load is not None:
                load.kill()


if __name__ == "__main__":
    main()
