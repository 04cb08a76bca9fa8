"""Sampling from a trained checkpoint: the model, schedule and prediction type are read from the
checkpoint itself, so no training flags are needed.

    trained = load_trained("runs/fmnist/checkpoints")          # newest checkpoint, EMA weights
    x = generate(trained, SampleSpec("ddim", steps=50), num=64, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import Config, config_from_dict
from .diffusion.denoiser import Denoiser, check_clip_x0
from .diffusion.guidance import guided
from .diffusion.schedule import NoiseSchedule
from .generation import SAMPLER_OPTIONS, NonFiniteSamplesError, SampleSpec, generate
from .interop import InteropError, is_diffusers_folder, read_diffusers
from .memory import check_memory, model_size, schedule_memory
from .models import model_config_to_dict

__all__ = [  # SampleSpec and generate live in ddkit.generation; importable from here too
    "SAMPLER_OPTIONS",
    "NonFiniteSamplesError",
    "SampleSpec",
    "Trained",
    "checkpoint_config",
    "generate",
    "load_trained",
    "make_denoiser",
]


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
    class_names: tuple[str, ...] | None = None  # of a class-conditional model

    @property
    def num_classes(self) -> int:
        """The classes of a class-conditional model; 0 for an unconditional one."""
        return self.config.model.num_classes

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape of one example, e.g. (C, H, W) or (dim,)."""
        return self.config.model.input_shape()

    @property
    def is_image(self) -> bool:
        """Whether the examples are images (C, H, W)."""
        return len(self.data_shape) == 3

    def denoiser(
        self,
        clip_x0: str = "auto",
        *,
        labels: torch.Tensor | None = None,
        guidance: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
    ) -> Denoiser:
        """The model as a :class:`Denoiser`; ``clip_x0`` as in :class:`SampleSpec`; a
        class-conditional model's ``labels`` and guidance as in :func:`make_denoiser`."""
        return make_denoiser(
            self.model,
            self.config,
            self.schedule,
            clip_x0,
            labels=labels,
            guidance=guidance,
            guidance_interval=guidance_interval,
        )

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
        labels=None,
        guidance: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
        noise: str | None = None,
        **options,
    ) -> torch.Tensor:
        """``num`` samples [num, *shape] in memory (float32, CPU), as ``ddkit sample`` draws
        them: ``sampler`` on ``steps`` timesteps of ``spacing``, sampler ``options`` such as
        ``eta=0.0`` (DDIM) or ``variance="fixed_large"`` (DDPM).  ``device``: where to run
        (the model moves there); default: where the model is.  A class-conditional model takes
        ``labels`` [num] (default: the classes in turn) and classifier-free ``guidance``.
        ``noise``: "philox" or "torch", the stochastic samplers' noise source (default by
        device: :func:`ddkit.generation.noise_source`)."""
        if device is None:
            device = next(self.model.parameters()).device
        self.model.to(device)
        spec = SampleSpec(sampler, steps, spacing, options, clip_x0, guidance, guidance_interval)
        return generate(
            self,
            spec,
            num,
            seed=seed,
            batch_size=batch_size,
            device=device,
            labels=labels,
            noise=noise,
        )


def make_denoiser(
    model: nn.Module,
    cfg: Config,
    schedule: NoiseSchedule,
    clip_x0: str = "auto",
    *,
    labels: torch.Tensor | None = None,
    guidance: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
) -> Denoiser:
    """The sampling interface for a model of config ``cfg``: the prediction half of a
    learned-variance output; x0 clipped to [-1, 1] for image data (``clip_x0="auto"``), always
    ("on") or never ("off").  A class-conditional model is conditioned on ``labels`` [N] (the
    null label ``num_classes``: unconditional) with classifier-free ``guidance`` (scale w, applied
    inside ``guidance_interval`` of noise levels: :func:`ddkit.diffusion.guidance.guided`)."""
    check_clip_x0(clip_x0)
    shape = cfg.model.input_shape()
    fn = model
    if cfg.model.num_classes:
        if labels is None:
            raise ValueError("a class-conditional model needs labels to sample")
        fn = guided(
            model,
            labels,
            cfg.model.num_classes,
            scale=guidance,
            interval=guidance_interval,
            schedule=schedule,
        )
    elif labels is not None or guidance:
        raise ValueError("this model is unconditional (num_classes = 0): no labels or guidance")
    net = fn
    if cfg.model.learn_sigma:
        channels = shape[0]

        def fn(x, t):
            return net(x, t)[:, :channels]

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
    names = ckpt.read_class_names(meta, cfg.model.num_classes)
    schedule = cfg.diffusion.make_schedule()
    return Trained(model, cfg, schedule, int(meta["step"]), meta["path"], weights, names)


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
