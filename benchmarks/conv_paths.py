"""Where the time of a 3x3 convolution goes on this CPU: one convolution's forward + backward
(input, weight and bias gradients) through oneDNN's direct kernel in NCHW, the same in
channels_last, ddkit's eager Winograd F(2x2, 3x3) (``ddkit.cpu.winograd``), and im2col + SGEMM
(the three products of forward, input and weight gradient as MKL GEMMs on NHWC patch matrices; a
yardstick, not a path of the model), for every 3x3 shape of the ``ddpm-cifar10`` (batch 8) and
``ddpm-28`` (batch 64) presets; plus one SGEMM for scale.  GF/s counts 3 x 2 x N C_in C_out 9 H W
(forward, input-grad and weight-grad passes).

This is the evidence behind ``winograd.cpu_favours_winograd`` and the throughput notes in
BENCHMARKS.md: on a CPU where the direct kernel already runs near the FMA peak, the eager
Winograd transforms cannot pay.

    .venv/bin/python benchmarks/conv_paths.py [--threads 1] [--reps 7]
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

from ddkit.cpu.winograd import winograd_conv3x3  # noqa: E402

# (batch, C_in, C_out, H = W): the 3x3 stride-1 convolutions of the two presets
SHAPES = [
    (8, 128, 128, 32),
    (8, 256, 128, 32),
    (8, 128, 256, 16),
    (8, 256, 256, 16),
    (8, 512, 256, 16),
    (8, 256, 256, 8),
    (8, 512, 256, 8),
    (8, 256, 256, 4),
    (64, 32, 32, 28),
    (64, 64, 32, 28),
    (64, 32, 64, 14),
    (64, 64, 64, 14),
    (64, 128, 64, 14),
    (64, 64, 64, 7),
    (64, 128, 64, 7),
]


def median_ms(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def conv_step(conv, x, w, b):
    def step():
        x.grad = w.grad = b.grad = None
        y = conv(x, w, b)
        y.backward(torch.ones_like(y))

    return step


def direct(x, w, b):
    return F.conv2d(x, w, b, padding=1)


def _patches(x_nhwc: torch.Tensor) -> torch.Tensor:
    """[N, H, W, C] -> the im2col matrix [N H W, 9 C] of its zero-padded 3x3 neighbourhoods."""
    n, h, w, c = x_nhwc.shape
    xp = F.pad(x_nhwc, (0, 0, 1, 1, 1, 1))
    s = xp.stride()
    view = xp.as_strided((n, h, w, 3, 3, c), (s[0], s[1], s[2], s[1], s[2], s[3]))
    return view.reshape(n * h * w, 9 * c)


def im2col_step(x, w, b):
    """Forward, input gradient (the conv of dY with the flipped, transposed filter) and weight
    gradient of one 3x3 conv as three GEMMs on patch matrices; checked against F.conv2d once."""
    n, ci, h, _ = x.shape
    co = w.shape[0]
    xh = x.detach().permute(0, 2, 3, 1).contiguous()
    dy = torch.ones(n, h, h, co)
    w_fwd = w.detach().permute(2, 3, 1, 0).reshape(9 * ci, co).contiguous()
    w_bwd = w.detach().flip(2, 3).permute(2, 3, 0, 1).reshape(9 * co, ci).contiguous()
    y = (_patches(xh) @ w_fwd + b.detach()).view(n, h, h, co).permute(0, 3, 1, 2)
    torch.testing.assert_close(y, direct(x, w, b).detach(), rtol=1e-3, atol=1e-3)

    def step():
        _patches(xh) @ w_fwd  # forward
        _patches(dy) @ w_bwd  # input gradient
        _patches(xh).t() @ dy.view(-1, co)  # weight gradient
        dy.view(-1, co).sum(0)  # bias gradient

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"{cpu_and_torch(a.threads)}, median of {a.reps}")
    n = 2048
    m1, m2 = torch.randn(n, n), torch.randn(n, n)
    ms = median_ms(lambda: m1 @ m2, a.reps)
    print(f"SGEMM {n}x{n}x{n}: {2 * n**3 / ms / 1e6:.0f} GF/s\n")
    print(
        "| N | C_in -> C_out | H x W | direct NCHW ms (GF/s) | direct channels_last ms | "
        "Winograd ms | im2col + SGEMM ms |"
    )
    print("|---:|---|---|---:|---:|---:|---:|")
    for bs, ci, co, h in SHAPES:
        x = torch.randn(bs, ci, h, h, requires_grad=True)
        w = torch.randn(co, ci, 3, 3, requires_grad=True)
        b = torch.zeros(co, requires_grad=True)
        t_direct = median_ms(conv_step(direct, x, w, b), a.reps)
        xc = x.detach().to(memory_format=torch.channels_last).requires_grad_()
        wc = w.detach().to(memory_format=torch.channels_last).requires_grad_()
        t_cl = median_ms(conv_step(direct, xc, wc, b), a.reps)
        wino = "n/a (odd size)"
        if h % 2 == 0:
            wino = f"{median_ms(conv_step(winograd_conv3x3, x, w, b), a.reps):.2f}"
        t_gemm = median_ms(im2col_step(x, w, b), a.reps)
        gflop = 3 * 2 * bs * ci * co * 9 * h * h / 1e9
        print(
            f"| {bs} | {ci} -> {co} | {h}x{h} | {t_direct:.2f} ({gflop / t_direct * 1e3:.0f}) "
            f"| {t_cl:.2f} | {wino} | {t_gemm:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
