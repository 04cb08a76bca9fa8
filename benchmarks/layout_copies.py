"""Memory traffic of layout copies in one U-Net training step (forward + backward), counted.

Counts the ``aten::copy_`` calls on activation-sized tensors (4-d, the batch as first dimension)
that ``torch.profiler`` records in one forward + backward of ``ddpm-28`` (batch 64) and
``ddpm-cifar10`` (batch 8), one thread, after a warm-up step, and the MiB they move, with the
operator that made each copy.  A count, not a timing: it does not depend on the machine's load.

    .venv/bin/python benchmarks/layout_copies.py [--detail]
"""

from __future__ import annotations

import argparse
import collections
import math

import torch
from torch.profiler import ProfilerActivity, profile

from ddkit.models import preset

CASES = (("ddpm-28", 64), ("ddpm-cifar10", 8))


def count(name: str, batch: int) -> tuple[int, float, collections.Counter]:
    torch.manual_seed(0)
    cfg = preset(name)
    model = cfg.build().train()
    x = torch.randn(batch, *cfg.input_shape())
    t = torch.randint(0, 1000, (batch,))
    model(x, t).square().mean().backward()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        model(x, t).square().mean().backward()
    calls, mib, by_origin = 0, 0.0, collections.Counter()
    for e in prof.events():
        shape = e.input_shapes[0] if e.input_shapes else []
        if e.name == "aten::copy_" and len(shape) == 4 and shape[0] == batch:
            size = math.prod(shape) * 4 / 2**20
            calls += 1
            mib += size
            chain, parent = [], e.cpu_parent
            while parent is not None and len(chain) < 3:
                chain.append(parent.name.replace("autograd::engine::evaluate_function: ", ""))
                parent = parent.cpu_parent
            by_origin[" <- ".join(chain) or "(top level)"] += size
    return calls, mib, by_origin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detail", action="store_true", help="MiB by the op that copied")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, batch in CASES:
        calls, mib, by_origin = count(name, batch)
        print(f"{name}, batch {batch}: {calls} activation copies, {mib:.1f} MiB per step")
        if args.detail:
            for origin, size in by_origin.most_common():
                print(f"    {size:7.1f} MiB  {origin}")


if __name__ == "__main__":
    main()
