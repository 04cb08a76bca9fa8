"""One U-Net training step (forward + MSE + backward + fused Adam, fp32) of ddkit's default model
against a variant of the same model, in one process: two copies with the same weights, steps
alternating (ABBA), the ratio of median step times and the median per-round ratio, each with a
95% bootstrap interval over rounds (as in ``unet_throughput.py``).  Ratios above 1 mean the default
is faster.  The variants are what the default replaced:

* ``--variant levels=0,1``: the levels run in channels_last pinned to this set (the default is
  ``UNetConfig.channels_last_levels()`` on a CPU that favours channels_last); an empty set
  (``levels=``) is all NCHW;
* ``--variant projections``: every ResBlock projecting the time embedding itself, one Linear per
  block (the default stacks them into one product, ``UNet._time_shifts``);
* ``--variant separate-inputs``: each ResBlock's first norm takes ``torch.cat``'s output and
  autograd adds the skip path's gradient to the norm's (the default hands both to the fused
  kernel, ``GroupNormSiLU.with_input``).

    .venv/bin/python benchmarks/step_variants.py --variant levels=0,1 [--preset ddpm-28]
        [--batch 64] [--reps 101] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import types

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from _machine import cpu_and_torch  # noqa: E402  (benchmarks/ is on sys.path when run)
from unet_throughput import interleaved, ratio_intervals  # noqa: E402

from ddkit.cpu.malloc import keep_freed_memory  # noqa: E402
from ddkit.models import preset  # noqa: E402
from ddkit.models.unet import cpu_favours_channels_last  # noqa: E402


def make_variant(model, variant: str):
    """A copy of ``model`` with ``variant`` applied, and a description of it."""
    other = copy.deepcopy(model)
    if variant == "projections":
        other._time_shifts = types.MethodType(
            lambda self, emb: iter([None] * len(self._res_blocks())), other
        )
        return other, "one time projection per ResBlock"
    if variant == "separate-inputs":
        for block in other._res_blocks():

            def with_input(x, concat=None, norm=block.norm1):
                u = x if concat is None else torch.cat([x, concat], dim=1)
                return norm(u), u

            block.norm1.with_input = with_input
        return other, "torch.cat and autograd's add around each first norm"
    if variant.startswith("levels="):
        levels = frozenset(int(v) for v in variant[len("levels=") :].split(",") if v)
        other._channels_last_levels = levels
        return other, f"channels_last levels {sorted(levels)}"
    raise SystemExit(
        f"--variant {variant!r}: expected projections, separate-inputs or levels=<i,j,...>"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", required=True)
    ap.add_argument("--preset", default="ddpm-28")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=101)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as ddkit train does: no page faults on either side
    torch.manual_seed(0)
    if args.variant.startswith("levels=") and not cpu_favours_channels_last():
        raise SystemExit(
            "--variant levels=...: this CPU (or DDKIT_CHANNELS_LAST=0) runs every level in NCHW, "
            "so both sides would run the same layout"
        )
    default = preset(args.preset).build().train()
    variant, described = make_variant(default, args.variant)
    cfg = default.config
    x = torch.randn(args.batch, *cfg.input_shape())
    t = torch.randint(0, 1000, (args.batch,))
    noise = torch.randn_like(x)

    def trainer(model):
        opt = torch.optim.Adam(model.parameters(), lr=2e-4, fused=True)

        def step() -> float:
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(x, t), noise).backward()
            opt.step()
            return time.perf_counter() - start

        return step

    # ratio_intervals reads the keys "ours" (the default) and "diffusers" (the variant)
    sides = {"ours": trainer(default), "diffusers": trainer(variant)}
    for _ in range(3):  # warm-up
        for step in sides.values():
            step()
    times = interleaved({k: types.SimpleNamespace(step=f) for k, f in sides.items()}, args.reps)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [v / d for d, v in zip(times["ours"], times["diffusers"])]
    (low, high), (rlow, rhigh) = ratio_intervals(times)
    print(f"{cpu_and_torch(args.threads)}; {args.preset}, batch {args.batch}, {args.reps} rounds")
    print(
        f"default (channels_last levels {sorted(default._channels_last_levels)}"
        f"{'' if cpu_favours_channels_last() else ', but all NCHW on this CPU'}) "
        f"{med['ours'] * 1e3:.1f} ms/step; {described} {med['diffusers'] * 1e3:.1f} ms/step\n"
        f"variant / default: {med['diffusers'] / med['ours']:.4f} (ratio of medians, 95% interval "
        f"{low:.4f}-{high:.4f}); per-round median {statistics.median(ratios):.4f} "
        f"({rlow:.4f}-{rhigh:.4f})"
    )


if __name__ == "__main__":
    main()
