"""DDIM inversion and interpolation (DDIM sec. 5.3 and 5.4): the encode-decode error of held-out
images, and images decoded from spherical interpolations between latents."""

from __future__ import annotations

import time
from functools import partial

import torch

from ..progress import Progress
from ..trained import SampleSpec, Trained
from .heldout import held_out, mean_stderr

_LOG = partial(print, flush=True)


@torch.no_grad()
def reconstruction_error(
    trained: Trained,
    steps_list,
    *,
    split: str = "test",
    num: int = 100,
    spacing: str = "leading",
    batch_size: int = 100,
    device: str = "cpu",
    data=None,
    progress: bool = True,
    log=_LOG,
) -> list[dict]:
    """DDIM Table 2: encode held-out images (of ``split``, or of ``data``, a ddkit Dataset) to
    x_T with DDIM run backwards and decode with DDIM eta=0 on the same S timesteps; the
    per-dimension mean squared error (data in [-1, 1]), mean over images with its standard
    error, for each S.  ``progress`` shows the model calls of all S together, with an ETA."""
    from ..samplers import ddim_invert, sample_ddim

    _, x0 = held_out(trained, split, num, data)
    den = trained.denoiser()
    batches = -(-len(x0) // batch_size)
    total = sum(2 * s for s in steps_list) * batches  # S steps each way, per batch
    bar = Progress(total, "inversion", unit="step", enabled=progress)

    def tick(*_):
        bar.update()

    rows = []
    for steps in steps_list:
        ts = SampleSpec("ddim", steps, spacing).timesteps(trained.schedule)
        t0, errs = time.perf_counter(), []
        for start in range(0, len(x0), batch_size):
            xb = x0[start : start + batch_size].to(device)
            z = ddim_invert(den, xb, ts, callback=tick)
            xr = sample_ddim(den, z, ts, eta=0.0, callback=tick)
            errs.append((xr - xb).pow(2).flatten(1).mean(1).cpu())
        mean, se = mean_stderr(torch.cat(errs))
        rows.append(
            {
                "steps": steps,
                "mse": mean,
                "stderr": se,
                "num_images": len(x0),
                "split": split,
                "spacing": spacing,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
        log(f"  S = {steps}: reconstruction MSE {mean:.3g} +- {se:.2g}")
    bar.close()
    return rows


@torch.no_grad()
def interpolation_grid(
    trained: Trained,
    *,
    rows: int = 6,
    cols: int = 9,
    steps: int = 50,
    seed: int = 0,
    device: str = "cpu",
) -> torch.Tensor:
    """DDIM sec. 5.3: for each row, two latents x_T ~ N(0, I) and the DDIM eta=0 samples of
    ``cols`` spherical interpolations between them, [rows * cols, *shape]."""
    from ..samplers import sample_ddim, slerp

    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn((rows, *trained.data_shape), generator=g)
    z1 = torch.randn((rows, *trained.data_shape), generator=g)
    alphas = torch.linspace(0, 1, cols)
    z = torch.stack([slerp(z0, z1, torch.full((rows,), float(a))) for a in alphas], 1)
    z = z.reshape(rows * cols, *trained.data_shape).to(device)
    ts = SampleSpec("ddim", steps, "leading").timesteps(trained.schedule)
    return sample_ddim(trained.denoiser(), z, ts, eta=0.0).float().cpu()
