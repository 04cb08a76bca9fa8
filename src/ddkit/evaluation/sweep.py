"""Sample quality against the number of model calls (the sweep): which sampler runs at which
number of steps, one row of results per run, and the table, CSV and plot they make."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

from ..diffusion.schedule import max_steps
from ..paths import atomic_write_bytes
from ..trained import SampleSpec, Trained
from .quality import QualityResult


def _heun_steps(nfe: int) -> int | None:
    n = (nfe + 1) // 2  # Heun: 2 n - 1 calls for n timesteps
    return n if n >= 2 else None


# family -> (label, steps for a target NFE, SampleSpec for those steps)
SWEEP_FAMILIES: dict[str, tuple[str, object, object]] = {
    "ddpm": (
        "DDPM ancestral, sigma-hat (fixed_large), uniform",
        lambda nfe: nfe,
        lambda s: SampleSpec("ddpm", s, "leading", {"variance": "fixed_large"}),
    ),
    "ddim-eta0": (
        "DDIM eta=0, uniform",
        lambda nfe: nfe,
        lambda s: SampleSpec("ddim", s, "leading", {"eta": 0.0}),
    ),
    "ddim-eta0-quad": (
        "DDIM eta=0, quadratic",
        lambda nfe: nfe,
        lambda s: SampleSpec("ddim", s, "quadratic", {"eta": 0.0}),
    ),
    "ddim-eta0-ddimquad": (
        "DDIM eta=0, quadratic to 0.8T (DDIM's code)",
        lambda nfe: nfe,
        lambda s: SampleSpec("ddim", s, "ddim_quadratic", {"eta": 0.0}),
    ),
    "ddim-eta1": (
        "DDIM eta=1 (= DDPM fixed_small), uniform",
        lambda nfe: nfe,
        lambda s: SampleSpec("ddim", s, "leading", {"eta": 1.0}),
    ),
    "ddim-eta1-quad": (
        "DDIM eta=1, quadratic",
        lambda nfe: nfe,
        lambda s: SampleSpec("ddim", s, "quadratic", {"eta": 1.0}),
    ),
    "ddim-eta1-ddimquad": (
        "DDIM eta=1, quadratic to 0.8T (DDIM's code)",
        lambda nfe: nfe,
        lambda s: SampleSpec("ddim", s, "ddim_quadratic", {"eta": 1.0}),
    ),
    "dpmpp_2m": (
        "DPM-Solver++(2M), log-SNR spacing",
        lambda nfe: nfe,
        lambda s: SampleSpec("dpmpp_2m", s, "log_snr"),
    ),
    "pf-ode": (
        "PF-ODE, Heun, quadratic",
        _heun_steps,
        lambda s: SampleSpec("heun", s, "quadratic"),
    ),
}
DEFAULT_FAMILIES = tuple(SWEEP_FAMILIES)
DEFAULT_NFES = (5, 10, 20, 50, 100, 1000)


def sweep_plan(
    trained: Trained, families, nfes, clip_x0: str = "auto"
) -> list[tuple[str, SampleSpec]]:
    """(family, spec) for each family and target NFE, skipping duplicates (quadratic at T steps
    is uniform) and NFEs a family cannot reach (more steps than T, or than the 0.8 T + 1 indices
    of DDIM's quadratic); every spec with the given x0 clamping; validated before any sampling."""
    T = trained.schedule.T
    plan, seen = [], set()
    for fam in families:
        if fam not in SWEEP_FAMILIES:
            raise ValueError(f"unknown sweep family {fam!r}; allowed: {', '.join(SWEEP_FAMILIES)}")
        _, steps_for, make = SWEEP_FAMILIES[fam]
        for nfe in nfes:
            steps = steps_for(nfe)
            if steps is None:
                continue
            spec = replace(make(steps), clip_x0=clip_x0)
            if steps > max_steps(T, spec.spacing):
                continue
            ts = tuple(spec.timesteps(trained.schedule))
            key = (spec.sampler, ts, tuple(sorted(spec.options.items())))
            if key in seen:
                continue
            seen.add(key)
            plan.append((fam, spec))
    if not plan:
        raise ValueError(f"no sampler of {list(families)} can run at NFE {list(nfes)} with T = {T}")
    return plan


SWEEP_COLUMNS = (
    "family",
    "label",
    "sampler",
    "spacing",
    "options",
    "clip_x0",
    "steps",
    "nfe",
    "metric",
    "fid",
    "kid_x1e3",
    "kid_std_x1e3",
    "num_samples",
    "num_reference",
    "reference_split",
    "seconds_per_sample",
)


def sweep_row(fam: str, spec: SampleSpec, q: QualityResult) -> dict:
    """The row of ``SWEEP_COLUMNS`` for one run of family ``fam``."""
    return {
        "family": fam,
        "label": SWEEP_FAMILIES[fam][0],
        "sampler": spec.sampler,
        "spacing": spec.spacing,
        "options": json.dumps(spec.options, sort_keys=True),
        "clip_x0": spec.clip_x0,
        "steps": spec.steps,
        "nfe": q.nfe,
        "metric": q.metric,
        "fid": round(q.fid, 4),
        "kid_x1e3": round(q.kid, 4),
        "kid_std_x1e3": round(q.kid_std, 4),
        "num_samples": q.num_samples,
        "num_reference": q.num_reference,
        "reference_split": q.reference_split,
        "seconds_per_sample": round(q.seconds_per_sample, 5),
    }


def write_sweep(rows: list[dict], out: Path, title: str) -> None:
    """sweep.csv, sweep.md (one row per run, and FID by family x NFE) and sweep.png."""
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SWEEP_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / "sweep.csv", buf.getvalue().encode())

    metric = rows[0]["metric"]
    nfes = sorted({r["nfe"] for r in rows})
    fams = list(dict.fromkeys(r["family"] for r in rows))
    lines = [
        f"# {title}",
        "",
        f"{metric} (lower is better) by sampler and number of model calls.",
        "",
    ]
    lines.append("| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
    lines.append("|---|" + "---:|" * len(nfes))
    for fam in fams:
        by = {r["nfe"]: r for r in rows if r["family"] == fam}
        cells = [f"{by[n]['fid']:.2f}" if n in by else "" for n in nfes]
        lines.append(f"| {SWEEP_FAMILIES[fam][0]} | " + " | ".join(cells) + " |")
    lines += ["", "Every run:", ""]
    cols = (
        "label",
        "steps",
        "nfe",
        "fid",
        "kid_x1e3",
        "kid_std_x1e3",
        "num_samples",
        "seconds_per_sample",
    )
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    atomic_write_bytes(out / "sweep.md", ("\n".join(lines) + "\n").encode())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for fam in fams:
        pts = sorted((r["nfe"], r["fid"]) for r in rows if r["family"] == fam)
        ax.plot(*zip(*pts, strict=True), marker="o", label=SWEEP_FAMILIES[fam][0])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("model calls per sample (NFE)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out / "sweep.png", buf.getvalue())
