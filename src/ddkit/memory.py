"""Memory estimates of what a command will hold at its peak, computed from configs alone
(nothing is built or allocated): model parameters (and for training their gradients, Adam
moments and EMA copy), the activations of one batch, the sample buffers, the noise schedule's
tables and the in-memory data.  They are deliberately low (lower bounds of the largest terms), so
that a refusal by :func:`check_memory` means the run cannot fit.

    check_memory(sampling_memory(cfg.model, num=64, batch_size=64, T=1000), "cpu", "sampling", "")
"""

from __future__ import annotations

import math

from .models import MLPConfig, UNetConfig
from .resources import check_fits

FLOAT = 4  # bytes of a float32
MODULE_BYTES = 2048  # Python overhead of one nn.Module (its dicts), a low estimate
SCHEDULE_TABLES = 16  # float64 tables of length T in NoiseSchedule


def _prod(shape) -> int:
    return math.prod(int(s) for s in shape)


def _resblock(cin: int, cout: int, emb: int) -> int:
    skip = cin * cout + cout if cin != cout else 0
    return (
        2 * cin
        + 9 * cin * cout
        + cout
        + emb * cout
        + cout
        + 2 * cout
        + 9 * cout * cout
        + cout
        + skip
    )


def _attention(c: int) -> int:
    return 2 * c + 3 * c * c + 3 * c + c * c + c


def _unet(cfg: UNetConfig) -> tuple[int, int, int, int]:
    """(parameters, modules, floats of one block output summed over blocks, floats of the skips)
    of the U-Net, in closed form per level."""
    ch, emb, nrb = cfg.base_channels, 4 * cfg.base_channels, cfg.num_res_blocks
    widths = [ch * m for m in cfg.channel_mult]
    res = cfg.resolutions()
    last = len(widths) - 1
    params = ch * emb + emb + emb * emb + emb + cfg.in_channels * ch * 9 + ch
    params += (cfg.num_classes + 1) * emb if cfg.num_classes else 0
    modules = 8
    acts = ch * res[0] ** 2
    skips = ch * res[0] ** 2
    width = ch
    for level, (c, r) in enumerate(zip(widths, res)):
        attn = r in cfg.attention_resolutions
        params += _resblock(width, c, emb) + (nrb - 1) * _resblock(c, c, emb)
        params += nrb * _attention(c) if attn else 0
        modules += nrb * (8 + (4 if attn else 0))
        acts += nrb * c * r * r * (2 if attn else 1)
        skips += nrb * c * r * r
        width = c
        if level != last:
            params += 9 * c * c + c
            modules += 2
            acts += c * (r // 2) ** 2
            skips += c * (r // 2) ** 2
    c, r = widths[-1], res[-1]
    params += 2 * _resblock(c, c, emb) + _attention(c)
    modules += 20
    acts += 3 * c * r * r
    for level in reversed(range(len(widths))):
        c, r = widths[level], res[level]
        attn = r in cfg.attention_resolutions
        skip_last = widths[level - 1] if level > 0 else ch
        params += _resblock(width + c, c, emb) + (nrb - 1) * _resblock(2 * c, c, emb)
        params += _resblock(c + skip_last, c, emb)
        params += (nrb + 1) * _attention(c) if attn else 0
        modules += (nrb + 1) * (9 + (4 if attn else 0))
        acts += (nrb + 1) * c * r * r * (3 if attn else 2)
        width = c
        if level != 0:
            params += 9 * c * c + c
            modules += 2
            acts += c * (2 * r) ** 2
    params += 2 * width + 9 * width * cfg.out_channels + cfg.out_channels
    return params, modules, acts, skips


def _mlp(cfg: MLPConfig) -> tuple[int, int, int, int]:
    h = cfg.hidden
    block = 2 * h + 3 * (h * h + h)
    params = cfg.dim * h + h + cfg.time_dim * h + h + h * h + h + cfg.depth * block
    params += 2 * h + h * cfg.out_dim + cfg.out_dim
    params += (cfg.num_classes + 1) * h if cfg.num_classes else 0
    return params, 8 + 6 * cfg.depth, (4 + 4 * cfg.depth) * h + cfg.time_dim, 0


def model_size(cfg) -> tuple[int, int, int, int]:
    """(parameters, modules, activation floats per example summed over blocks, floats held for
    skip connections per example) of a model config, without building it."""
    if isinstance(cfg, UNetConfig):
        return _unet(cfg)
    if isinstance(cfg, MLPConfig):
        return _mlp(cfg)
    raise TypeError(f"no memory estimate for {type(cfg).__name__}")


def schedule_memory(T: int) -> int:
    """Bytes of a noise schedule's float64 tables (and the timestep sampler's state)."""
    return int(T) * 8 * SCHEDULE_TABLES


def timesteps_memory(T: int, steps: int, spacing: str) -> int:
    """Bytes for choosing ``steps`` timesteps of ``T``: log-SNR spacing compares every step with
    every index ([steps, T] float64)."""
    log_snr = isinstance(spacing, str) and spacing.startswith("log_snr")
    return int(steps) * int(T) * 8 if log_snr else int(steps) * 64


def sampling_memory(model_cfg, num: int, batch_size: int, T: int, *, outputs: int = 3) -> dict:
    """Estimated bytes of drawing ``num`` samples in batches of ``batch_size`` (name -> bytes):
    the model, the activations of one batch, ``outputs`` buffers of all samples (x_T, the
    output and its copies), the schedule."""
    params, modules, _, skips = model_size(model_cfg)
    shape = _prod(model_cfg.input_shape())
    width = max(shape, _widest(model_cfg))
    batch = min(int(num), int(batch_size))
    return {
        "model": params * FLOAT + modules * MODULE_BYTES,
        "activations": batch * (skips + 4 * width) * FLOAT,
        "samples": int(outputs) * int(num) * shape * FLOAT,
        "schedule": schedule_memory(T),
    }


def _widest(cfg) -> int:
    """Floats of the largest single activation of one example."""
    if isinstance(cfg, UNetConfig):
        return max(
            cfg.base_channels * m * r * r for m, r in zip(cfg.channel_mult, cfg.resolutions())
        )
    return max(cfg.hidden, cfg.time_dim)


# in-memory image sets: (examples in the largest split, native height and width)
_IMAGE_SETS = {"digits": (1797, 8), "mnist5k": (5000, 28), "fashion_mnist": (60000, 28)}


def data_memory(data_cfg, shape) -> int:
    """Bytes of the training data ``data_cfg`` in memory, the model's examples of ``shape``;
    for images at the data's own ``image_size`` and ``channels`` where they are set."""
    if data_cfg.is_toy:
        return int(data_cfg.num_samples) * _prod(shape) * (FLOAT + 8)
    channels = data_cfg.channels or shape[0]
    side = data_cfg.image_size
    one = channels * side * side if side else _prod(shape)
    n_side = _IMAGE_SETS.get(data_cfg.name)
    if n_side is None:  # folder / hf: their count is unknown here; decoding one takes 3 copies
        return one * 3
    n, native = n_side
    return n * (native * native + one)


def training_memory(cfg) -> dict:
    """Estimated bytes of training ``cfg`` (a ddkit Config), name -> bytes: the model with its
    gradients, Adam moments and EMA copy, a micro-batch's saved activations, the batch tensors,
    the data set, the schedule and the preview samples."""
    tr = cfg.train
    params, modules, acts, _ = model_size(cfg.model)
    shape = cfg.model.input_shape()
    micro = tr.batch_size // tr.grad_accum
    parts = {
        "model and optimizer": 5 * params * FLOAT + modules * MODULE_BYTES,
        "activations": micro * acts * 2 * FLOAT,
        "batch": 3 * tr.batch_size * _prod(shape) * FLOAT,
        "data": data_memory(cfg.data, shape),
        "schedule": schedule_memory(cfg.diffusion.T),
    }
    if tr.sample_every and tr.sample_num:
        preview = sampling_memory(cfg.model, tr.sample_num, tr.sample_num, cfg.diffusion.T)
        parts["preview samples"] = preview["samples"] + preview["activations"]
    return parts


def verify_memory(n_2d: int, n_64d: int, floor_reps: int, *, family_n: int = 0) -> dict:
    """Estimated bytes of ``ddkit verify`` at these sample sizes: the exact denoiser's and the
    statistics' per-component work on one sample set (a projection of every sample on each of up
    to 16 components' eigenvectors, float64), a few float64 copies of each sample set
    (reference, x_T, samples) and one row of metrics per noise-floor repetition;
    ``family_n``: samples per mixture of ``--family``, whose widest is 256-D."""
    return {
        "components": (int(n_64d) * 64 * 5 + int(family_n) * 256 * 16) * 8 * 2,
        "samples": (int(n_2d) * 2 + int(n_64d) * 64 + int(family_n) * 256) * 8 * 4,
        "noise floor": int(floor_reps) * 512,
    }


# the parts that live on the accelerator; every other part is host memory
ON_DEVICE = frozenset({"model", "activations", "model and optimizer", "batch", "probes"})


def check_memory(parts: dict[str, int], device, what: str, hint: str) -> None:
    """ValueError (see :func:`ddkit.resources.check_fits`) when the estimated ``parts`` do not
    fit: on the CPU all of them in host memory; on an accelerator those named in ``ON_DEVICE``
    in its memory and the rest (sample buffers, data, tables) in host memory."""
    if str(device).split(":")[0] == "cpu":
        check_fits(parts, "cpu", what, hint)
        return
    check_fits({k: v for k, v in parts.items() if k in ON_DEVICE}, device, what, hint)
    check_fits({k: v for k, v in parts.items() if k not in ON_DEVICE}, "cpu", what, hint)
