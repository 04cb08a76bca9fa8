"""Where the U-Net's upsampling pays as four 2x2 convolutions on the low-resolution grid
(``ddkit.models.layers.upsample_conv``) rather than as written (nearest x2, then a 3x3
convolution): forward + backward (input, weight and bias gradients) of both, interleaved, for
the upsampling shapes of the presets and their neighbours, in the memory order the U-Net gives
each (channels_last where its ``channels_last_levels`` put the output on this CPU, else NCHW).

The evidence behind ``layers.subpixel_pays``; the last column says what the rule picks.

    .venv/bin/python benchmarks/upsample_paths.py [--threads 2] [--rounds 5] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _machine import cpu_and_torch  # noqa: E402  (benchmarks/ is on sys.path when run)

from ddkit.models.layers import subpixel_pays, upsample_conv  # noqa: E402

CL, NCHW = torch.channels_last, torch.contiguous_format
# (batch, channels, input H = W, memory order, where it occurs)
SHAPES = [
    (64, 64, 14, CL, "ddpm-28, 14 -> 28"),
    (64, 64, 7, CL, "ddpm-28, 7 -> 14"),
    (64, 64, 7, NCHW, "ddpm-28 without AVX-512"),
    (128, 64, 4, NCHW, "ddpm-8, 4 -> 8"),
    (8, 256, 16, NCHW, "ddpm-cifar10, 16 -> 32"),
    (8, 256, 8, NCHW, "ddpm-cifar10, 8 -> 16"),
    (8, 256, 4, NCHW, "ddpm-cifar10, 4 -> 8"),
    (64, 32, 14, CL, "32 channels"),
    (64, 32, 7, NCHW, "32 channels"),
    (64, 16, 14, CL, "16 channels"),
    (64, 16, 28, CL, "16 channels"),
]


def plain(x, w, b):
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, b, padding=1)


def timed(fn, x, w, b, g, reps: int) -> float:
    """Median ms of reps forward + backward passes (after one untimed)."""
    times = []
    for i in range(reps + 1):
        x.grad = w.grad = b.grad = None
        t0 = time.perf_counter()
        fn(x, w, b).backward(g)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="alternations of the two paths")
    p.add_argument("--reps", type=int, default=5, help="timed passes per path and round")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(
        f"{cpu_and_torch(a.threads)}; per round the median of {a.reps} passes, {a.rounds} "
        "rounds alternating the two paths\n"
    )
    print(
        "| N | C | H x W -> 2H x 2W | memory order | as written ms | 2x2 phases ms | "
        "speed-up (median; per-round range) | `subpixel_pays` | where |"
    )
    print("|---:|---:|---|---|---:|---:|---|---|---|")
    for n, c, h, fmt, where in SHAPES:
        x = torch.randn(n, c, h, h).contiguous(memory_format=fmt).requires_grad_()
        w = torch.randn(c, c, 3, 3, requires_grad=True)
        b = torch.randn(c, requires_grad=True)
        g = torch.randn(n, c, 2 * h, 2 * h).contiguous(memory_format=fmt)
        torch.testing.assert_close(upsample_conv(x, w, b), plain(x, w, b), rtol=1e-4, atol=1e-3)
        slow, fast = [], []
        for r in range(a.rounds):
            order = ((plain, slow), (upsample_conv, fast))
            for fn, out in order if r % 2 == 0 else order[::-1]:
                out.append(timed(fn, x, w, b, g, a.reps))
        ratios = [s / f for s, f in zip(slow, fast)]
        order_name = "channels_last" if fmt is CL else "NCHW"
        print(
            f"| {n} | {c} | {h}x{h} -> {2 * h}x{2 * h} | {order_name} | "
            f"{statistics.median(slow):.2f} | {statistics.median(fast):.2f} | "
            f"{statistics.median(ratios):.2f}x; {min(ratios):.2f}-{max(ratios):.2f} | "
            f"{'2x2 phases' if subpixel_pays(x) else 'as written'} | {where} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
