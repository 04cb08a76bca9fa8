"""``ddkit verify``: every sampler against exact ground truth.

Each sampler runs with the exact (Bayes-optimal) denoiser of a Gaussian mixture
(:mod:`ddkit.verify.oracle`) at several budgets of model evaluations (NFE), from one shared
initial noise, and its samples are compared with the true distribution by three metrics:

* ``ed``: energy distance to an independent true sample (two-sample distance);
* ``disp``: within-mode dispersion (mean squared Mahalanobis distance to the assigned mode / d)
  relative to that of the true sample; 1 is right, < 1 under-dispersed;
* ``ll``: mean log-likelihood under the true density minus that of the true sample (nats).

The noise floor is the same metrics between the reference and ``floor_reps`` further independent
true samples of the same size; a result is "inside the floor" when it is no worse than the worst
of those (|disp - 1|, |ll| and ed compared to the floor's largest).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch

from ..diffusion.schedule import NoiseSchedule
from ..samplers import SAMPLERS, get_sampler
from .oracle import GaussianMixture, mixture_2d, mixture_lowrank
from .statistics import dispersion, energy_distance, loglik_gap

NFES = (10, 20, 50, 100, 1000)
_LOG = partial(print, flush=True)


@dataclass(frozen=True)
class SamplerConfig:
    """A sampler with its options and timestep placement, as ``ddkit verify`` runs it."""

    label: str
    sampler: str
    spacing: str = "leading"
    options: dict = field(default_factory=dict)
    min_log_snr: float | None = None
    rho: float = 1.0  # > 1 packs log-SNR steps toward the data (NoiseSchedule.timesteps)

    def steps_for(self, nfe: int) -> int:
        """The most timesteps whose model-call count fits in ``nfe``."""
        info = get_sampler(self.sampler)
        n = nfe
        while n > 1 and info.nfe(n, **self.options) > nfe:
            n -= 1
        return n

    def fits(self, nfe: int) -> bool:
        """Whether the sampler can run within ``nfe`` model calls (a tail of posterior draws
        needs as many timesteps as draws)."""
        steps = self.steps_for(nfe)
        info = get_sampler(self.sampler)
        return steps >= self.options.get("tail", 1) and info.nfe(steps, **self.options) <= nfe

    def timesteps(self, schedule: NoiseSchedule, nfe: int) -> list[int]:
        """The timesteps of :meth:`steps_for` ``nfe`` on ``schedule``."""
        n = self.steps_for(nfe)
        return schedule.timesteps(n, self.spacing, min_log_snr=self.min_log_snr, rho=self.rho)


BEST = SamplerConfig("adams3 PC logSNR>-4", "adams3", "log_snr", min_log_snr=-4.0)
"""Third-order exponential Adams predictor-corrector (:func:`ddkit.samplers.sample_adams`) on a
log-SNR grid whose first step jumps to log-SNR -4: the most accurate on the two mixtures here."""

FEW_STEP = SamplerConfig("adams2 PC logSNR>-4", "adams2", "log_snr_window")
"""ddkit's few-step default (``ddkit sample --sampler adams2 --spacing log_snr_window``, the
start of ``ddkit tune-steps``): second-order exponential Adams predictor-corrector on the log-SNR
grid whose first step jumps to log-SNR -4, chosen among grids, windows, orders, correctors and
last steps on the tuning family of test mixtures by the rule in BENCHMARKS.md
(``benchmarks/family_defaults.py``) and reported on the held-out family (``ddkit verify --family
held_out``).  Its last step is the ODE's own; ``last="posterior"`` (one model call more) trades
energy distance at NFE 5 for within-mode dispersion from NFE 10 on (BENCHMARKS.md)."""

NFE20 = SamplerConfig(
    "adams3 PC logSNR>-4 post lim",
    "adams3",
    "log_snr_window",
    {"last": "posterior", "limiter": 1.0},
)
"""For NFE 20: third order, the posterior end and the order limiter (``ddkit sample --sampler
adams3 --spacing log_snr_window --last-step posterior --limiter 1``); the limiter puts more
members of both test families inside the noise floor at NFE 20 (BENCHMARKS.md)."""

CONFIGS: tuple[SamplerConfig, ...] = (
    SamplerConfig("ddpm small", "ddpm", "leading", {"variance": "fixed_small"}),
    SamplerConfig("ddpm large (=ddim sigma-hat)", "ddpm", "leading", {"variance": "fixed_large"}),
    SamplerConfig("ddpm tweedie", "ddpm", "leading", {"variance": "tweedie"}),
    SamplerConfig("ddpm tweedie-jacobian", "ddpm", "leading", {"variance": "tweedie_jacobian"}),
    SamplerConfig("ddim eta=0", "ddim", "leading", {"eta": 0.0}),
    SamplerConfig("ddim eta=0 quad", "ddim", "quadratic", {"eta": 0.0}),
    SamplerConfig("ddim eta=1", "ddim", "leading", {"eta": 1.0}),
    SamplerConfig("euler-maruyama", "euler_maruyama", "leading"),
    SamplerConfig("pc langevin", "pc", "leading"),
    SamplerConfig("heun ode", "heun", "log_snr"),
    SamplerConfig("dpm++2m", "dpmpp_2m", "log_snr"),
    SamplerConfig("dpm++3m logSNR>-4", "dpmpp_3m", "log_snr", min_log_snr=-4.0),
    BEST,
    FEW_STEP,
    SamplerConfig("adams2 PC logSNR>-4 post", "adams2", "log_snr_window", {"last": "posterior"}),
    NFE20,
)


FAMILY_LABELS = (
    "ddim eta=0",
    "dpm++2m",
    "dpm++3m logSNR>-4",
    BEST.label,
    FEW_STEP.label,
    "adams2 PC logSNR>-4 post",
    NFE20.label,
)
"""The deterministic few-step configurations ``ddkit verify --family`` runs by default."""


@dataclass(frozen=True)
class Problem:
    """A mixture to sample and the size of each sample drawn from it."""

    name: str
    mixture: GaussianMixture
    n: int


def problems(n_2d: int = 10_000, n_64d: int = 4_000) -> list[Problem]:
    """The two mixtures ``ddkit verify`` runs on, with their sample sizes."""
    return [
        Problem("2-D mixture", mixture_2d(), n_2d),
        Problem("64-D low-rank mixture", mixture_lowrank(), n_64d),
    ]


def metrics(x: torch.Tensor, ref: torch.Tensor, mixture: GaussianMixture, ref_disp: float) -> dict:
    """``ed``, ``disp`` and ``ll`` of samples ``x`` against the reference sample ``ref``."""
    x = x.double()
    if not torch.isfinite(x).all():
        return {"ed": math.inf, "disp": math.inf, "ll": -math.inf}
    return {
        "ed": energy_distance(x, ref),
        "disp": dispersion(x, mixture) / ref_disp,
        "ll": loglik_gap(x, ref, mixture),
    }


@dataclass
class Floor:
    """The worst of each metric over independent true samples: the noise floor."""

    ed: float
    disp: float  # max |disp - 1|
    ll: float  # max |ll|
    reps: list = field(default_factory=list)

    def inside(self, m: dict) -> dict:
        """For each metric of ``m``, whether it is no worse than the floor's."""
        return {
            "ed": m["ed"] <= self.ed,
            "disp": abs(m["disp"] - 1) <= self.disp,
            "ll": abs(m["ll"]) <= self.ll,
        }


def noise_floor(problem: Problem, ref: torch.Tensor, ref_disp: float, reps: int, gen) -> Floor:
    """The metrics of ``reps`` further true samples against ``ref``, and the worst of each."""
    rows = []
    for _ in range(reps):
        y, _ = problem.mixture.sample(problem.n, gen, dtype=torch.float64)
        rows.append(metrics(y, ref, problem.mixture, ref_disp))
    return Floor(
        ed=max(r["ed"] for r in rows),
        disp=max(abs(r["disp"] - 1) for r in rows),
        ll=max(abs(r["ll"]) for r in rows),
        reps=rows,
    )


def setup(problem: Problem, seed: int, floor_reps: int):
    """Reference sample, its dispersion, the noise floor and the shared initial noise x_T."""
    gen = torch.Generator().manual_seed(seed)
    ref, _ = problem.mixture.sample(problem.n, gen, dtype=torch.float64)
    ref_disp = dispersion(ref, problem.mixture)
    floor = noise_floor(problem, ref, ref_disp, floor_reps, gen)
    x_T = torch.randn(problem.n, problem.mixture.dim, generator=gen, dtype=torch.float64)
    return ref, ref_disp, floor, x_T


def true_sample_rates(
    problem: Problem, ref: torch.Tensor, ref_disp: float, floor: Floor, seed: int, draws: int = 8
) -> dict:
    """The fraction of ``draws`` further true samples of ``problem`` (a perfect sampler's output)
    inside ``floor``, the floor that :func:`setup` gives ``seed`` with ``ref``: on each metric
    (``ed``, ``disp``, ``ll``; a further sample is exchangeable with the floor's, so each has
    mean floor_reps / (floor_reps + 1) over seeds) and on all three (``all``)."""
    # torch's CPU generator keeps 32 bits of a seed; an offset keeps this stream apart from
    # setup's for every seed below 2**32 - 0x9E3779B9 (about 1.6e9)
    gen = torch.Generator().manual_seed((seed + 0x9E3779B9) % (1 << 32))
    hits = dict.fromkeys(("ed", "disp", "ll", "all"), 0)
    for _ in range(draws):
        y, _ = problem.mixture.sample(problem.n, gen, dtype=torch.float64)
        inside = floor.inside(metrics(y, ref, problem.mixture, ref_disp))
        for k, v in inside.items():
            hits[k] += v
        hits["all"] += all(inside.values())
    return {k: v / draws for k, v in hits.items()}


def run(
    configs: Sequence[SamplerConfig] = CONFIGS,
    nfes: Sequence[int] = NFES,
    *,
    n_2d: int = 10_000,
    n_64d: int = 4_000,
    seed: int = 0,
    floor_reps: int = 8,
    perfect_draws: int = 0,
    schedule: NoiseSchedule | None = None,
    on: Sequence[Problem] | None = None,
    log=print,
) -> dict:
    """Run every config at every NFE on each problem of ``on`` (default: :func:`problems` of
    ``n_2d``, ``n_64d``); return {problem: {floor, rows}}, with ``perfect`` (the
    :func:`true_sample_rates` of ``perfect_draws`` further true samples) where that is > 0."""
    schedule = schedule or NoiseSchedule.make("linear", 1000)
    out = {}
    for problem in on if on is not None else problems(n_2d, n_64d):
        ref, ref_disp, floor, x_T = setup(problem, seed, floor_reps)
        den = problem.mixture.denoiser(schedule)
        rows = []
        log(f"\n## {problem.name}: d={problem.mixture.dim}, n={problem.n}")
        log(
            f"noise floor (worst of {floor_reps}): ed {floor.ed:.2e}  |disp-1| {floor.disp:.4f}  "
            f"|ll| {floor.ll:.4f}"
        )
        for cfg in configs:
            for nfe in (n for n in nfes if cfg.fits(n)):
                ts = cfg.timesteps(schedule, nfe)
                t0 = time.perf_counter()
                gen = torch.Generator().manual_seed(seed + 1)
                x = get_sampler(cfg.sampler)(den, x_T, ts, generator=gen, **cfg.options)
                seconds = time.perf_counter() - t0
                m = metrics(x, ref, problem.mixture, ref_disp)
                row = {
                    "sampler": cfg.label,
                    "nfe": nfe,
                    "steps": len(ts),
                    **m,
                    "inside": floor.inside(m),
                    "seconds": seconds,
                }
                rows.append(row)
                log(format_row(row))
        out[problem.name] = {"floor": asdict(floor), "rows": rows}
        if perfect_draws:
            rates = true_sample_rates(problem, ref, ref_disp, floor, seed, perfect_draws)
            out[problem.name]["perfect"] = rates
    return out


def format_row(row: dict) -> str:
    """One row of :func:`run` as a line of the Markdown table under ``HEADER``."""
    ok = "".join("+" if row["inside"][k] else "." for k in ("ed", "disp", "ll"))
    return (
        f"| {row['sampler']:<28} | {row['nfe']:>4} | {row['steps']:>4} | {row['ed']:>10.2e} | "
        f"{row['disp']:>7.4f} | {row['ll']:>8.4f} | {ok} | {row['seconds']:>6.1f} |"
    )


HEADER = (
    "| sampler                      |  NFE | steps |     energy | disp/ref |  ll gap | in floor "
    "(ed,disp,ll) | s |\n|---|---|---|---|---|---|---|---|"
)


def plot(results: dict, path: Path) -> None:
    """Energy distance vs NFE per sampler, one panel per mixture, with the noise floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items(), strict=True):
        labels = dict.fromkeys(r["sampler"] for r in res["rows"])
        for label in labels:
            rows = [r for r in res["rows"] if r["sampler"] == label]
            ys = [max(r["ed"], 1e-7) for r in rows]
            ax.plot([r["nfe"] for r in rows], ys, marker="o", ms=3, label=label)
        ax.axhline(max(res["floor"]["ed"], 1e-7), color="k", ls="--", lw=1, label="noise floor")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="NFE (model evaluations)",
            ylabel="energy distance to true samples",
            title=name,
        )
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: dict, out_dir: Path) -> None:
    """``verify.json`` (the results of :func:`run`) and ``verify_error_vs_nfe.png`` in
    ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "verify.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out_dir / "verify.json")
    plot(results, out_dir / "verify_error_vs_nfe.png")


def select_configs(
    samplers: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    *,
    family: bool = False,
) -> list[SamplerConfig]:
    """The configurations of ``CONFIGS`` whose sampler is in ``samplers`` and whose label is in
    ``labels`` (all, where either is None or empty; with ``family`` and neither given, those of
    ``FAMILY_LABELS``).  ValueError for an unknown name."""
    if family and not samplers and not labels:
        labels = FAMILY_LABELS
    for name in samplers or []:
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    known = [c.label for c in CONFIGS]
    for label in labels or []:
        if label not in known:
            raise ValueError(f"unknown config {label!r}; allowed: {', '.join(known)}")
    return [
        c
        for c in CONFIGS
        if (not samplers or c.sampler in samplers) and (not labels or c.label in labels)
    ]


def run_to_folder(
    out: str | Path = "verify-out",
    *,
    samplers: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    quick: bool = False,
    nfes: Sequence[int] = NFES,
    n_2d: int = 10_000,
    n_64d: int = 4_000,
    floor_reps: int = 8,
    seed: int = 0,
    log=_LOG,
) -> dict:
    """``ddkit verify``: :func:`run` the configurations :func:`select_configs` picks, logging a
    table per mixture, and :func:`write_outputs` to the folder ``out``; returns the results.
    ``quick`` replaces the sample sizes, NFEs and floor repetitions by small ones (2000 and
    1000 samples, NFE 10, 20 and 100, 4 repetitions)."""
    configs = select_configs(samplers, labels)
    if quick:
        n_2d, n_64d, nfes, floor_reps = 2000, 1000, (10, 20, 100), 4
    log("ddkit verify: exact Gaussian-mixture denoiser, linear schedule T=1000")
    log("columns: energy distance, within-mode dispersion / true, log-likelihood gap (nats);")
    log("'in floor' marks each metric inside the noise floor of independent true samples (+)")
    results = run(
        configs,
        tuple(nfes),
        n_2d=n_2d,
        n_64d=n_64d,
        seed=seed,
        floor_reps=floor_reps,
        log=lambda s: log(s + "\n" + HEADER if s.startswith("noise") else s),
    )
    out = Path(out)
    write_outputs(results, out)
    log(f"\nwrote {out / 'verify.json'} and {out / 'verify_error_vs_nfe.png'}")
    return results
