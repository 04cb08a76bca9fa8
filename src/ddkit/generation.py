"""Drawing samples from a :class:`ddkit.trained.Trained` model: :class:`SampleSpec` (a sampler,
its steps, spacing and options, guidance) and :func:`generate`, which ``ddkit sample``, ``ddkit
eval`` and training's preview grids all use.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field

import torch

from .diffusion.denoiser import check_clip_x0
from .diffusion.guidance import check_guidance
from .diffusion.schedule import SPACINGS, NoiseSchedule
from .noise import PhiloxNoise
from .progress import Progress
from .samplers import SAMPLERS, get_sampler
from .samplers.ode import INTERPOLATIONS

# sampler name -> the options a user may set, with their allowed values (None: any number >= 0;
# int: any integer >= 1; float: any finite number > 0)
SAMPLER_OPTIONS: dict[str, dict[str, tuple | type | None]] = {
    "ddpm": {"variance": ("fixed_small", "fixed_large", "tweedie", "tweedie_jacobian")},
    "ddim": {"eta": None},
    "adams2": {
        "last": ("ode", "posterior"),
        "tail": int,
        "krylov": int,
        "interpolate": INTERPOLATIONS,
        "limiter": float,
    },
    "adams3": {
        "last": ("ode", "posterior"),
        "tail": int,
        "krylov": int,
        "interpolate": INTERPOLATIONS,
        "limiter": float,
    },
}

# options that shape only how an ODE sampler ends (a grid tuned for the ODE serves any of them)
DRAW_OPTIONS = ("last", "tail", "krylov")


# where the noise that stochastic samplers add comes from (:func:`generate`)
NOISE_SOURCES = ("philox", "torch")


def noise_source(noise: str | None, device) -> str:
    """``noise`` checked against :data:`NOISE_SOURCES`, or for None the default of ``device``:
    "philox" (:class:`ddkit.noise.PhiloxNoise`, its C kernel) on a CPU, "torch" (a
    ``torch.Generator`` on the device, fast there) elsewhere."""
    if noise is None:
        return "philox" if torch.device(device).type == "cpu" else "torch"
    if noise not in NOISE_SOURCES:
        raise ValueError(f"noise {noise!r} is not allowed; allowed: {', '.join(NOISE_SOURCES)}")
    return noise


def make_noise(noise: str, seed: int, device) -> PhiloxNoise | torch.Generator:
    """The source :func:`noise_source` names, seeded with ``seed``, for samples on ``device``."""
    if noise == "philox":
        return PhiloxNoise(seed)
    return torch.Generator(device=device).manual_seed(seed)


class NonFiniteSamplesError(RuntimeError):
    """Sampling produced NaN or infinite values (broken weights, or a sampler setting that
    diverges); nothing is written."""


@dataclass(frozen=True)
class SampleSpec:
    """A sampler, its number of timesteps, their spacing (a name in ``SPACINGS`` or the
    timesteps themselves), its options and whether x0_hat is clamped to [-1, 1] at each step
    (``clip_x0``, one of ``denoiser.CLIP_X0``), validated.
    Class-conditional models: classifier-free ``guidance`` scale w >= 0 (0: the conditional
    model) and the ``guidance_interval`` (low, high] of noise levels sigma where it applies
    (None: everywhere); :mod:`ddkit.diffusion.guidance`."""

    sampler: str = "ddim"
    steps: int = 50
    spacing: str | tuple[int, ...] = "trailing"
    options: dict = field(default_factory=dict)
    clip_x0: str = "auto"
    guidance: float = 0.0
    guidance_interval: tuple[float, float] | None = None

    def __post_init__(self):
        get_sampler(self.sampler)
        check_clip_x0(self.clip_x0)
        scale, interval = check_guidance(self.guidance, self.guidance_interval)
        object.__setattr__(self, "guidance", scale)
        object.__setattr__(self, "guidance_interval", interval)
        if not isinstance(self.spacing, str):  # an explicit grid, e.g. a tuned one
            grid = tuple(self.spacing)
            if len(grid) != self.steps:
                raise ValueError(f"a grid of {len(grid)} timesteps given for steps={self.steps}")
            object.__setattr__(self, "spacing", grid)
        elif self.spacing not in SPACINGS:
            raise ValueError(
                f"spacing {self.spacing!r} is not allowed; allowed: {', '.join(SPACINGS)} "
                "or a list of timesteps"
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
            if choices is int:
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"{k}={v!r} must be an integer >= 1")
            elif choices is float:
                number = isinstance(v, (int, float)) and not isinstance(v, bool)
                if not (number and 0 < v < math.inf):
                    raise ValueError(f"{k}={v!r} must be a finite number > 0")
            elif choices is not None and v not in choices:
                raise ValueError(f"{k}={v!r} is not allowed; allowed: {', '.join(choices)}")
        if self.options.get("last", "ode") == "ode":
            for k in ("tail", "krylov"):
                if self.options.get(k, 1) != 1:
                    raise ValueError(f"{k}={self.options[k]} takes last='posterior' (a draw)")

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        """The decreasing timesteps of this spec on ``schedule`` (steps checked against T)."""
        if isinstance(self.steps, bool) or not isinstance(self.steps, int):
            raise ValueError(f"steps={self.steps!r} must be an integer")
        if not 1 <= self.steps <= schedule.T:
            raise ValueError(f"steps={self.steps} must lie in 1..{schedule.T} (the model's T)")
        return schedule.timesteps(self.steps, self.spacing)

    def nfe(self) -> int:
        """Model evaluations per sample, at most: a guided step evaluates both branches (counted
        twice, also for steps that a guidance interval leaves unguided)."""
        calls = SAMPLERS[self.sampler].nfe(self.steps, **self.options)
        return 2 * calls if self.guidance else calls

    def as_dict(self) -> dict:
        """The spec as a JSON-able dict."""
        return asdict(self)


def check_labels(trained, spec: SampleSpec, num: int, labels) -> torch.Tensor | None:
    """The class labels [num] to sample a class-conditional ``trained`` model with: ``labels``
    (class indices 0..C-1, or C for the unconditional branch), by default balanced blocks
    (i * C // num, one row per class in a grid of C rows).  None for an unconditional model.
    ValueError for labels or guidance the model cannot take."""
    C = trained.config.model.num_classes
    if not C:
        if labels is not None or spec.guidance:
            what = "labels" if labels is not None else f"guidance {spec.guidance}"
            raise ValueError(
                f"{what} given, but the model is unconditional (trained without classes)"
            )
        return None
    untrained = trained.config.model.p_uncond == 0  # no label dropout: no unconditional branch
    if spec.guidance and untrained:
        raise ValueError(
            f"guidance {spec.guidance} needs an unconditional branch, but the model was trained "
            "with p_uncond = 0 (no label dropout); sample with guidance 0"
        )
    if labels is None:
        return torch.arange(num) * C // num
    y = torch.as_tensor(labels)
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (num,):
        raise ValueError(
            f"labels must be {num} integer class indices, got {y.dtype} {tuple(y.shape)}"
        )
    y = y.long()
    bad = y[(y < 0) | (y > C)]
    if len(bad):
        raise ValueError(
            f"label {int(bad[0])} is not a class of the model: allowed 0..{C - 1} "
            f"({C} = the unconditional branch)"
        )
    if untrained and bool((y == C).any()):
        raise ValueError(
            f"label {C} asks for the unconditional branch, but the model was trained with "
            f"p_uncond = 0 (no label dropout): allowed 0..{C - 1}"
        )
    return y


def class_index(trained, value) -> int:
    """The class index that ``value`` names for a class-conditional ``trained`` model: an index
    0..C-1 (int or digit string) or one of its class names; ValueError naming the allowed ones."""
    C = trained.config.model.num_classes
    if not C:
        raise ValueError(f"class {value!r} given, but the model is unconditional")
    names = list(trained.class_names or [str(i) for i in range(C)])
    if isinstance(value, str) and value in names:
        return names.index(value)
    try:
        i = int(value)
    except (TypeError, ValueError):
        i = -1
    if isinstance(value, bool) or str(value).strip() != str(i) or not 0 <= i < C:
        shown = ", ".join(f"{k}={n}" for k, n in enumerate(names[:20]))
        raise ValueError(f"class {value!r} is not one of the model's {C} classes: {shown}")
    return i


@torch.no_grad()
def generate(
    trained,
    spec: SampleSpec,
    num: int,
    *,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: str | None = None,
    autocast: torch.dtype | None = None,
    labels=None,
    noise: str | None = None,
) -> torch.Tensor:
    """``num`` samples [num, *shape] (float32, CPU).  All initial noise x_T is drawn first from
    one torch generator seeded with ``seed``, so deterministic samplers (DDIM eta=0, Heun,
    DPM-Solver++) give the same samples whatever the batch size and ``noise``; the noise
    stochastic samplers add inside is drawn from a source seeded by (seed, batch index), of the
    kind ``noise`` names (:func:`noise_source`; default: Philox on a CPU, torch's generator on
    another device).  ``autocast``: a lower-precision dtype
    (e.g. torch.bfloat16) for the model calls, as in training; None runs them as they are.
    ``progress``: a name for the phase, shown with the steps done, rate and ETA when it runs over
    a few seconds (:class:`ddkit.progress.Progress`); None shows nothing.  ``labels``: the
    classes [num] of a class-conditional model's samples (:func:`check_labels`).

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
    noise = noise_source(noise, device)
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
    y = check_labels(trained, spec, num, labels)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((num, *trained.data_shape), generator=g)
    device_type = torch.device(device).type
    out = []
    batches = range(0, num, batch_size)
    bar = Progress(len(batches) * len(ts), progress or "", enabled=progress is not None)
    try:
        for b, start in enumerate(batches):
            den = trained.denoiser(
                spec.clip_x0,
                labels=None if y is None else y[start : start + batch_size],
                guidance=spec.guidance,
                guidance_interval=spec.guidance_interval,
            )
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
                    noise=noise,
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
    sampler, den, x, ts, spec, b, n_batches, *, seed, noise, device, device_type, autocast, callback
) -> torch.Tensor:
    """Batch ``b`` of :func:`generate`: its own noise source, the sampler, the finiteness check."""
    gb = make_noise(noise, (seed * 1_000_003 + b + 1) % 2**64, device)
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
