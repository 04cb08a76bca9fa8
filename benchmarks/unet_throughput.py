"""Training throughput of ddkit's DDPM U-Net beside diffusers' ``UNet2DModel`` of the same
architecture, on CPU in fp32.

One training step = forward + MSE loss against a noise target + backward + Adam step (the
``ddkit train`` optimizer: ``torch.optim.Adam(fused=True)``, the same on both sides).  diffusers is
configured to the same network (block_out_channels, layers_per_block, attention at the same
resolutions with one head, GroupNorm groups and eps, dropout, the DDPM sinusoidal embedding); the
script checks that both have the same parameter count and, after copying diffusers' weights into
ours, the same output.  Both run with their default settings: ours is ``UNetConfig.build()`` as
``ddkit train`` builds it (its CPU fast paths, ``ddkit.cpu``, are default behaviour), theirs
is ``UNet2DModel(...)`` with its default attention processor.

Timing: both models live in one process; after a warm-up, steps alternate (ours, theirs, theirs,
ours, ...) and each side's median step time gives images/s, with the min-max spread.  The
speed-up is the ratio of the two medians; beside it, the median of the per-round ratios (each
round's two steps ran back to back, so a drift in machine speed that slows both cancels in their
ratio), each with a 95% bootstrap interval over rounds (a round's pair of steps resampled
together): on a machine whose speed drifts, the intervals say how far the figures can be
trusted, and a long run (``--reps 101``) narrows them.  GFLOP/s is
the nominal FLOP count of one step (forward + backward, counted by FlopCounterMode on the diffusers
model, attention included; Adam not counted) over the median time, so both sides are credited with
the same work.  Peak memory: each model trains 3 steps alone in a fresh subprocess; reported is the
process's peak resident set size (VmHWM; imports of torch and diffusers, model, Adam state
included) and its growth over the training steps (activations, gradients, optimizer state).
Page faults/step: the process's minor page faults during each timed step (median).

With ``--precision bf16`` both sides run forward and loss under ``torch.autocast("cpu",
torch.bfloat16)``, as ``ddkit train --set train.precision=bf16`` does (weights, gradients and Adam
in
fp32); on CPUs with AMX or AVX512-BF16 oneDNN then computes convolutions and matmuls in bf16.

    .venv/bin/python benchmarks/unet_throughput.py [--reps 9] [--threads 2] [--case cifar|28|all]
        [--precision fp32|bf16] [--compile] [--ablate] [--against REV]

``--ablate`` adds one ddkit side per CPU fast path (``ddkit.cpu.FAST_PATHS``) with that path
switched off (``ddkit.cpu.disabled(name)`` around its steps), and reports each path's share of
a training step: 1 - t(all paths) / t(without it), as the median of the per-round ratios with
its bootstrap interval.  ``--against REV`` adds a side built from the ddkit source of git
revision REV (extracted to a temporary folder and imported as a second package), so a change's
effect on the speed-up over diffusers is measured in one interleaved run.

With ``--compile`` both sides' forwards run under ``torch.compile`` (Inductor; as ``ddkit train
--set train.compile=true``); the first two steps, which compile, are reported apart.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

# With more runnable threads than cores (a shared machine), OpenMP's default spin-waiting makes
# parallel ops wait for descheduled workers; passive waiting times the arithmetic instead.  It must
# be set before torch loads OpenMP; OMP_WAIT_POLICY=ACTIVE in the environment overrides.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from _machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run)
from torch.utils.flop_counter import (  # noqa: E402
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from ddkit import cpu  # noqa: E402
from ddkit.models import UNet, UNetConfig, count_parameters, preset  # noqa: E402

CASES = {"cifar": ("ddpm-cifar10", 8), "28": ("ddpm-28", 64)}
LR = 2e-4


def diffusers_model(cfg: UNetConfig):
    """``UNet2DModel`` with the architecture of ``cfg`` (same parameter count, same function)."""
    from diffusers import UNet2DModel

    if cfg.num_heads != 1:  # diffusers fixes the head width, ddkit the number of heads
        raise ValueError("the diffusers twin is defined for num_heads=1 only")
    res = cfg.resolutions()
    attn = [r in cfg.attention_resolutions for r in res]
    width = [cfg.base_channels * m for m in cfg.channel_mult]
    return UNet2DModel(
        sample_size=cfg.image_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        block_out_channels=tuple(width),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        layers_per_block=cfg.num_res_blocks,
        attention_head_dim=None,  # one head as wide as the channels
        norm_num_groups=cfg.groups,
        norm_eps=1e-6,
        dropout=cfg.dropout,
        flip_sin_to_cos=False,  # DDPM: [sin, cos]
        freq_shift=1,  # DDPM: frequencies 10000 ** (-k / (half - 1))
        downsample_padding=1,
    )


def copy_diffusers_weights(ours: UNet, theirs) -> None:
    """Load ``theirs``' weights into ``ours`` (the module correspondence of the two U-Nets)."""
    cfg = ours.config
    src = theirs.state_dict()
    out = {}

    def take(dst: str, name: str) -> None:
        for suffix in ("weight", "bias"):
            if f"{name}.{suffix}" in src:
                out[f"{dst}.{suffix}"] = src[f"{name}.{suffix}"]

    def res(dst: str, name: str) -> None:
        for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("emb_proj", "time_emb_proj")):
            take(f"{dst}.{a}", f"{name}.{b}")
        for a, b in (("norm2", "norm2"), ("conv2", "conv2"), ("skip", "conv_shortcut")):
            take(f"{dst}.{a}", f"{name}.{b}")

    def attn(dst: str, name: str) -> None:
        take(f"{dst}.norm", f"{name}.group_norm")
        take(f"{dst}.proj", f"{name}.to_out.0")
        for suffix in ("weight", "bias"):
            parts = [src[f"{name}.to_{k}.{suffix}"] for k in "qkv"]
            out[f"{dst}.qkv.{suffix}"] = torch.cat(parts)

    take("conv_in", "conv_in")
    take("time_embed.0", "time_embedding.linear_1")
    take("time_embed.2", "time_embedding.linear_2")
    take("norm_out", "conv_norm_out")
    take("conv_out", "conv_out")
    levels = len(cfg.channel_mult)
    attended = [r in cfg.attention_resolutions for r in cfg.resolutions()]
    k = 0
    for level in range(levels):
        for i in range(cfg.num_res_blocks):
            res(f"down.{k}.0", f"down_blocks.{level}.resnets.{i}")
            if attended[level]:
                attn(f"down.{k}.1", f"down_blocks.{level}.attentions.{i}")
            k += 1
        if level != levels - 1:
            take(f"down.{k}.0.conv", f"down_blocks.{level}.downsamplers.0.conv")
            k += 1
    res("middle.0", "mid_block.resnets.0")
    attn("middle.1", "mid_block.attentions.0")
    res("middle.2", "mid_block.resnets.1")
    k = 0
    for j, level in enumerate(reversed(range(levels))):
        for i in range(cfg.num_res_blocks + 1):
            res(f"up.{k}.0", f"up_blocks.{j}.resnets.{i}")
            if attended[level]:
                attn(f"up.{k}.1", f"up_blocks.{j}.attentions.{i}")
            if level != 0 and i == cfg.num_res_blocks:
                up = 2 if attended[level] else 1
                take(f"up.{k}.{up}.conv", f"up_blocks.{j}.upsamplers.0.conv")
            k += 1
    ours.load_state_dict(out, strict=True)


def check_same_function(cfg: UNetConfig) -> float:
    """Relative max difference of the two outputs (eval mode) with diffusers' weights, randomised
    so that the zero-initialised layers do not hide anything."""
    torch.manual_seed(0)
    theirs = diffusers_model(cfg)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0.0, 0.02 if p.ndim > 1 else 0.1)
    ours = cfg.build()
    copy_diffusers_weights(ours, theirs)
    ours.eval()
    theirs.eval()
    x = torch.randn(8, *cfg.input_shape())
    t = torch.tensor([0, 1, 10, 100, 300, 500, 800, 999])
    with torch.no_grad():
        a, b = ours(x, t), theirs(x, t).sample
    return ((a - b).abs().max() / b.abs().max()).item()


def _cpu_flash_fwd(q, k, v, *args, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _cpu_flash_bwd(grad_out, q, k, v, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, q, k, v)


def count_step_flops(model, forward, cfg: UNetConfig, batch: int) -> int:
    """FLOPs of forward + backward of one step (CPU flash attention counted like the CUDA one)."""
    ops = torch.ops.aten
    mapping = {
        ops._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_fwd,
        ops._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_bwd,
    }
    x = torch.randn(batch, *cfg.input_shape())
    t = torch.randint(0, 1000, (batch,))
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        forward(x, t).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def load_revision(rev: str):
    """``ddkit.models`` of git revision ``rev``, imported as the package ``ddkit_rev`` from the
    revision's ``src/ddkit`` extracted to a temporary folder (its kernel builds into its own
    cache key, as any source change does)."""
    root = tempfile.mkdtemp(prefix="ddkit-rev-")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "src/ddkit"],
        capture_output=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    ).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    pkg = os.path.join(root, "src", "ddkit")
    spec = importlib.util.spec_from_file_location(
        "ddkit_rev", os.path.join(pkg, "__init__.py"), submodule_search_locations=[pkg]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["ddkit_rev"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("ddkit_rev.models")


class Side:
    """One model with its optimizer, data and a ``step()``.

    ``kind``: "ours" (this checkout's U-Net), "diffusers", or "rev" (the U-Net that ``build``
    makes); ``off``: CPU fast paths switched off around every step of this side."""

    def __init__(
        self,
        kind: str,
        cfg: UNetConfig,
        batch: int,
        precision: str = "fp32",
        compile: bool = False,
        *,
        off: tuple[str, ...] = (),
        build=None,
    ):
        torch.manual_seed(1)
        self.amp = precision == "bf16"
        self.off = off
        if kind == "ours":
            self.model = cfg.build()
            self.eager = self.model
        elif kind == "rev":
            self.model = build()
            self.eager = self.model
        else:
            self.model = diffusers_model(cfg)
            self.eager = lambda x, t: self.model(x, t).sample
        self.forward = torch.compile(self.eager) if compile else self.eager
        self.model.train()
        try:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=LR, fused=True)
        except (RuntimeError, TypeError):
            self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)
        g = torch.Generator().manual_seed(2)
        self.x = torch.randn(batch, *cfg.input_shape(), generator=g)
        self.noise = torch.randn(
            batch, cfg.out_channels, cfg.image_size, cfg.image_size, generator=g
        )
        self.t = torch.randint(0, 1000, (batch,), generator=g)
        self.faults: list[int] = []  # minor page faults of each step (the process's, per step)

    def step(self) -> float:
        switch = cpu.disabled(*self.off) if self.off else contextlib.nullcontext()
        with switch:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
                loss = (self.forward(self.x, self.t).float() - self.noise).square().mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            elapsed = time.perf_counter() - start
        self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
        return elapsed


def peak_rss_kib() -> int:
    """This process's peak resident set size in KiB: VmHWM from /proc/self/status (reset by exec,
    unlike ru_maxrss, which a child inherits from its parent's size at fork), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker(
    side: str, preset_name: str, batch: int, threads: int, steps: int, precision: str, compile: bool
) -> None:
    """Subprocess entry: train ``steps`` steps alone, print the peak RSS before and after (KiB)."""
    import diffusers  # noqa: F401  (both sides import the same modules)

    torch.set_num_threads(threads)
    s = Side(side, preset(preset_name), batch, precision, compile)
    before = peak_rss_kib()
    for _ in range(steps):
        s.step()
    print(json.dumps({"before_kib": before, "after_kib": peak_rss_kib()}))


def peak_memory(
    side: str, preset_name: str, batch: int, threads: int, precision: str, compile: bool
) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, preset_name, str(batch), str(threads), "3"]
    cmd += [precision, str(int(compile))]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_sides(
    preset_name: str, batch, precision, compile, ablate: bool, rev_models, rev: str | None
) -> dict:
    """The sides of one run, by name: ours, [ours without each fast path], [REV], diffusers."""
    cfg = preset(preset_name)
    sides = {"ours": Side("ours", cfg, batch, precision, compile)}
    if ablate:
        for name in cpu.FAST_PATHS:
            sides[f"ours without {name}"] = Side(
                "ours", cfg, batch, precision, compile, off=(name,)
            )
    if rev_models is not None:
        sides[f"ddkit at {rev}"] = Side(
            "rev", cfg, batch, precision, compile, build=rev_models.preset(preset_name).build
        )
    sides["diffusers"] = Side("diffusers", cfg, batch, precision, compile)
    return sides


def run_case(
    preset_name: str,
    batch: int,
    reps: int,
    threads: int,
    precision: str,
    compile: bool,
    ablate: bool = False,
    rev_models=None,
    rev: str | None = None,
) -> dict:
    cfg = preset(preset_name)
    err = check_same_function(cfg)
    sides = make_sides(preset_name, batch, precision, compile, ablate, rev_models, rev)
    params = {name: count_parameters(s.model) for name, s in sides.items()}
    if len(set(params.values())) != 1:
        raise RuntimeError(f"parameter counts differ: {params}")
    nominal = count_step_flops(sides["diffusers"].model, sides["diffusers"].eager, cfg, batch)
    executed = count_step_flops(sides["ours"].model, sides["ours"].eager, cfg, batch)
    warmup = {}
    for name, s in sides.items():  # oneDNN primitive caches, allocator; compilation
        warmup[name] = s.step() + s.step()
    for s in sides.values():
        s.faults.clear()
    times = interleaved(sides, reps)
    faults = {name: statistics.median(s.faults) for name, s in sides.items()}
    memory = {
        name: peak_memory(name, preset_name, batch, threads, precision, compile)
        for name in ("ours", "diffusers")
    }
    return {
        "preset": preset_name,
        "batch": batch,
        "params": params,
        "output_rel_diff": err,
        "nominal_gflop": nominal / 1e9,
        "ours_executed_gflop": executed / 1e9,
        "times": times,
        "page_faults_per_step": faults,
        "memory": memory,
        "compile": compile,
        "warmup_s": warmup,
    }


def report(result: dict) -> str:
    b = result["batch"]
    times = result["times"]
    med = {k: statistics.median(v) for k, v in times.items()}
    compiled = ""
    if result["compile"]:
        w = result["warmup_s"]
        compiled = (
            f", both sides under torch.compile (first two steps, compilation included: ours "
            f"{w['ours']:.0f} s, diffusers {w['diffusers']:.0f} s)"
        )
    lines = [
        f"### {result['preset']}, batch {b}{compiled}",
        "",
        f"parameters: {result['params']['ours']:,} on every side; same output as diffusers after "
        f"copying weights (max rel. diff {result['output_rel_diff']:.1e}); nominal "
        f"{result['nominal_gflop']:.1f} GFLOP per step (ours executes "
        f"{result['ours_executed_gflop']:.1f})",
        "",
        "| model | images/s (median) | spread (min-max) | ms/step | GFLOP/s | peak RSS "
        "| RSS growth | page faults/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, ts in times.items():
        mem = result["memory"].get(name)
        rss = (
            f"{mem['after_kib'] / 1024:.0f} MiB | "
            f"{(mem['after_kib'] - mem['before_kib']) / 1024:.0f} MiB"
            if mem
            else "- | -"
        )
        lines.append(
            f"| {name} | {b / med[name]:.2f} | {b / max(ts):.2f}-{b / min(ts):.2f} | "
            f"{1e3 * med[name]:.0f} | {result['nominal_gflop'] / med[name]:.1f} | {rss} "
            f"| {result['page_faults_per_step'][name]:.0f} |"
        )
    lines.append("")
    for name in times:
        if name != "diffusers" and not name.startswith("ours without"):
            lines.append(f"- {name}: " + speedup_line(times, name, "diffusers"))
    for name in times:
        if name.startswith("ddkit at "):
            lines.append(f"- ours against {name}: " + speedup_line(times, "ours", name))
    for name in times:
        if name.startswith("ours without"):
            lines.append(f"- share of {name[len('ours without ') :]}: " + share_line(times, name))
    lines.append("")
    return "\n".join(lines)


def interleaved(sides: dict, reps: int) -> dict[str, list[float]]:
    """Step times of each side over ``reps`` rounds, the order of the sides reversed every other
    round, so that no side always runs first."""
    times = {name: [] for name in sides}
    names = list(sides)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(sides[name].step())
    return times


def ratio_intervals(
    times: dict[str, list[float]],
    a: str = "ours",
    b: str = "diffusers",
    resamples: int = 2000,
    level: float = 0.95,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Bootstrap intervals of the ratio of medians (b / a) and of the median per-round ratio:
    rounds resampled with replacement, each round keeping its steps (they ran back to back, under
    the same machine speed), percentile intervals.  Fixed seed, so a rerun of the report gives the
    same."""
    rng = random.Random(0)
    ours, theirs = times[a], times[b]
    ratios = [d / o for o, d in zip(ours, theirs)]
    of_medians, per_round = [], []
    for _ in range(resamples):
        rounds = [rng.randrange(len(ratios)) for _ in ratios]
        of_medians.append(
            statistics.median(theirs[i] for i in rounds)
            / statistics.median(ours[i] for i in rounds)
        )
        per_round.append(statistics.median(ratios[i] for i in rounds))
    lo, hi = int((1.0 - level) / 2 * resamples), int((1.0 + level) / 2 * resamples) - 1
    of_medians.sort()
    per_round.sort()
    return (of_medians[lo], of_medians[hi]), (per_round[lo], per_round[hi])


def speedup_line(times: dict[str, list[float]], a: str = "ours", b: str = "diffusers") -> str:
    """Speed-up of side a over side b: ratio of median step times and median of the per-round
    ratios, each with its 95% bootstrap interval over rounds, and the range of the per-round
    ratios."""
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = sorted(d / o for o, d in zip(times[a], times[b]))
    (low, high), (rlow, rhigh) = ratio_intervals(times, a, b)
    return (
        f"speed-up over {b}: **{med[b] / med[a]:.3f}x** (ratio of medians; "
        f"95% bootstrap interval over rounds {low:.3f}-{high:.3f}); per-round ratios "
        f"{ratios[0]:.2f}-{ratios[-1]:.2f}, median {statistics.median(ratios):.3f} "
        f"({rlow:.3f}-{rhigh:.3f})"
    )


def share_line(times: dict[str, list[float]], without: str) -> str:
    """A fast path's share of the step: 1 - t(ours) / t(ours without it), per-round median with
    its 95% bootstrap interval (from the interval of the per-round ratio)."""
    ratios = [w / o for o, w in zip(times["ours"], times[without])]
    _, (rlow, rhigh) = ratio_intervals(times, "ours", without)
    return (
        f"**{100 * (1 - 1 / statistics.median(ratios)):.1f}%** of the step without it "
        f"(interval {100 * (1 - 1 / rlow):.1f}% to {100 * (1 - 1 / rhigh):.1f}%)"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        side, name, batch, threads, steps, precision, compile = sys.argv[2:9]
        worker(side, name, int(batch), int(threads), int(steps), precision, compile == "1")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9, help="timed steps per model and case")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument(
        "--compile", action="store_true", help="both sides under torch.compile (train.compile)"
    )
    parser.add_argument(
        "--ablate", action="store_true", help="one more side per CPU fast path, switched off"
    )
    parser.add_argument("--against", metavar="REV", help="one more side: ddkit at git revision REV")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import diffusers

    rev_models = load_revision(args.against) if args.against else None
    load = os.getloadavg()
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({args.threads} threads), diffusers {diffusers.__version__}, {args.precision}"
        f"{', torch.compile' if args.compile else ''}, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, load average at start "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, {args.reps} timed steps per model\n"
    )
    cases = CASES.values() if args.case == "all" else [CASES[args.case]]
    for name, batch in cases:
        result = run_case(
            name,
            batch,
            args.reps,
            args.threads,
            args.precision,
            args.compile,
            ablate=args.ablate,
            rev_models=rev_models,
            rev=args.against,
        )
        print(report(result), flush=True)


if __name__ == "__main__":
    main()
