"""Conditional generation against exact answers: inpainting, class-conditional sampling, guidance.

1. Inpainting.  A Gaussian mixture conditioned on observed coordinates is a Gaussian mixture
   (``GaussianMixture.condition``).  For the 2-D mixture observing x_1 (three values drawn from
   the data) and the 64-D mixture observing its first 32 coordinates (two values drawn from the
   data), the exact denoiser of the whole mixture inpaints the rest by replacement
   (``resample = 1``) and by RePaint (jump length 10, several resampling budgets); the free
   coordinates are compared with an exact conditional sample (energy distance, dispersion,
   log-likelihood gap; noise floor: the worst of 4 further exact samples).
2. Class-conditional sampling per class of a labelled mixture (the classes group components),
   through the guidance wrapper at w = 0 around the exact class-conditional denoiser.
3. Guidance w > 0 on the 2-D mixture: the samples against the tilted density
   p(x | c)^(1 + w) p(x)^(-w), normalised on a grid (what guidance is often said to sample;
   it does not, since tilting does not commute with diffusing).

Run:  .venv/bin/python benchmarks/conditional_oracle.py [--quick]   (about 15 min on 2 cores)
"""

from __future__ import annotations

import argparse
import time

import torch
from _machine import cpu_and_torch

from ddkit.diffusion.denoiser import Denoiser
from ddkit.diffusion.guidance import guided
from ddkit.diffusion.schedule import NoiseSchedule
from ddkit.samplers import get_sampler
from ddkit.samplers.editing import sample_inpaint
from ddkit.verify.oracle import GaussianMixture, mixture_2d, mixture_lowrank
from ddkit.verify.runner import BEST, Problem, SamplerConfig, metrics, setup
from ddkit.verify.statistics import energy_distance

SCHED = NoiseSchedule.make("linear", 1000)
DDPM_TJ = SamplerConfig(
    "ddpm tweedie-jacobian", "ddpm", "leading", {"variance": "tweedie_jacobian"}
)
DPMPP = SamplerConfig("dpm++2m", "dpmpp_2m", "log_snr")


def fmt(m: dict, floor) -> str:
    inside = floor.inside(m)
    cells = [
        f"{m['ed']:.2e}{'*' if inside['ed'] else ''}",
        f"{m['disp']:.3f}{'*' if inside['disp'] else ''}",
        f"{m['ll']:+.3f}{'*' if inside['ll'] else ''}",
    ]
    return " | ".join(cells)


def inpainting(quick: bool) -> None:
    print("\n## Inpainting against the exact conditional mixture (100 DDPM steps, jump 10)\n")
    print("| case | method | model calls | energy dist. | dispersion | log-lik. gap | s |")
    print("|---|---|---|---|---|---|---|")
    budgets = (1, 3) if quick else (1, 3, 10)
    g = torch.Generator().manual_seed(5)
    cases = []
    m2 = mixture_2d()
    for v in m2.sample(3, g, dtype=torch.float64)[0][:, :1]:
        cases.append((f"2-D, x_1 = {float(v[0]):+.2f}", m2, [0], v, 2000 if quick else 10_000))
    m64 = mixture_lowrank()
    for i, v in enumerate(m64.sample(2, g, dtype=torch.float64)[0][:, :32]):
        cases.append(
            (f"64-D, half observed ({i})", m64, list(range(32)), v, 1000 if quick else 2000)
        )
    for name, mix, obs, values, n in cases:
        cond = mix.condition(obs, values)
        problem = Problem(name, cond, n)
        ref, ref_disp, floor, _ = setup(problem, 0, 4)
        free = [i for i in range(mix.dim) if i not in obs]
        known = torch.zeros(n, mix.dim, dtype=torch.float64)
        known[:, obs] = values
        mask = torch.zeros(mix.dim, dtype=torch.float64)
        mask[obs] = 1.0
        floor_row = {"ed": floor.ed, "disp": 1 + floor.disp, "ll": floor.ll}
        print(f"| {name} | noise floor | | {fmt(floor_row, floor).replace('*', '')} | |")
        for r in budgets:
            gen = torch.Generator().manual_seed(1)
            x_T = torch.randn(n, mix.dim, generator=gen, dtype=torch.float64)
            t0 = time.perf_counter()
            x = sample_inpaint(
                mix.denoiser(SCHED),
                x_T,
                SCHED.timesteps(100, "trailing"),
                known=known,
                mask=mask,
                jump_length=10,
                resample=r,
                generator=gen,
            )
            s = time.perf_counter() - t0
            m = metrics(x[:, free], ref, cond, ref_disp)
            label = "replacement" if r == 1 else f"RePaint r={r}"
            print(f"| {name} | {label} | {100 * r} | {fmt(m, floor)} | {s:.0f} |", flush=True)


def labelled() -> list[tuple[str, GaussianMixture, int]]:
    m2, m64 = mixture_2d(), mixture_lowrank()
    return [
        ("2-D", GaussianMixture(m2.weights, m2.means, m2.covs, classes=[0, 1, 0, 1, 2]), 10_000),
        ("64-D", GaussianMixture(m64.weights, m64.means, m64.covs, classes=[0, 1, 1, 0]), 4_000),
    ]


def per_class(quick: bool) -> None:
    print("\n## Class-conditional sampling per class, exact denoiser, guidance w = 0\n")
    print("| mixture | class | sampler | NFE | energy dist. | dispersion | log-lik. gap |")
    print("|---|---|---|---|---|---|---|")
    runs = [(BEST, 20), (DPMPP, 20)] + ([] if quick else [(DDPM_TJ, 1000)])
    for name, mix, n in labelled():
        model = mix.class_model(SCHED)
        for c in range(mix.n_classes):
            problem = Problem(name, mix.of_class(c), n // (4 if quick else 1))
            ref, ref_disp, floor, x_T = setup(problem, 0, 8)
            y = torch.full((problem.n,), c)
            den = Denoiser(guided(model, y, mix.n_classes), SCHED, "x0")
            for cfg, nfe in runs:
                gen = torch.Generator().manual_seed(1)
                ts = cfg.timesteps(SCHED, nfe)
                x = get_sampler(cfg.sampler)(den, x_T, ts, generator=gen, **cfg.options)
                m = metrics(x, ref, problem.mixture, ref_disp)
                print(f"| {name} | {c} | {cfg.label} | {nfe} | {fmt(m, floor)} |", flush=True)


def tilted_sample(mix: GaussianMixture, c: int, w: float, n: int, gen, cells: int = 600):
    """n draws of p(x | c)^(1 + w) p(x)^(-w) normalised on a cells x cells grid over
    [-1.6, 1.6]^2 (a cell picked by its mass, then a uniform point inside it)."""
    lo, hi = -1.6, 1.6
    h = (hi - lo) / cells
    centres = lo + h * (torch.arange(cells, dtype=torch.float64) + 0.5)
    gx, gy = torch.meshgrid(centres, centres, indexing="ij")
    pts = torch.stack([gx.ravel(), gy.ravel()], 1)
    logp = (1 + w) * mix.of_class(c).log_prob(pts) - w * mix.log_prob(pts)
    prob = torch.softmax(logp, 0)
    idx = torch.multinomial(prob, n, replacement=True, generator=gen)
    return pts[idx] + (torch.rand(n, 2, generator=gen, dtype=torch.float64) - 0.5) * h


def guidance_vs_tilted(quick: bool) -> None:
    print("\n## Guided samples against the tilted density p(x|c)^(1+w) p(x)^(-w), 2-D mixture\n")
    print("| class | w | sampler | energy dist. to tilted | floor (tilted vs tilted) |")
    print("|---|---|---|---|---|")
    name, mix, n = labelled()[0]
    n = n // (4 if quick else 2)
    model = mix.class_model(SCHED)
    for c in range(mix.n_classes):
        for w in (0.0, 1.0, 3.0):
            gen = torch.Generator().manual_seed(2)
            ref = tilted_sample(mix, c, w, n, gen)
            floor = max(energy_distance(tilted_sample(mix, c, w, n, gen), ref) for _ in range(4))
            x_T = torch.randn(n, 2, generator=gen, dtype=torch.float64)
            den = Denoiser(guided(model, torch.full((n,), c), mix.n_classes, scale=w), SCHED, "x0")
            x = get_sampler(BEST.sampler)(den, x_T, BEST.timesteps(SCHED, 20))
            ed = energy_distance(x, ref)
            calls = 20 * (2 if w else 1)
            print(f"| {c} | {w:g} | {BEST.label}, {calls} calls | {ed:.2e} | {floor:.2e} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller samples, fewer budgets")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--part", choices=("all", "inpaint", "classes", "guidance"), default="all")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {cpu_and_torch(args.threads)}; {time.strftime('%Y-%m-%d')}")
    if args.part in ("all", "inpaint"):
        inpainting(args.quick)
    if args.part in ("all", "classes"):
        per_class(args.quick)
    if args.part in ("all", "guidance"):
        guidance_vs_tilted(args.quick)
    print("\n*: inside the noise floor")


if __name__ == "__main__":
    main()
