"""Sampler overhead per step: everything except the network, ddkit beside diffusers.

The network is replaced by a function returning a precomputed tensor, so what is timed is, for
ddkit, the Denoiser's conversion of the output to (eps, x0) plus the sampler's step arithmetic
(and its per-call setup, amortized), and for diffusers ``scheduler.step`` (plus ``set_timesteps``).
Both sides walk the same timestep list with the same output; the noisy samplers draw their noise
from a seeded generator on both sides: torch's CPU generator (then ddkit's DDPM steps equal
diffusers' step for step), or for ddkit ``ddkit.noise.PhiloxNoise``, the source ``ddkit sample``
uses on a CPU.  Runs are interleaved (ddkit, diffusers, ddkit, ...) after
a warm-up, and the table gives the median over repetitions of (run time / steps).

    .venv/bin/python benchmarks/step_overhead.py [--steps 50] [--reps 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

# With more runnable threads than cores (a shared machine), OpenMP's default spin-waiting makes
# every parallel op wait a scheduler tick for a descheduled worker: ~10 ms instead of ~50 us for
# one pass over the batch, whoever's code it is.  Passive waiting times the arithmetic instead.
# It must be set before torch loads OpenMP; OMP_WAIT_POLICY=ACTIVE in the environment overrides.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from _machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run)

from ddkit.diffusion.denoiser import Denoiser  # noqa: E402
from ddkit.diffusion.schedule import NoiseSchedule  # noqa: E402
from ddkit.noise import PhiloxNoise  # noqa: E402
from ddkit.samplers.ddim import sample_ddim  # noqa: E402
from ddkit.samplers.ddpm import sample_ddpm  # noqa: E402
from ddkit.samplers.ode import sample_dpmpp_2m  # noqa: E402

SHAPE = (64, 3, 32, 32)
T = 1000


def make_pairs(steps: int):
    """(label, ours(x_T) -> x_0, theirs(x_T) -> x_0), same timesteps and output on both sides."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    schedule = NoiseSchedule.make("linear", T)
    out = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    denoiser = Denoiser(lambda x, t: out, schedule, "eps")
    common = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")

    ddim = DDIMScheduler(
        **common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading"
    )
    ddpm = DDPMScheduler(
        **common, clip_sample=False, variance_type="fixed_small", timestep_spacing="leading"
    )
    dpm = DPMSolverMultistepScheduler(
        **common, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero"
    )

    def timesteps_of(scheduler) -> list[int]:
        scheduler.set_timesteps(steps)
        return scheduler.timesteps.tolist()

    def diffusers_loop(scheduler, **step_kwargs):
        def run(x):
            scheduler.set_timesteps(steps)
            for t in scheduler.timesteps:
                x = scheduler.step(out, t, x, **step_kwargs).prev_sample
            return x

        return run

    def seeded(fn):  # a fresh generator per run, so both sides draw the same amount of noise
        return lambda x: fn(x, torch.Generator().manual_seed(0))

    ts_ddim, ts_ddpm, ts_dpm = timesteps_of(ddim), timesteps_of(ddpm), timesteps_of(dpm)
    return [
        (
            "DDIM eta=0",
            lambda x: sample_ddim(denoiser, x, ts_ddim),
            diffusers_loop(ddim, eta=0.0),
        ),
        (
            "DDPM fixed_small, torch generator",
            seeded(lambda x, g: sample_ddpm(denoiser, x, ts_ddpm, generator=g)),
            seeded(lambda x, g: diffusers_loop(ddpm, generator=g)(x)),
        ),
        (
            "DDPM fixed_small, Philox noise",
            lambda x: sample_ddpm(denoiser, x, ts_ddpm, generator=PhiloxNoise(0)),
            seeded(lambda x, g: diffusers_loop(ddpm, generator=g)(x)),
        ),
        (
            "DPM-Solver++ 2M",
            lambda x: sample_dpmpp_2m(denoiser, x, ts_dpm),
            diffusers_loop(dpm),
        ),
    ]


def time_per_step(fn, x, steps: int) -> float:
    t0 = time.perf_counter()
    fn(x)
    return (time.perf_counter() - t0) / steps * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    import diffusers

    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    pairs = make_pairs(args.steps)
    rows = []
    g, source = torch.Generator().manual_seed(0), PhiloxNoise(0)
    buf = torch.empty(SHAPE)
    draws = {
        "torch's normal_": lambda: buf.normal_(generator=g),
        "PhiloxNoise.normal": lambda: source.normal(SHAPE),
    }
    draw_us = {}
    for name, draw in draws.items():  # the Gaussian draw a DDPM step makes, alone
        for _ in range(args.warmup):
            draw()
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            draw()
            times.append((time.perf_counter() - t0) * 1e6)
        draw_us[name] = statistics.median(times)
    for label, ours, theirs in pairs:
        for _ in range(args.warmup):
            ours(x_T)
            theirs(x_T)
        t_ours, t_theirs = [], []
        for _ in range(args.reps):
            t_ours.append(time_per_step(ours, x_T, args.steps))
            t_theirs.append(time_per_step(theirs, x_T, args.steps))
        rows.append((label, statistics.median(t_ours), statistics.median(t_theirs)))

    print(
        f"# sampler overhead per step, {time.strftime('%Y-%m-%d %H:%M')}\n\n"
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"threads {torch.get_num_threads()} (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), "
        f"CPU {cpu_name()} ({os.cpu_count()} logical cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end)\n"
        f"batch {list(SHAPE)} float32, {args.steps} steps, T={T}, median of {args.reps} "
        f"interleaved runs after {args.warmup} warm-up; model = precomputed tensor\n"
    )
    print("| sampler | ddkit us/step | diffusers us/step | ratio ddkit/diffusers | goal <= 0.5 |")
    print("|---|---|---|---|---|")
    for label, a, b in rows:
        ok = "yes" if a / b <= 0.5 else "no"
        print(f"| {label} | {a:.0f} | {b:.0f} | {a / b:.2f} | {ok} |")
    a, b = next((a, b) for label, a, b in rows if label.startswith("DDPM"))
    torch_us = draw_us["torch's normal_"]
    print(
        f"\nThe Gaussian draw alone ({list(SHAPE)}, median of {args.reps}): "
        + ", ".join(f"{name} {us:.0f} us" for name, us in draw_us.items())
        + f".  DDPM with torch's generator without its draw: ddkit {a - torch_us:.0f} us, "
        f"diffusers {b - torch_us:.0f} us, ratio {(a - torch_us) / (b - torch_us):.2f}."
    )


if __name__ == "__main__":
    main()
