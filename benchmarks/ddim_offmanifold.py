"""How many DDIM eta=0 samples of a checkpoint leave the data range?

For each checkpoint: 256 DDIM samples (20 uniform steps, eta = 0, no x0 clipping, initial noise
from seed 0); prints the fraction of pixels outside [-1, 1] and the fraction of samples with more
than 5% of their pixels beyond +-1.2 (off-manifold textures).

Run:  .venv/bin/python benchmarks/ddim_offmanifold.py CHECKPOINT [CHECKPOINT ...]
"""

from __future__ import annotations

import sys

import torch

from ddkit.diffusion.denoiser import Denoiser
from ddkit.samplers import sample_ddim
from ddkit.trained import load_trained


def main(paths: list[str]) -> None:
    for path in paths:
        tr = load_trained(path)
        x_T = torch.randn(256, *tr.data_shape, generator=torch.Generator().manual_seed(0))
        den = Denoiser(tr.model, tr.schedule, tr.config.diffusion.prediction, clip=None)
        with torch.no_grad():
            x = sample_ddim(den, x_T, tr.schedule.timesteps(20, "leading"), eta=0.0)
        outside = float((x.abs() > 1).float().mean())
        bad = float(((x.abs() > 1.2).float().flatten(1).mean(1) > 0.05).float().mean())
        print(
            f"{path} (step {tr.step}): pixels outside [-1, 1] {outside:.3f}, "
            f"off-manifold samples {bad:.3f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
