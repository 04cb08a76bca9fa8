"""How long each ``ddkit`` command takes at its default budget: the wall time and peak memory
of each command of a list, run one after another as a user would type it, in a fresh folder.

A command still running after ``--cap`` seconds is interrupted (Ctrl-C, which ddkit handles)
and reported as "at least" its elapsed time plus the ETA of its last progress line; that is a
lower bound for commands with several phases (the phases after the current one are not in it).

    .venv/bin/python benchmarks/cli_times.py --set digits --work /tmp/cli-times [--cap 900] \
        [--run RUN]
    .venv/bin/python benchmarks/cli_times.py --set fashion_mnist --work /tmp/cli-times --cap 300 \
        --run runs/fashion_mnist

Sets: ``digits`` (train, sample, eval stages, editing, export of the 8x8 digits recipe),
``small`` (the spiral recipe, ``verify --quick``, ``verify``, ``verify --family held_out``),
``fashion_mnist`` (training the 28x28 recipe, and sampling and evaluating the trained run
``--run``; capped).  Prints a markdown table; the machine line comes first.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from _machine import cpu_name

REPO = Path(__file__).resolve().parents[1]
ETA = re.compile(r"ETA (?:(\d+):)?(\d+):(\d\d)")


def commands(which: str, work: Path, run: str | None) -> list[tuple[str, list[str]]]:
    """(label, ddkit argv) of each command of the set, in order; later ones use earlier runs."""
    cache = ["--cache", str(work / "cache")]
    if which == "digits":  # with --run, its evaluations measure that run and nothing trains
        train = [] if run else [("train configs/digits.toml", ["train", "configs/digits.toml"])]
        run = run or str(work / "digits")
        if train:
            train[0][1].extend(["--set", _out(run)])
        return [
            *train,
            ("sample RUN", ["sample", run, "--out", str(work / "s")]),
            ("features --data digits", ["features", "--data", "digits", *cache]),
            ("eval RUN --bpd", ["eval", run, "--bpd", "--out", str(work / "e1"), *cache]),
            ("eval RUN --fid", ["eval", run, "--fid", "--out", str(work / "e2"), *cache]),
            ("eval RUN --inversion", ["eval", run, "--inversion", "--out", str(work / "e3")]),
            ("inpaint RUN", ["inpaint", run, *_edit_inputs(work), "--out", str(work / "i")]),
            ("edit RUN", ["edit", run, "--image", str(work / "img.png"), "--out", str(work / "d")]),
            ("export RUN OUT", ["export", run, str(work / "x")]),
        ]
    if which == "small":
        return [
            ("train configs/spiral.toml", ["train", "configs/spiral.toml", "--set", _out(work)]),
            ("verify --quick", ["verify", "--quick", "--out", str(work / "v1")]),
            ("verify", ["verify", "--out", str(work / "v2")]),
            (
                "verify --family held_out",
                ["verify", "--family", "held_out", "--out", str(work / "v3")],
            ),
        ]
    if which == "fashion_mnist":  # the evaluations measure the trained run ``run``
        run = run or str(REPO / "runs" / "fashion_mnist")
        return [
            (
                "train configs/fashion_mnist.toml",
                ["train", "configs/fashion_mnist.toml", "--set", _out(work / "fm")],
            ),
            ("sample RUN", ["sample", run, "--out", str(work / "s")]),
            ("features --data fashion_mnist", ["features", "--data", "fashion_mnist", *cache]),
            ("eval RUN --bpd", ["eval", run, "--bpd", "--out", str(work / "f1"), *cache]),
            ("eval RUN --fid", ["eval", run, "--fid", "--out", str(work / "f2"), *cache]),
        ]
    raise SystemExit(f"--set {which!r}: allowed: digits, small, fashion_mnist")


def _out(run) -> str:
    return f'train.out_dir="{run}"'


def _edit_inputs(work: Path) -> list[str]:
    """An 8x8 digit and a mask keeping its left half, as PNG files in ``work``."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digit = (load_digits().images[0] * 255 / 16).round().astype(np.uint8)
    Image.fromarray(digit, mode="L").save(work / "img.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = 255
    Image.fromarray(mask, mode="L").save(work / "mask.png")
    return ["--image", str(work / "img.png"), "--mask", str(work / "mask.png")]


def timed(argv: list[str], cap: float, cwd: Path) -> tuple[float, float, int, str]:
    """(seconds, peak RSS in MiB, exit status, last ETA text) of ``ddkit argv``; interrupted
    with SIGINT after ``cap`` seconds."""
    exe = str(Path(sys.executable).with_name("ddkit"))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [exe, *argv],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # a background job starts with SIGINT ignored, and Python then keeps it ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    deadline = t0 + cap
    os.set_blocking(proc.stderr.fileno(), False)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaped here, with its rusage
        lines += (proc.stderr.read() or b"").decode(errors="replace").splitlines()
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.send_signal(signal.SIGINT)
            deadline = float("inf")
        time.sleep(0.5)
    seconds = time.perf_counter() - t0
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    eta = next((line for line in reversed(lines) if ETA.search(line)), "")
    if code not in (0, 130) and lines:
        eta = lines[-1]  # the error line
    return seconds, peak, code, eta


def _clock(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600} h {s // 60 % 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", required=True, help="digits, small or fashion_mnist")
    ap.add_argument("--work", required=True, help="a folder for the runs (emptied first)")
    ap.add_argument("--cap", type=float, default=3600.0, help="seconds before a command stops")
    ap.add_argument("--run", help="the trained run to measure (fashion_mnist: runs/fashion_mnist)")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"{cpu_name()}, {os.cpu_count()} logical cores, {time.strftime('%Y-%m-%d')}")
    print("\n| command | wall | peak RSS | note |\n|---|---|---|---|")
    for label, argv in commands(args.set, work, args.run and str(Path(args.run).resolve())):
        seconds, peak, code, eta = timed(argv, args.cap, REPO)
        note = "" if code == 0 else f"exit {code}: {eta.strip()}"
        wall = _clock(seconds)
        if code == 130 and (m := ETA.search(eta)):
            h, mnt, sec = (int(g or 0) for g in m.groups())
            wall = f"at least {_clock(seconds + 3600 * h + 60 * mnt + sec)}"
            note = f"stopped at {_clock(seconds)}; {eta.strip()}"
        print(f"| `ddkit {label}` | {wall} | {peak:.0f} MiB | {note} |", flush=True)


if __name__ == "__main__":
    main()
