"""``ddkit sample`` as one function: samples of a trained checkpoint written to a folder, with
the settings that made them.

    sample_to_folder("runs/digits", "samples-digits", sampler="ddim", steps=50, num=64)
"""

from __future__ import annotations

import errno
import io
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import viz
from .generation import DRAW_OPTIONS, check_labels, class_index, noise_source
from .paths import atomic_write_bytes, disk_full_error
from .resources import check_device, check_output_files, check_output_folder, check_seed
from .trained import SampleSpec, generate, load_trained

OUTPUT_FILES = ("samples.npz", "samples.png", "sampler.json")


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")


def sample_to_folder(
    checkpoint: str | Path,
    out: str | Path = "samples",
    *,
    sampler: str = "ddim",
    steps: int | str = 50,
    spacing: str = "trailing",
    sampler_options: dict | None = None,
    clip_x0: str = "auto",
    seed: int = 0,
    num: int = 64,
    batch_size: int = 256,
    grid: int = 64,
    weights: str = "ema",
    device: str = "cpu",
    png: bool = False,
    class_label=None,
    guidance: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    noise: str | None = None,
    log=print,
) -> dict:
    """Draw ``num`` samples from the checkpoint (a file, or a run folder's newest) with the
    sampler ``sampler`` (``steps`` timesteps of ``spacing``, ``sampler_options``, ``clip_x0`` as
    in :class:`~ddkit.trained.SampleSpec`; ``steps="tuned"`` or ``"tuned:N"``: the grid that
    ``ddkit tune-steps`` stored for this sampler, at N model calls, in the run folder) and write
    to the folder ``out``: ``samples.npz`` (``x``, and ``images`` as uint8 for image models),
    ``samples.png`` (the first ``grid``) and ``sampler.json``, the settings, which are returned;
    with ``png``, also ``png/NNNNNN.png``, one file per sample (image models), as FID tools such
    as clean-fid read a folder.  ``noise``: where a stochastic sampler's noise comes from,
    "philox" or "torch" (:func:`ddkit.generation.noise_source`; default by device).
    A class-conditional model draws ``class_label`` (an index or class name) with classifier-free
    ``guidance`` in ``guidance_interval``, or without a class the classes in turn, and then
    ``samples.png`` shows one row per class (``labels`` in ``samples.npz``).
    ValueError, before any model call and with nothing written, when an input is not allowed
    (the output folder, device and seed are checked before the checkpoint is read) or the
    samples would not fit in memory;
    :class:`~ddkit.trained.NonFiniteSamplesError`, with nothing written, when a sample is NaN
    or infinite."""
    out = check_output_folder(out, "--out")
    check_output_files(out, OUTPUT_FILES)
    if png and (out / "png").exists():
        raise ValueError(f"--out {str(out)!r}: png/ exists; --format png writes a new one")
    check_device(device, "--device")
    check_seed(seed, "--seed")
    noise = noise_source(noise, device)
    for name, value in (("num", num), ("batch_size", batch_size), ("grid", grid)):
        _check_count(name, value)
    trained = None
    if isinstance(steps, str):
        trained = load_trained(checkpoint, weights, device)
        steps, spacing = tuned_spacing(checkpoint, trained, sampler, steps, sampler_options or {})
    spec = SampleSpec(
        sampler, steps, spacing, sampler_options or {}, clip_x0, guidance, guidance_interval
    )
    trained = trained or load_trained(checkpoint, weights, device)
    labels = None
    if class_label is not None:
        labels = torch.full((num,), class_index(trained, class_label))
    labels = check_labels(trained, spec, num, labels)
    if png and not trained.is_image:
        raise ValueError("--format png needs an image model; this one draws points")
    spec.timesteps(trained.schedule)  # validate steps against the model's T before any work
    t0 = time.perf_counter()
    x = generate(
        trained,
        spec,
        num,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress="sampling",
        labels=labels,
        noise=noise,
    )
    wall = time.perf_counter() - t0
    arrays = {"x": x.numpy()}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    if trained.is_image:
        arrays["images"] = viz.to_uint8(x)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    settings = {
        "checkpoint": trained.path,
        "step": trained.step,
        "weights": trained.weights,
        **spec.as_dict(),
        "timesteps": spec.timesteps(trained.schedule),
        "nfe": spec.nfe(),
        "seed": seed,
        "noise": noise,
        "class": None if class_label is None else int(labels[0]),
        "class_names": list(trained.class_names) if trained.class_names else None,
        "num": num,
        "batch_size": batch_size,
        "device": device,
        "wall_seconds": round(wall, 3),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "samples.npz", buf.getvalue())
    if labels is not None and class_label is None and trained.is_image:
        shown, per_row = viz.class_grid(x, labels, trained.num_classes, grid)
        viz.save_image_grid(shown, out / "samples.png", nrow=per_row)
    else:
        viz.save_samples(x[:grid], out / "samples.png")
    if png:
        write_pngs(arrays["images"], out / "png")
    atomic_write_bytes(out / "sampler.json", json.dumps(settings, indent=2).encode())
    log(f"wrote {num} samples to {out} ({wall:.1f} s, {spec.nfe()} model calls each)")
    return settings


def tuned_spacing(checkpoint, trained, sampler: str, steps: str, options: dict):
    """(steps, timesteps) of the grid that ``steps`` ("tuned" or "tuned:N") names for
    ``sampler`` in the run folder of ``checkpoint``; ValueError for anything else."""
    from .tuned_steps import tuned_grid

    name, _, nfe = steps.partition(":")
    if name != "tuned" or (nfe and not nfe.isdigit()):
        raise ValueError(f"steps={steps!r} is not allowed; allowed: an integer, tuned, tuned:N")
    grid = tuned_grid(checkpoint, sampler, trained.schedule.T, int(nfe) if nfe else None)
    ode_options = {k: v for k, v in options.items() if k not in DRAW_OPTIONS}  # any end
    if grid.get("options", {}) != ode_options:
        raise ValueError(
            f"the tuned {sampler} grid was made with options {grid.get('options', {})}, "
            f"not {ode_options}"
        )
    if options.get("last") == "posterior":
        warnings.warn(
            "a tuned grid is tuned for the ODE's own last step, whose error it measures after "
            "the final denoising, not before a posterior draw; with --last-step posterior tuned "
            "grids did worse at NFE 5 and 10 on the held-out test mixtures (BENCHMARKS.md): "
            "prefer --steps N there",
            stacklevel=2,
        )
    if grid.get("checkpoint_step") != trained.step or grid.get("weights") != trained.weights:
        warnings.warn(
            f"the tuned grid was made for step {grid.get('checkpoint_step')} "
            f"({grid.get('weights')} weights); this is step {trained.step} ({trained.weights})",
            stacklevel=2,
        )
    return len(grid["timesteps"]), tuple(grid["timesteps"])


def write_pngs(images: np.ndarray, folder: Path) -> None:
    """uint8 images [N, H, W, C] as ``folder/000000.png`` ...; written into a temporary folder
    beside it and renamed into place, so that an interrupted run leaves no partial set.  A full
    disk is a :class:`~ddkit.paths.DiskFullError` naming the file, with nothing of the set left."""
    from PIL import Image

    tmp = Path(tempfile.mkdtemp(prefix=".png.", dir=folder.parent))
    name = tmp
    try:
        for i, img in enumerate(images):
            name = tmp / f"{i:06d}.png"
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(name)
        tmp.rename(folder)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_error(folder / name.name) from None
        raise
