"""How sharp are a sampler's images, next to real ones?  A diagnostic beside FID.

ddkit's Fashion-MNIST FID features come from a classifier trained on the labels, so they weigh
what tells classes apart more than fine detail.  This script measures detail directly
(``ddkit.evaluation.sharpness``) on the ``samples.npz`` files that ``ddkit sample`` writes: for
every image, in [-1, 1] units,

  * the mean absolute finite difference |dx| + |dy| between neighbouring pixels (edge strength);
  * the share of the image's spectral power (mean removed) above 0.25 cycles/pixel (fine detail);

averaged over images with the standard error, and as a ratio to the same numbers on real
test images (1.00 = as sharp as the data; below 1 = blurrier).

Run:  .venv/bin/python experiments/sample_sharpness.py --real-num 1000 LABEL=DIR/samples.npz ...
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch

from ddkit.evaluation.sharpness import sharpness


def _row(label: str, m: dict, ref: dict | None) -> str:
    cells = []
    for k in ("grad", "hf_share"):
        v = m[k]
        mean, se = float(v.mean()), float(v.std() / math.sqrt(len(v)))
        ratio = f" ({mean / float(ref[k].mean()):.2f}x real)" if ref is not None else ""
        cells.append(f"{mean:.4f} +- {se:.4f}{ratio}")
    return f"| {label} | {len(m['grad'])} | " + " | ".join(cells) + " |"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("samples", nargs="+", help="LABEL=path/to/samples.npz")
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--split", default="test")
    p.add_argument("--real-num", type=int, default=1000)
    a = p.parse_args()
    from ddkit.config import DataConfig
    from ddkit.data import load_dataset

    data = load_dataset(DataConfig(name=a.data, split=a.split))
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: a.real_num]
    ref = sharpness(data.get_batch(idx))
    print("| images | N | mean abs. neighbour difference | power share above 0.25 c/px |")
    print("|---|---:|---:|---:|")
    print(_row(f"real {a.data} {a.split}", ref, None))
    for item in a.samples:
        label, sep, path = item.partition("=")
        if not sep:
            print(f"error: {item!r} is not LABEL=PATH", file=sys.stderr)
            return 2
        x = torch.from_numpy(np.load(path)["x"])
        if tuple(x.shape[1:]) != tuple(data.shape):
            print(f"error: {path}: shape {tuple(x.shape[1:])}, data {data.shape}", file=sys.stderr)
            return 2
        print(_row(label, sharpness(x), ref))
    return 0


if __name__ == "__main__":
    sys.exit(main())
