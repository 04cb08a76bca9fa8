"""Sampling from a trained checkpoint: the model, schedule and prediction type are read from the
checkpoint itself, so no training flags are needed.

    trained = load_trained("runs/fmnist/checkpoints")          # newest checkpoint, EMA weights
    x = generate(trained, SampleSpec("ddim", steps=50), num=64, seed=0)
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import Config, config_from_dict
from .diffusion.denoiser import Denoiser, check_clip_x0
from .diffusion.schedule import SPACINGS, NoiseSchedule
from .interop import InteropError, is_diffusers_folder, read_diffusers
from .memory import check_memory, model_size, schedule_memory
from .models import model_config_to_dict
from .progress import Progress
from .samplers import SAMPLERS, get_sampler

# sampler name -> the options a user may set, with their allowed values (None: any number >= 0)
SAMPLER_OPTIONS: dict[str, dict[str, tuple | None]] = {
    "ddpm": {"variance": ("fixed_small", "fixed_large", "tweedie", "tweedie_jacobian")},
    "ddim": {"eta": None},
}


class NonFiniteSamplesError(RuntimeError):
    """Sampling produced NaN or infinite values (broken weights, or a sampler setting that
    diverges); nothing is written."""


@dataclass(frozen=True)
class Trained:
    """A model with the config and schedule it was trained under: what :func:`generate` samples
    from.  :func:`load_trained` reads one from a checkpoint; a training run builds one from its
    in-memory model for its preview grids (``path`` is then the run folder)."""

    model: nn.Module
    config: Config
    schedule: NoiseSchedule
    step: int
    path: str
    weights: str  # "ema" | "online"

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape of one example, e.g. (C, H, W) or (dim,)."""
        return self.config.model.input_shape()

    @property
    def is_image(self) -> bool:
        """Whether the examples are images (C, H, W)."""
        return len(self.data_shape) == 3

    def denoiser(self, clip_x0: str = "auto") -> Denoiser:
        """The model as a :class:`Denoiser`; ``clip_x0`` as in :class:`SampleSpec`."""
        return make_denoiser(self.model, self.config, self.schedule, clip_x0=clip_x0)

    def sample(
        self,
        num: int,
        *,
        sampler: str = "ddim",
        steps: int = 50,
        spacing: str = "trailing",
        clip_x0: str = "auto",
        seed: int = 0,
        batch_size: int = 256,
        device: str | None = None,
        **options,
    ) -> torch.Tensor:
        """``num`` samples [num, *shape] in memory (float32, CPU), as ``ddkit sample`` draws
        them: ``sampler`` on ``steps`` timesteps of ``spacing``, sampler ``options`` such as
        ``eta=0.0`` (DDIM) or ``variance="fixed_large"`` (DDPM).  ``device``: where to run
        (the model moves there); default: where the model is."""
        if device is None:
            device = next(self.model.parameters()).device
        self.model.to(device)
        spec = SampleSpec(sampler, steps, spacing, options, clip_x0)
        return generate(self, spec, num, seed=seed, batch_size=batch_size, device=device)


def make_denoiser(
    model: nn.Module, cfg: Config, schedule: NoiseSchedule, clip_x0: str = "auto"
) -> Denoiser:
    """The sampling interface for a model of config ``cfg``: the prediction half of a
    learned-variance output; x0 clipped to [-1, 1] for image data (``clip_x0="auto"``), always
    ("on") or never ("off")."""
    check_clip_x0(clip_x0)
    shape = cfg.model.input_shape()
    fn = model
    if cfg.model.learn_sigma:
        channels = shape[0]

        def fn(x, t):
            return model(x, t)[:, :channels]

    clip = (-1.0, 1.0) if clip_x0 == "on" or (clip_x0 == "auto" and len(shape) == 3) else None
    return Denoiser(fn, schedule, cfg.diffusion.prediction, clip=clip)


def checkpoint_config(meta: dict) -> Config:
    """The config saved in a checkpoint's metadata, checked as a config file would be, and
    refused (naming the file) when its model would not fit memory, before anything is built."""
    try:
        cfg = config_from_dict(meta["config"])
    except ValueError as e:
        raise ckpt.CheckpointError(f"{meta['path']!r}: entry 'config': {e}") from None
    params = model_size(cfg.model)[0]
    check_memory(
        {"model": 4 * params, "schedule": schedule_memory(cfg.diffusion.T)},
        "cpu",
        f"the model of checkpoint {meta['path']!r}",
        "the checkpoint's config is not one this machine can hold",
    )
    return cfg


def load_trained(path: str | Path, weights: str = "ema", device: str = "cpu") -> Trained:
    """The model of a checkpoint file (or the newest in a run folder) with its EMA or online
    weights, in eval mode; or of a diffusers DDPM-family pipeline or UNet folder (its one set of
    weights, step 0), mapped exactly onto ddkit's U-Net (:mod:`ddkit.interop`)."""
    if weights not in ("ema", "online"):
        raise ValueError(f"weights={weights!r} is not allowed; allowed: ema, online")
    if is_diffusers_folder(path):
        return _load_diffusers(path, weights, device)
    tensors, meta = ckpt.load_checkpoint(path)
    cfg = checkpoint_config(meta)
    model = cfg.model.build()
    ckpt.check_model_tensors(meta, tensors, model, weights)
    model.load_state_dict(ckpt.model_weights(tensors, weights))
    model.to(device).eval()
    return Trained(
        model, cfg, cfg.diffusion.make_schedule(), int(meta["step"]), meta["path"], weights
    )


def _load_diffusers(path, weights: str, device: str) -> Trained:
    def fits(unet) -> int:  # before the weights are read: the model fits; their largest size
        if unet.in_channels not in (1, 3):
            raise InteropError(
                f"{str(path)!r}: in_channels={unet.in_channels}; ddkit's image models have 1 or "
                "3 channels (a latent-diffusion UNet needs its autoencoder, which ddkit lacks)"
            )
        params = model_size(unet)[0]
        check_memory({"model": 4 * params}, "cpu", f"the model of {str(path)!r}", hint)
        return 8 * params + 2**24  # float64 weights and a generous header

    hint = "its config is not one this machine can hold"
    unet, diffusion, state = read_diffusers(path, check=fits)
    where = f"the noise schedule of {str(path)!r}"
    check_memory({"schedule": schedule_memory(diffusion["T"])}, "cpu", where, hint)
    cfg = config_from_dict(
        {
            "model": model_config_to_dict(unet),
            # a diffusers folder names no data set
            "data": {"name": "memory", "image_size": unet.image_size, "channels": unet.in_channels},
            "diffusion": diffusion,
            "train": {"max_steps": 1},  # a diffusers folder records no training run
        }
    )
    model = unet.build()
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        what = (
            f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}, which it has no place for"
        )
        raise InteropError(
            f"{str(path)!r}: the weights do not fit the UNet its config describes: "
            f"it {what} (in ddkit's names)"
        )
    for name, t in state.items():  # the config is the weights' own: check it, cast float only
        if t.shape != own[name].shape or not t.is_floating_point():
            raise InteropError(
                f"{str(path)!r}: tensor {name!r} is {ckpt.describe(t)}; the UNet its config.json "
                f"describes has {ckpt.describe(own[name])}"
            )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    model.to(device).eval()
    return Trained(model, cfg, cfg.diffusion.make_schedule(), 0, str(path), weights)


@dataclass(frozen=True)
class SampleSpec:
    """A sampler, its number of timesteps, their spacing, its options and whether x0_hat is
    clamped to [-1, 1] at each step (``clip_x0``, one of ``denoiser.CLIP_X0``), validated."""

    sampler: str = "ddim"
    steps: int = 50
    spacing: str = "trailing"
    options: dict = field(default_factory=dict)
    clip_x0: str = "auto"

    def __post_init__(self):
        get_sampler(self.sampler)
        check_clip_x0(self.clip_x0)
        if self.spacing not in SPACINGS:
            raise ValueError(
                f"spacing {self.spacing!r} is not allowed; allowed: {', '.join(SPACINGS)}"
            )
        allowed = SAMPLER_OPTIONS.get(self.sampler, {})
        for k, v in self.options.items():
            if k not in allowed:
                names = ", ".join(allowed) or "none"
                raise ValueError(
                    f"sampler {self.sampler!r} takes no option {k!r}; it takes: {names}"
                )
            choices = allowed[k]
            if choices is None and not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"{k}={v!r} must be a number >= 0")
            if choices is not None and v not in choices:
                raise ValueError(f"{k}={v!r} is not allowed; allowed: {', '.join(choices)}")

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        """The decreasing timesteps of this spec on ``schedule`` (steps checked against T)."""
        if isinstance(self.steps, bool) or not isinstance(self.steps, int):
            raise ValueError(f"steps={self.steps!r} must be an integer")
        if not 1 <= self.steps <= schedule.T:
            raise ValueError(f"steps={self.steps} must lie in 1..{schedule.T} (the model's T)")
        return schedule.timesteps(self.steps, self.spacing)

    def nfe(self) -> int:
        """Model evaluations per sample."""
        return SAMPLERS[self.sampler].nfe(self.steps, **self.options)

    def as_dict(self) -> dict:
        """The spec as a JSON-able dict."""
        return asdict(self)


@torch.no_grad()
def generate(
    trained: Trained,
    spec: SampleSpec,
    num: int,
    *,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: str | None = None,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """``num`` samples [num, *shape] (float32, CPU).  All initial noise x_T is drawn first from
    one generator seeded with ``seed``, so deterministic samplers (DDIM eta=0, Heun, DPM-Solver++)
    give the same samples whatever the batch size; the noise stochastic samplers add inside is
    drawn from a generator seeded by (seed, batch index).  ``autocast``: a lower-precision dtype
    (e.g. torch.bfloat16) for the model calls, as in training; None runs them as they are.
    ``progress``: a name for the phase, shown with the steps done, rate and ETA when it runs over
    a few seconds (:class:`ddkit.progress.Progress`); None shows nothing.

    ValueError before any model call when an input is not allowed (``seed`` outside
    0..2**63-1, a non-finite option) or when the samples would not fit in the device's memory;
    :class:`NonFiniteSamplesError` as soon as a batch holds a NaN or infinite sample."""
    import math

    from .memory import check_memory, sampling_memory, timesteps_memory
    from .resources import check_seed

    for name, v in (("num", num), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be an integer >= 1")
    check_seed(seed, "seed")
    for k, v in spec.options.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{k}={v!r} must be a finite number")
    T = trained.schedule.T
    parts = sampling_memory(trained.config.model, num, batch_size, T)
    parts["timesteps"] = timesteps_memory(T, spec.steps, spec.spacing)
    what = f"sampling {num} x {list(trained.data_shape)} in batches of {batch_size}"
    check_memory(parts, device, what, "lower the number of samples (--num) or --batch-size")
    ts = spec.timesteps(trained.schedule)
    sampler = get_sampler(spec.sampler)
    den = trained.denoiser(spec.clip_x0)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((num, *trained.data_shape), generator=g)
    device_type = torch.device(device).type
    out = []
    batches = range(0, num, batch_size)
    bar = Progress(len(batches) * len(ts), progress or "", enabled=progress is not None)
    try:
        for b, start in enumerate(batches):
            out.append(
                _batch(
                    sampler,
                    den,
                    x_T[start : start + batch_size],
                    ts,
                    spec,
                    b,
                    len(batches),
                    seed=seed,
                    device=device,
                    device_type=device_type,
                    autocast=autocast,
                    callback=lambda *_: bar.update(1),
                )
            )
    finally:
        bar.close()
    return torch.cat(out)


def _batch(
    sampler, den, x, ts, spec, b, n_batches, *, seed, device, device_type, autocast, callback
) -> torch.Tensor:
    """Batch ``b`` of :func:`generate`: its own generator, the sampler, the finiteness check."""
    gb = torch.Generator(device=device).manual_seed((seed * 1_000_003 + b + 1) % 2**64)
    x = x.to(device)
    amp = torch.autocast(device_type, dtype=autocast) if autocast is not None else None
    with amp if amp is not None else contextlib.nullcontext():
        x = sampler(den, x, ts, generator=gb, callback=callback, **spec.options)
    bad = int((~torch.isfinite(x).flatten(1).all(1)).sum())
    if bad:
        raise NonFiniteSamplesError(
            f"{bad} of {len(x)} samples (batch {b + 1} of {n_batches}) are NaN or "
            f"infinite with sampler {spec.sampler}, {spec.steps} {spec.spacing} steps, "
            f"options {spec.options}, clip_x0 {spec.clip_x0}: the weights are broken (NaN "
            "or huge values) or the sampler diverges with these settings"
        )
    return x.float().cpu()
