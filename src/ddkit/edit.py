"""``ddkit inpaint`` and ``ddkit edit``: a trained image model applied to a user's image file.

Inpainting keeps the pixels that the mask marks white (>= 128 in its grayscale; black: generate)
and generates the rest (:func:`ddkit.samplers.editing.sample_inpaint`: replacement, and RePaint's
resampling with ``resample`` > 1).  Editing is SDEdit: the image is noised to ``strength`` in
(0, 1] and denoised with any sampler.  Both write ``<name>.png`` (the input, the masked input for
inpainting, then the results), ``<name>.npz`` (``images`` uint8 [num, H, W, C]) and
``<name>.json`` (the settings).  Image and mask files are untrusted: regular files only, at most
``MAX_IMAGE_BYTES``, decoded with PIL's decompression-bomb limit, and they must have the model's
size and channels (nothing is resized or converted between gray and colour).
"""

from __future__ import annotations

import io
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import viz
from .generation import SampleSpec, check_labels, class_index, make_noise, noise_source
from .paths import atomic_write_bytes
from .progress import Progress
from .resources import (
    NotRegularFileError,
    check_device,
    check_output_files,
    check_output_folder,
    check_seed,
    open_regular,
)
from .samplers import get_sampler
from .samplers.editing import noise_to, sample_inpaint, sdedit_timesteps
from .trained import Trained, load_trained

MAX_IMAGE_BYTES = 64 * 2**20


def read_image_file(path: str | Path, what: str = "--image") -> np.ndarray:
    """uint8 [H, W, C] (C = 1 for gray, 3 for colour; alpha composited on white) of an image
    file; ValueError naming ``what`` for anything that is not a readable image of at most
    ``MAX_IMAGE_BYTES`` and PIL's pixel limit."""
    from PIL import Image, UnidentifiedImageError

    from .data.images import native_channels, to_8bit

    try:
        f, st = open_regular(path)
    except NotRegularFileError as e:
        raise ValueError(f"{what} {str(path)!r} is {e.kind}, not an image file") from None
    except OSError as e:
        raise ValueError(f"{what} {str(path)!r} cannot be read: {e.strerror}") from None
    with f:
        if st.st_size > MAX_IMAGE_BYTES:
            raise ValueError(
                f"{what} {str(path)!r} is {st.st_size} bytes; at most {MAX_IMAGE_BYTES} allowed"
            )
        data = f.read(MAX_IMAGE_BYTES + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
            img = to_8bit(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what} {str(path)!r} is not a readable image: {e}") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ValueError(f"{what} {str(path)!r} has more pixels than PIL's limit") from None
    arr = np.asarray(img, dtype=np.uint8)
    if native_channels(img.mode) == 1:
        arr = arr[..., None] if arr.ndim == 2 else arr[..., :1]
    return arr


def image_for_model(path, trained: Trained) -> torch.Tensor:
    """The image file as the model's input [C, H, W] in [-1, 1]; ValueError when its size or
    channels differ from the model's."""
    if not trained.is_image:
        raise ValueError("the model draws points; inpaint and edit need an image model")
    arr = read_image_file(path)
    c, s, _ = trained.data_shape
    h, w, ch = arr.shape
    if (h, w) != (s, s) or ch != c:
        kind = {1: "gray", 3: "colour"}
        raise ValueError(
            f"--image {str(path)!r} is {w}x{h} {kind[ch]}; the model takes {s}x{s} {kind[c]} images"
        )
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()).float().div_(127.5).sub_(1.0)


def mask_for_model(path, trained: Trained) -> torch.Tensor:
    """The mask file as [1, H, W] of 1 (keep: white, gray >= 128) and 0 (generate)."""
    arr = read_image_file(path, "--mask")
    s = trained.data_shape[1]
    if arr.shape[:2] != (s, s):
        h, w = arr.shape[:2]
        raise ValueError(f"--mask {str(path)!r} is {w}x{h}; it must match the image: {s}x{s}")
    gray = arr.mean(-1) if arr.shape[-1] == 3 else arr[..., 0]
    return torch.from_numpy((gray >= 128).astype(np.float32))[None]


def _labels(trained: Trained, spec: SampleSpec, num: int, class_label):
    """The labels [num] (``class_label``: an index or class name; default: the classes in turn)
    of a class-conditional model, None for an unconditional one."""
    y = None
    if class_label is not None:
        y = torch.full((num,), class_index(trained, class_label))
    return check_labels(trained, spec, num, y)


def _write(out: Path, name: str, images: torch.Tensor, settings: dict, nrow: int) -> None:
    u8 = viz.to_uint8(images)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=u8[2 if name == "inpainted" else 1 :])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"{name}.npz", buf.getvalue())
    viz.save_image_grid(images, out / f"{name}.png", nrow=nrow)
    atomic_write_bytes(out / f"{name}.json", json.dumps(settings, indent=2).encode())


def _prepare(checkpoint, out, name, seed, device, weights, num):
    out = check_output_folder(out, "--out")
    check_output_files(out, (f"{name}.png", f"{name}.npz", f"{name}.json"))
    check_device(device, "--device")
    check_seed(seed, "--seed")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num={num!r} must be an integer >= 1")
    return out, load_trained(checkpoint, weights, device)


@torch.no_grad()
def inpaint_to_folder(
    checkpoint,
    image,
    mask,
    out="inpaint-out",
    *,
    num: int = 8,
    steps: int = 100,
    jump_length: int = 10,
    resample: int = 5,
    class_label=None,
    guidance: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    seed: int = 0,
    weights: str = "ema",
    device: str = "cpu",
    log=print,
) -> dict:
    """``num`` inpaintings of ``image`` (kept where ``mask`` is white) written to ``out`` as
    ``inpainted.{png,npz,json}``; the settings are returned.  ValueError, with nothing written,
    for any input that is not allowed."""
    out, trained = _prepare(checkpoint, out, "inpainted", seed, device, weights, num)
    x0, m = image_for_model(image, trained), mask_for_model(mask, trained)
    spec = SampleSpec(
        "ddpm", steps, "trailing", guidance=guidance, guidance_interval=guidance_interval
    )
    ts = spec.timesteps(trained.schedule)
    y = _labels(trained, spec, num, class_label)
    den = trained.denoiser(
        "auto", labels=y, guidance=guidance, guidance_interval=spec.guidance_interval
    )
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((num, *trained.data_shape), generator=g)
    known = x0.expand(num, *x0.shape).contiguous()
    t0 = time.perf_counter()
    source = noise_source(None, device)
    noise = make_noise(source, seed, device)  # the steps' noise
    kw = dict(known=known, mask=m, jump_length=jump_length, resample=resample, generator=noise)
    with Progress(len(ts) * resample, "inpainting") as bar:
        kw["callback"] = lambda *_: bar.update(1)
        x = sample_inpaint(den, x_T.to(device), ts, **kw).cpu()
    settings = {
        "checkpoint": trained.path,
        "image": str(image),
        "mask": str(mask),
        "steps": steps,
        "jump_length": jump_length,
        "resample": resample,
        "class": None if y is None else int(y[0]),
        "guidance": guidance,
        "guidance_interval": spec.guidance_interval,
        "seed": seed,
        "noise": source,
        "model_calls_each": len(ts) * resample * (2 if guidance else 1),
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    shown = torch.cat([x0[None], (x0 * m - (1 - m))[None], x.clamp(-1, 1)])
    _write(out, "inpainted", shown, settings, nrow=len(shown))
    log(f"wrote {num} inpaintings to {out} ({settings['wall_seconds']:.1f} s)")
    return settings


@torch.no_grad()
def edit_to_folder(
    checkpoint,
    image,
    out="edit-out",
    *,
    strength: float = 0.5,
    num: int = 8,
    sampler: str = "ddim",
    steps: int = 50,
    class_label=None,
    guidance: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    seed: int = 0,
    weights: str = "ema",
    device: str = "cpu",
    log=print,
) -> dict:
    """SDEdit: ``num`` edits of ``image`` noised to ``strength`` and denoised with ``sampler``
    on the timesteps of ``steps`` at or below that level, written to ``out`` as
    ``edited.{png,npz,json}``; the settings are returned."""
    out, trained = _prepare(checkpoint, out, "edited", seed, device, weights, num)
    x0 = image_for_model(image, trained)
    spec = SampleSpec(
        sampler, steps, "trailing", guidance=guidance, guidance_interval=guidance_interval
    )
    ts = sdedit_timesteps(spec.timesteps(trained.schedule), trained.schedule.T, strength)
    y = _labels(trained, spec, num, class_label)
    den = trained.denoiser(
        "auto", labels=y, guidance=guidance, guidance_interval=spec.guidance_interval
    )
    g = torch.Generator().manual_seed(seed)
    x_start = noise_to(trained.schedule, x0.expand(num, *x0.shape), ts[0], g)
    t0 = time.perf_counter()
    with Progress(len(ts), "editing") as bar:
        step = lambda *_: bar.update(1)  # noqa: E731
        source = noise_source(None, device)
        noise = make_noise(source, seed, device)  # the steps' noise
        x = get_sampler(sampler)(den, x_start.to(device), ts, generator=noise, callback=step)
        x = x.cpu()
    settings = {
        "checkpoint": trained.path,
        "image": str(image),
        "strength": strength,
        "sampler": sampler,
        "timesteps": ts,
        "class": None if y is None else int(y[0]),
        "guidance": guidance,
        "guidance_interval": spec.guidance_interval,
        "seed": seed,
        "noise": source,
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    _write(out, "edited", torch.cat([x0[None], x.clamp(-1, 1)]), settings, nrow=num + 1)
    log(f"wrote {num} edits to {out} ({settings['wall_seconds']:.1f} s)")
    return settings
