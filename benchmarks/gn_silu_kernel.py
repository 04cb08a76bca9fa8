"""The fused GroupNorm + SiLU CPU kernel against the same function as PyTorch ops, per shape.

One call = forward and backward of ``dropout(silu(group_norm(x + shift[:, :, None, None])))``
with gradients for x, shift, weight and bias, fp32, at the shapes of the ``ddpm-28`` (batch 64)
and ``ddpm-cifar10`` (batch 8) U-Nets, in the memory layout the U-Net uses at that level.
"PyTorch ops" is the U-Net's own fallback path (``DDKIT_CPU_KERNELS=0``): the add, ``F.group_norm``,
``F.silu`` and ddkit's ``Dropout``.  The two alternate call by call; medians over ``--reps``.

    .venv/bin/python benchmarks/gn_silu_kernel.py [--reps 15] [--threads 2] [--dropout 0.1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _machine import cpu_name  # noqa: E402

from ddkit.models import cpu_kernels  # noqa: E402
from ddkit.models.layers import Dropout  # noqa: E402

# (N, C, H, W, groups, channels_last): ddpm-28 levels, then ddpm-cifar10 levels
SHAPES = [
    (64, 32, 28, 28, 8, True),
    (64, 96, 28, 28, 8, True),
    (64, 64, 14, 14, 8, True),
    (64, 64, 7, 7, 8, False),
    (8, 128, 32, 32, 32, True),
    (8, 256, 16, 16, 32, False),
    (8, 512, 8, 8, 32, False),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if cpu_kernels.library() is None:
        raise SystemExit("the fused kernel is not available here (no C compiler?)")
    drop = Dropout(args.dropout).train()

    def pytorch_ops(x, shift, w, b, groups):
        y = F.silu(F.group_norm(x + shift[:, :, None, None], groups, w, b, 1e-6))
        return drop(y) if args.dropout else y

    def fused(x, shift, w, b, groups):
        return cpu_kernels.gn_silu(x, shift, w, b, groups, 1e-6, args.dropout)

    print(
        f"CPU: {cpu_name()}, torch {torch.__version__} ({args.threads} threads), fp32, "
        f"dropout {args.dropout}, {args.reps} calls each, forward + backward\n"
    )
    print("| N, C, H x W (groups) | layout | PyTorch ops ms | fused ms | speed-up |")
    print("|---|---|---:|---:|---:|")
    for n, c, h, w, groups, cl in SHAPES:
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
        times = {"ops": [], "fused": []}
        for rep in range(args.reps + 2):
            for name, fn in (("ops", pytorch_ops), ("fused", fused)):
                start = time.perf_counter()
                fn(*leaves, groups).backward(grad)
                if rep >= 2:  # warm-up
                    times[name].append(time.perf_counter() - start)
                for t in leaves:
                    t.grad = None
        ops, fu = (statistics.median(times[k]) * 1e3 for k in ("ops", "fused"))
        layout = "channels_last" if cl else "NCHW"
        print(
            f"| {n}, {c}, {h}x{w} ({groups}) | {layout} | {ops:.2f} | {fu:.2f} | {ops / fu:.2f}x |"
        )


if __name__ == "__main__":
    main()
