"""The fused GroupNorm + SiLU CPU kernel against the same function as PyTorch ops, per shape.

One call = forward and backward of ``dropout(silu(group_norm(x + shift[:, :, None, None])))``
with gradients for x, shift, weight and bias, fp32, at the shapes of the ``ddpm-28`` (batch 64)
and ``ddpm-cifar10`` (batch 8) U-Nets, NCHW as the U-Net runs them (``--channels-last``: in that
layout, which the kernel also takes).  "PyTorch ops" is the U-Net's own path where the fast path
is off (``ddkit.cpu.disabled()``): the add, ``F.group_norm``, ``F.silu`` and ``nn.Dropout``.  The
two alternate call by call; medians over ``--reps``.

    .venv/bin/python benchmarks/gn_silu_kernel.py [--reps 15] [--threads 2] [--dropout 0.1]
        [--channels-last] [--against REV]

``--against REV`` adds the kernel as it was at git revision REV (built from ``git show
REV:src/ddkit/cpu/gn_silu.c`` with the same flags, its C interface checked to be the current
one) as a third contestant in the same rotation, and the current kernel's speed-up over it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _machine import cpu_name  # noqa: E402
from torch import nn  # noqa: E402

from ddkit.cpu import gn_silu as cpu_kernels  # noqa: E402

# (N, C, H, W, groups): ddpm-28 levels, then ddpm-cifar10 levels
SHAPES = [
    (64, 32, 28, 28, 8),
    (64, 96, 28, 28, 8),
    (64, 64, 14, 14, 8),
    (64, 64, 7, 7, 8),
    (8, 128, 32, 32, 32),
    (8, 256, 16, 16, 32),
    (8, 512, 8, 8, 32),
]


def _interface(source: str) -> list[str]:
    """The kernel's exported C declarations, whitespace-normalised."""
    decls = re.findall(r"^(?:void|int64_t) gn_silu_\w+\([^)]*\)", source, flags=re.M)
    return [" ".join(d.split()) for d in decls]


def kernel_at(rev: str) -> ctypes.CDLL:
    """The fused kernel as it was at git revision ``rev``, built like the current one."""
    root = Path(__file__).resolve().parent.parent
    rel = cpu_kernels.SOURCE.relative_to(root).as_posix()
    shown = subprocess.run(
        ["git", "show", f"{rev}:{rel}"], cwd=root, capture_output=True, text=True
    )
    if shown.returncode != 0:
        lines = shown.stderr.strip().splitlines()
        raise SystemExit(f"--against {rev}: {lines[-1] if lines else 'git show failed'}")
    if _interface(shown.stdout) != _interface(cpu_kernels.SOURCE.read_text()):
        raise SystemExit(f"--against {rev}: its C interface differs from the current kernel's")
    folder = Path(tempfile.mkdtemp(prefix="gn_silu_rev_"))
    try:
        (folder / "gn_silu.c").write_text(shown.stdout)
        compiler = os.environ.get("CC") or "cc"
        subprocess.run(
            [
                compiler,
                *cpu_kernels.FLAGS,
                "-o",
                str(folder / "gn_silu.so"),
                str(folder / "gn_silu.c"),
                "-lm",
            ],
            check=True,
        )
        return cpu_kernels._declare(ctypes.CDLL(str(folder / "gn_silu.so")))
    finally:
        shutil.rmtree(folder)  # the loaded library stays mapped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--against", metavar="REV", help="also time the kernel of git revision REV")
    ap.add_argument("--channels-last", action="store_true", help="inputs in channels_last")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if cpu_kernels.library() is None:
        raise SystemExit("the fused kernel is not available here (no C compiler?)")
    drop = nn.Dropout(args.dropout).train()

    def pytorch_ops(x, shift, w, b, groups):
        y = F.silu(F.group_norm(x + shift[:, :, None, None], groups, w, b, 1e-6))
        return drop(y) if args.dropout else y

    current = cpu_kernels.library
    older = kernel_at(args.against) if args.against else None

    def fused(x, shift, w, b, groups):
        return cpu_kernels.group_norm_silu(x, shift, w, b, groups, 1e-6, args.dropout)

    # (name, function, kernel library for its forward and backward, or None)
    contestants = [("ops", pytorch_ops, None), ("fused", fused, current)]
    if older is not None:
        contestants.append(("older", fused, lambda: older))

    print(
        f"CPU: {cpu_name()}, torch {torch.__version__} ({args.threads} threads), fp32, "
        f"dropout {args.dropout}, {args.reps} calls each, forward + backward\n"
    )
    extra = f" fused at {args.against} ms | fused / at {args.against} |" if older else ""
    print(f"| N, C, H x W (groups) | layout | PyTorch ops ms | fused ms | speed-up |{extra}")
    print("|---|---|---:|---:|---:|" + ("---:|---:|" if older else ""))
    cl = args.channels_last
    for n, c, h, w, groups in SHAPES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, h, w, generator=g)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        leaves = [
            x,
            torch.randn(n, c, generator=g),
            torch.randn(c, generator=g),
            torch.randn(c, generator=g),
        ]
        leaves = [t.requires_grad_() for t in leaves]
        grad = torch.randn_like(x)
        times = {name: [] for name, _, _ in contestants}
        for rep in range(args.reps + 2):
            # rotate the order, so that no contestant always runs after the same one
            for name, fn, lib in (
                contestants[rep % len(contestants) :] + contestants[: rep % len(contestants)]
            ):
                # the kernel's autograd Function looks the library up in forward and backward
                if lib is not None:
                    cpu_kernels.library = lib
                try:
                    start = time.perf_counter()
                    fn(*leaves, groups).backward(grad)
                    elapsed = time.perf_counter() - start
                finally:
                    cpu_kernels.library = current
                if rep >= 2:  # warm-up
                    times[name].append(elapsed)
                for t in leaves:
                    t.grad = None
        ops, fu = (statistics.median(times[k]) * 1e3 for k in ("ops", "fused"))
        layout = "channels_last" if cl else "NCHW"
        row = (
            f"| {n}, {c}, {h}x{w} ({groups}) | {layout} | {ops:.2f} | {fu:.2f} | {ops / fu:.2f}x |"
        )
        if older is not None:
            old = statistics.median(times["older"]) * 1e3
            row += f" {old:.2f} | {old / fu:.2f}x |"
        print(row)


if __name__ == "__main__":
    main()
