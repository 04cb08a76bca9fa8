"""``ddkit verify --family``: few-step samplers on the test-distribution family
(:mod:`ddkit.verify.family`), per member and in the worst case over the members.

Each member is a :class:`~ddkit.verify.runner.Problem` run exactly as ``ddkit verify`` runs its two
mixtures (same metrics, noise floor and shared initial noise).  Because the members differ in
scale, the worst case compares each metric with the member's own noise floor:

* ``ed/floor``: energy distance divided by the largest magnitude among the floor's energy
  distances (the estimate is unbiased, so a true sample's can be negative; about <= 1 inside);
* ``disp``: the within-mode dispersion farthest from 1 (the truth is 1);
* ``ll``: the most negative log-likelihood gap (nats; the truth is 0);
* ``inside``: members with all three metrics inside their floor;
* ``disp ok``: members with dispersion in [0.9, 1.1].

A count of members inside is read against what a perfect sampler scores: a further true sample
of a member is exchangeable with the floor's, so it lies inside on each metric with probability
floor_reps / (floor_reps + 1), and inside on all three less often
(:func:`~ddkit.verify.runner.true_sample_rates`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from ..paths import atomic_write_bytes
from .family import members
from .runner import HEADER, Problem, SamplerConfig, run

FAMILY_NFES = (5, 10, 20)
DISP_BAND = (0.9, 1.1)
_LOG = partial(print, flush=True)


def family_problems(split: str, n: int = 2000) -> list[Problem]:
    """The members of ``split`` as problems of ``n`` samples each."""
    return [Problem(m.name, m.build(), n) for m in members(split)]


def worst_case(results: dict) -> list[dict]:
    """One row per (sampler, NFE) of :func:`~ddkit.verify.runner.run`'s results: the worst of
    each metric over the members, relative to each member's noise floor (module docstring)."""
    keys: dict[tuple[str, int], list] = {}
    for res in results.values():
        floor_ed = max(abs(r["ed"]) for r in res["floor"]["reps"])
        for row in res["rows"]:
            keys.setdefault((row["sampler"], row["nfe"]), []).append((row, floor_ed))
    out = []
    for (sampler, nfe), rows in keys.items():
        lo, hi = DISP_BAND
        out.append(
            {
                "sampler": sampler,
                "nfe": nfe,
                "members": len(rows),
                "ed_over_floor": max(r["ed"] / f for r, f in rows),
                "disp": max((r["disp"] for r, _ in rows), key=lambda d: abs(d - 1)),
                "ll": min(r["ll"] for r, _ in rows),
                "inside": sum(all(r["inside"].values()) for r, _ in rows),
                "disp_ok": sum(lo <= r["disp"] <= hi for r, _ in rows),
            }
        )
    return out


WORST_HEADER = (
    "| sampler | NFE | worst ed/floor | worst disp | worst ll gap | inside floor | disp in "
    "0.9-1.1 |\n|---|---|---|---|---|---|---|"
)


def format_worst(row: dict) -> str:
    """One row of :func:`worst_case` under ``WORST_HEADER``."""
    n = row["members"]
    return (
        f"| {row['sampler']} | {row['nfe']} | {row['ed_over_floor']:.2f} | {row['disp']:.3f} | "
        f"{row['ll']:.3f} | {row['inside']}/{n} | {row['disp_ok']}/{n} |"
    )


def plot_worst(rows: list[dict], path: Path, title: str) -> None:
    """Worst ed/floor and worst |disp - 1| against NFE, one line per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for label in dict.fromkeys(r["sampler"] for r in rows):
        mine = sorted((r for r in rows if r["sampler"] == label), key=lambda r: r["nfe"])
        nfes = [r["nfe"] for r in mine]
        axes[0].plot(nfes, [r["ed_over_floor"] for r in mine], marker="o", ms=3, label=label)
        axes[1].plot(nfes, [max(abs(r["disp"] - 1), 1e-4) for r in mine], marker="o", ms=3)
    axes[0].axhline(1.0, color="k", ls="--", lw=1, label="noise floor")
    axes[1].axhline(DISP_BAND[1] - 1, color="k", ls="--", lw=1)
    axes[0].set(ylabel="worst energy distance / noise floor", yscale="log")
    axes[1].set(ylabel="worst |within-mode dispersion - 1|", yscale="log")
    ticks = sorted({r["nfe"] for r in rows})
    for ax in axes:
        ax.set(xscale="log", xlabel="NFE (model evaluations)", title=title)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_family_to_folder(
    out: str | Path,
    configs: Sequence[SamplerConfig],
    *,
    split: str = "held_out",
    nfes: Sequence[int] = FAMILY_NFES,
    n: int = 2000,
    floor_reps: int = 8,
    seed: int = 0,
    log=_LOG,
) -> dict:
    """``ddkit verify --family``: run ``configs`` at ``nfes`` on every member of ``split``,
    logging a table per member and the worst-case table, and write ``family.json`` and
    ``family_worst_case.png`` to the folder ``out``; returns {"members", "worst",
    "perfect_inside"} (a perfect sampler's expected count of members inside the floor)."""
    problems = family_problems(split, n)
    log(
        f"ddkit verify --family {split}: {len(problems)} mixtures, {n} samples each, exact denoiser"
    )
    log("columns: energy distance, within-mode dispersion / true, log-likelihood gap (nats)")
    results = run(
        configs,
        tuple(nfes),
        seed=seed,
        floor_reps=floor_reps,
        perfect_draws=8,
        on=problems,
        log=lambda s: log(s + "\n" + HEADER if s.startswith("noise") else s),
    )
    worst = worst_case(results)
    log(f"\n## worst case over the {len(problems)} {split} mixtures\n{WORST_HEADER}")
    for row in worst:
        log(format_worst(row))
    perfect = sum(res["perfect"]["all"] for res in results.values())
    log(f"(a perfect sampler: inside on {perfect:.1f} of {len(problems)} on average)")
    out = Path(out)
    doc = {"split": split, "members": results, "worst": worst, "perfect_inside": perfect}
    atomic_write_bytes(out / "family.json", json.dumps(doc, indent=1).encode())
    plot_worst(worst, out / "family_worst_case.png", f"worst case over the {split} family")
    log(f"\nwrote {out / 'family.json'} and {out / 'family_worst_case.png'}")
    return {"members": results, "worst": worst, "perfect_inside": perfect}
