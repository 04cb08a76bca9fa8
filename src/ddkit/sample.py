"""``ddkit sample`` as one function: samples of a trained checkpoint written to a folder, with
the settings that made them.

    sample_to_folder("runs/digits", "samples-digits", sampler="ddim", steps=50, num=64)
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np

from . import viz
from .paths import atomic_write_bytes
from .trained import SampleSpec, generate, load_trained


def sample_to_folder(
    checkpoint: str | Path,
    out: str | Path = "samples",
    *,
    sampler: str = "ddim",
    steps: int = 50,
    spacing: str = "trailing",
    sampler_options: dict | None = None,
    clip_x0: str = "auto",
    seed: int = 0,
    num: int = 64,
    batch_size: int = 256,
    grid: int = 64,
    weights: str = "ema",
    device: str = "cpu",
    log=print,
) -> dict:
    """Draw ``num`` samples from the checkpoint (a file, or a run folder's newest) with the
    sampler ``sampler`` (``steps`` timesteps of ``spacing``, ``sampler_options``, ``clip_x0`` as
    in :class:`~ddkit.trained.SampleSpec`) and write to the folder ``out``: ``samples.npz``
    (``x``, and ``images`` as uint8 for image models), ``samples.png`` (the first ``grid``) and
    ``sampler.json``, the settings, which are returned.  ValueError, before any model call and
    with nothing written, when an input is not allowed."""
    spec = SampleSpec(sampler, steps, spacing, sampler_options or {}, clip_x0)
    trained = load_trained(checkpoint, weights, device)
    spec.timesteps(trained.schedule)  # validate steps against the model's T before any work
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    t0 = time.perf_counter()
    x = generate(trained, spec, num, seed=seed, batch_size=batch_size, device=device)
    wall = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"x": x.numpy()}
    if trained.is_image:
        arrays["images"] = viz.to_uint8(x)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(out / "samples.npz", buf.getvalue())
    viz.save_samples(x[:grid], out / "samples.png")
    settings = {
        "checkpoint": trained.path,
        "step": trained.step,
        "weights": trained.weights,
        **spec.as_dict(),
        "timesteps": spec.timesteps(trained.schedule),
        "nfe": spec.nfe(),
        "seed": seed,
        "num": num,
        "batch_size": batch_size,
        "device": device,
        "wall_seconds": round(wall, 3),
    }
    atomic_write_bytes(out / "sampler.json", json.dumps(settings, indent=2).encode())
    log(f"wrote {num} samples to {out} ({wall:.1f} s, {spec.nfe()} model calls each)")
    return settings
