"""bf16 training throughput and MFU of ddkit's DDPM U-Net beside diffusers' ``UNet2DModel`` of
the same architecture, on one CUDA GPU.

The GPU companion of ``unet_throughput.py`` (whose twin construction, weight copy and FLOP count it
reuses).  One training step = forward + MSE loss against a noise target + backward + fused Adam
step, under ``torch.autocast("cuda", torch.bfloat16)`` exactly as ``ddkit train`` runs on a GPU
(``train.precision = "auto"``): weights, gradients and Adam state stay fp32.  Both sides run with
their default settings (no ``torch.compile``, default cuDNN flags, NCHW).

Timing: both models live in one process; after warm-up steps, steps alternate (ours, theirs,
theirs, ours, ...), each timed between two ``torch.cuda.synchronize()``; the median gives
images/s.  FLOPs of one step are the forward + backward of the diffusers twin counted by
``FlopCounterMode`` in fp32 (attention included, Adam not), the same work credited to both sides.
MFU = achieved FLOP/s over the H100/H200 SXM datasheet's dense bf16 peak (989.4 TFLOP/s); the
fraction of an 8192^3 bf16 matrix product measured in the same process is printed beside it.
Memory: ``torch.cuda.max_memory_allocated`` over three steps of one side, less what was allocated
before them (activations and transient buffers), and the resting size of weights + gradients +
Adam state.

    python benchmarks/unet_throughput_gpu.py [--reps 30] [--case cifar|28|all]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from unet_throughput import check_same_function, diffusers_model, interleaved, speedup_line

from ddkit.models import count_parameters, preset

CASES = {"cifar": ("ddpm-cifar10", 128), "28": ("ddpm-28", 256)}
DATASHEET_BF16 = 989.4e12  # dense bf16 FLOP/s, H100/H200 SXM datasheet
LR = 2e-4


def matmul_peak(n: int = 8192, reps: int = 10) -> float:
    """Achieved FLOP/s of an n^3 bf16 matrix product on random data (after three warm-ups)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


class Side:
    """One model on the GPU with its fused Adam, fixed data and a timed bf16 ``step()``."""

    def __init__(self, name: str, cfg, batch: int):
        torch.manual_seed(1)
        if name == "ours":
            self.model = cfg.build().cuda()
            self.forward = self.model
        else:
            self.model = diffusers_model(cfg).cuda()
            self.forward = lambda x, t: self.model(x, t).sample
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR, fused=True)
        g = torch.Generator(device="cuda").manual_seed(2)
        shape = (batch, *cfg.input_shape())
        self.x = torch.randn(shape, device="cuda", generator=g)
        self.noise = torch.randn(
            shape[:1] + (cfg.out_channels, *shape[2:]), device="cuda", generator=g
        )
        self.t = torch.randint(0, 1000, (batch,), device="cuda", generator=g)

    def step(self) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = self.forward(self.x, self.t)
        loss = (out.float() - self.noise).square().mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        torch.cuda.synchronize()
        return time.perf_counter() - start

    def memory(self) -> tuple[int, int]:
        """(peak bytes above the resting state over three steps, resting bytes of this side's
        weights + gradients + Adam state)."""
        resting = sum(p.numel() * p.element_size() for p in self.model.parameters())
        resting *= 4  # weights, gradients, exp_avg, exp_avg_sq (all fp32)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(3):
            self.step()
        return torch.cuda.max_memory_allocated() - base, resting


def step_flops(side: Side, batch: int, cfg) -> int:
    x = torch.randn(batch, *cfg.input_shape(), device="cuda")
    t = torch.randint(0, 1000, (batch,), device="cuda")
    with FlopCounterMode(display=False) as counter:
        side.forward(x, t).square().mean().backward()
    side.model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def run_case(preset_name: str, batch: int, reps: int, peak: float) -> str:
    cfg = preset(preset_name)
    err = check_same_function(cfg)  # on CPU, fp32
    sides = {name: Side(name, cfg, batch) for name in ("ours", "diffusers")}
    params = {k: count_parameters(s.model) for k, s in sides.items()}
    if params["ours"] != params["diffusers"]:
        raise RuntimeError(f"parameter counts differ: {params}")
    flops = step_flops(sides["diffusers"], batch, cfg)
    for s in sides.values():
        for _ in range(5):
            s.step()
    times = interleaved(sides, reps)
    mem = {k: s.memory() for k, s in sides.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        f"### {preset_name}, batch {batch}, bf16 autocast",
        "",
        f"parameters: ours {params['ours']:,}, diffusers {params['diffusers']:,}; same output "
        f"in fp32 after copying weights (max rel. diff {err:.1e}); {flops / 1e9:.1f} GFLOP per "
        f"step (forward + backward)",
        "",
        "| model | images/s (median) | spread (min-max) | ms/step | TFLOP/s | MFU (989 TFLOP/s) "
        "| of measured matmul | peak activations | weights+grads+Adam |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k in ("ours", "diffusers"):
        ts, m = times[k], med[k]
        lines.append(
            f"| {k} | {batch / m:.0f} | {batch / max(ts):.0f}-{batch / min(ts):.0f} | "
            f"{1e3 * m:.1f} | {flops / m / 1e12:.1f} | {100 * flops / m / DATASHEET_BF16:.1f}% | "
            f"{100 * flops / m / peak:.1f}% | {mem[k][0] / 2**20:.0f} MiB | "
            f"{mem[k][1] / 2**20:.0f} MiB |"
        )
    lines += ["", speedup_line(times), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=30, help="timed steps per model and case")
    p.add_argument("--case", choices=[*CASES, "all"], default="all")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("unet_throughput_gpu.py needs a CUDA GPU")
    import diffusers

    peak = matmul_peak()
    print(
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}, CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version()}; 8192^3 bf16 matmul {peak / 1e12:.0f} TFLOP/s; "
        f"{args.reps} timed steps per model\n",
        flush=True,
    )
    cases = CASES.values() if args.case == "all" else [CASES[args.case]]
    for name, batch in cases:
        print(run_case(name, batch, args.reps, peak), flush=True)


if __name__ == "__main__":
    main()
