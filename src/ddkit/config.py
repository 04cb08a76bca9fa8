"""Training configuration: frozen dataclasses, read from TOML files plus ``key=value`` overrides,
saved inside every checkpoint and read back by sampling.  Unknown sections or keys are errors
naming the key and the allowed ones.  A config file has one table per section::

    [model]            # a preset name and/or the fields of UNetConfig / MLPConfig
    preset = "ddpm-28"
    dropout = 0.1
    [data]             # ddkit.data.DataConfig
    name = "fashion_mnist"
    [diffusion]        # DiffusionConfig
    [optim]            # OptimConfig
    [train]            # TrainSection
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .data import DataConfig
from .diffusion.losses import LossType, VarianceType
from .diffusion.parameterization import Prediction
from .models import MLPConfig, UNetConfig, model_config_from_dict, model_config_to_dict, preset
from .resources import MAX_SEED, check_regular_file

SCHEMA_VERSION = 1
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; larger ones are refused
MAX_KEY_DEPTH = 32  # dotted keys / table headers with more parts are refused before parsing
_INT64 = 2**63
_DEEP_KEY = re.compile(
    r"(?:(?:[A-Za-z0-9_-]+|\"[^\"\n]*\"|'[^'\n]*')[ \t]*\.[ \t]*){" + str(MAX_KEY_DEPTH) + ",}"
)
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 60, 60


class ConfigError(ValueError):
    """A configuration value that is not allowed (one line, naming the key)."""


class _NotToml(ConfigError):
    """Text that is not valid TOML."""


def short(value) -> str:
    """``repr(value)`` cut to a short line (deeply nested or long values are abbreviated)."""
    return _SHORT.repr(value)


def _choice(key: str, value, allowed) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(
            f"{key}={short(value)} is not allowed; allowed: {', '.join(map(str, allowed))}"
        )


def _positive(key: str, value, *, integer: bool = False, zero_ok: bool = False) -> None:
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}={short(value)} must be an integer")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(
            f"{key}={short(value)} must be a finite number {'>= 0' if zero_ok else '> 0'}"
        )


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process and what the network learns."""

    schedule: str = "linear"  # linear | cosine
    T: int = 1000
    zero_terminal_snr: bool = False
    prediction: str = "eps"  # eps | x0 | v
    loss: str = "simple"  # simple | vlb | hybrid
    variance: str = "fixed_small"  # reverse variance for the bound; learned_range needs learn_sigma
    timestep_sampler: str = "uniform"  # uniform | loss_second_moment

    def __post_init__(self):
        _choice("diffusion.schedule", self.schedule, ("linear", "cosine"))
        _positive("diffusion.T", self.T, integer=True)
        Prediction.parse(self.prediction)
        LossType.parse(self.loss)
        VarianceType.parse(self.variance)
        _choice(
            "diffusion.timestep_sampler", self.timestep_sampler, ("uniform", "loss_second_moment")
        )
        if self.loss == "simple" and self.variance == "learned_range":
            raise ConfigError("diffusion.variance='learned_range' needs loss 'hybrid' or 'vlb'")

    def make_schedule(self):
        """The :class:`NoiseSchedule` these settings describe (schedule, T, terminal SNR)."""
        from .diffusion.schedule import NoiseSchedule

        return NoiseSchedule.make(self.schedule, self.T, zero_terminal_snr=self.zero_terminal_snr)


LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer, learning-rate schedule, gradient clipping and EMA of the weights."""

    name: str = "adam"  # adam | adamw
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 5000  # linear warm-up of the learning rate from 0
    lr_schedule: str = "constant"  # after warm-up: constant | cosine | linear decay to min_lr
    min_lr: float = 0.0  # where a decaying schedule ends, at train.max_steps
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay_k = min(ema_decay, (1 + k) / (10 + k))

    def __post_init__(self):
        _choice("optim.name", self.name, ("adam", "adamw"))
        _positive("optim.lr", self.lr)
        _positive("optim.eps", self.eps)
        _positive("optim.weight_decay", self.weight_decay, zero_ok=True)
        _positive("optim.warmup_steps", self.warmup_steps, integer=True, zero_ok=True)
        _choice("optim.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _positive("optim.min_lr", self.min_lr, zero_ok=True)
        if self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr={self.min_lr!r} must not exceed optim.lr={self.lr!r}")
        _positive("optim.grad_clip", self.grad_clip, zero_ok=True)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas={self.betas!r} must be two numbers in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay={self.ema_decay!r} must lie in [0, 1)")


@dataclass(frozen=True)
class TrainSection:
    """The training loop: steps, batch, seed, run folder, device, logs, checkpoints, samples."""

    max_steps: int = 0  # required: the number of optimizer steps
    batch_size: int = 128  # global batch (over all ranks and accumulation micro-batches)
    grad_accum: int = 1
    seed: int = 0
    out_dir: str = "runs/ddkit"
    init_from: str = ""  # a checkpoint (file or run folder) whose EMA weights start the model
    precision: str = "auto"  # auto (bf16 autocast on a bf16-capable GPU, else fp32) | fp32 | bf16
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile the training forward (and so its backward)
    log_every: int = 50
    ckpt_every: int = 1000
    keep_last: int = 3
    sample_every: int = 1000  # 0 disables periodic sample grids
    sample_num: int = 64
    sample_sampler: str = "ddim"
    sample_steps: int = 50
    tensorboard: bool = True  # when the tensorboard package is installed
    progress: bool = True

    def __post_init__(self):
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int):
            raise ConfigError(f"train.max_steps={self.max_steps!r} must be an integer")
        if self.max_steps < 1:
            raise ConfigError("train.max_steps is required: set it to the number of steps (>= 1)")
        for name in ("batch_size", "grad_accum", "log_every", "ckpt_every", "keep_last"):
            _positive(f"train.{name}", getattr(self, name), integer=True)
        for name in ("sample_every", "sample_num", "sample_steps", "seed"):
            _positive(f"train.{name}", getattr(self, name), integer=True, zero_ok=True)
        if self.seed > MAX_SEED:
            raise ConfigError(f"train.seed={self.seed} must lie in 0..{MAX_SEED} (2**63 - 1)")
        for name in ("out_dir", "init_from"):
            value = getattr(self, name)
            if not isinstance(value, str) or "\0" in value:
                raise ConfigError(f"train.{name}={short(value)} must be a path (a string)")
        if not self.out_dir:
            raise ConfigError("train.out_dir must name a folder")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"train.batch_size={self.batch_size} must be divisible by "
                f"train.grad_accum={self.grad_accum}"
            )
        _choice("train.precision", self.precision, ("auto", "fp32", "bf16"))
        _choice("train.device", self.device, ("auto", "cpu", "cuda"))
        from .samplers import get_sampler

        get_sampler(self.sample_sampler)


@dataclass(frozen=True)
class Config:
    """A whole training config: model, data, diffusion, optim and train, checked together."""

    model: object  # a ddkit.models config (UNetConfig | MLPConfig)
    data: DataConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=lambda: TrainSection(max_steps=1))

    def __post_init__(self):
        learned = getattr(self.model, "learn_sigma", False)
        if (self.diffusion.variance == "learned_range") != learned:
            raise ConfigError(
                f"diffusion.variance={self.diffusion.variance!r} and model.learn_sigma={learned} "
                "disagree: learned_range variance needs learn_sigma = true and vice versa"
            )
        o, tr = self.optim, self.train
        if o.lr_schedule != "constant" and o.warmup_steps >= tr.max_steps:
            raise ConfigError(
                f"optim.warmup_steps={o.warmup_steps} leaves no steps for the "
                f"{o.lr_schedule} decay: it must be below train.max_steps={tr.max_steps}"
            )


_SECTIONS = {"data": DataConfig, "diffusion": DiffusionConfig, "optim": OptimConfig}
_SECTIONS["train"] = TrainSection
_MODEL_ARCHS = {"unet": UNetConfig, "mlp": MLPConfig}


def _coerce(key: str, hint, value):
    """``value`` (TOML / JSON) as the type ``hint`` (64-bit ints, finite floats), or ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(hint)):
            return None
        return _coerce(key, args[0], value)
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={short(value)} must be a list")
        args = typing.get_args(hint)
        inner = args[0] if args else object
        return tuple(_coerce(key, inner, v) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= _INT64:
            raise ConfigError(f"{key}={value} is out of range")
        return float(value)
    if hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is not bool and isinstance(value, bool))
    ):
        raise ConfigError(f"{key}={short(value)} must be a {hint.__name__}")
    if hint is int and not -_INT64 <= value < _INT64:
        raise ConfigError(f"{key}={value} is out of range (a 64-bit integer: below 2**63)")
    if hint is float and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number")
    return value


def _section(cls, name: str, values: dict):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown key {name}.{unknown[0]}; allowed: {', '.join(names)}")
    kwargs = {k: _coerce(f"{name}.{k}", hints[k], v) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None


def _model(values: dict):
    values = dict(values)
    name = values.pop("preset", None)
    if name is None:
        if "arch" not in values:
            raise ConfigError("model needs 'preset' or 'arch' (unet | mlp) and its fields")
        base = {}
    else:
        if not isinstance(name, str):
            raise ConfigError(f"model.preset={short(name)} must be a str")
        base = model_config_to_dict(preset(name))
        if "arch" in values and values["arch"] != base["arch"]:
            raise ConfigError(f"model.arch={short(values['arch'])} contradicts preset {name!r}")
    cls = _MODEL_ARCHS.get(values.get("arch", base.get("arch")))
    if cls is not None:  # field types checked here, so that model errors show short values
        hints = typing.get_type_hints(cls)
        for k, v in values.items():
            if k in hints:
                values[k] = _coerce(f"model.{k}", hints[k], v)
    try:
        return model_config_from_dict({**base, **values})
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None


def config_from_dict(d: dict) -> Config:
    """A :class:`Config` from nested dicts (a TOML document or a checkpoint's saved config)."""
    allowed = ("model", "data", "diffusion", "optim", "train")
    unknown = sorted(set(d) - set(allowed) - {"schema_version"})
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r}; allowed: {', '.join(allowed)}")
    for name in ("model", "data"):
        if name not in d:
            raise ConfigError(f"the config needs a [{name}] section")
    for name, v in d.items():
        if name != "schema_version" and not isinstance(v, dict):
            raise ConfigError(f"[{name}] must be a table of keys, got {short(v)}")
    sections = {name: _section(cls, name, d.get(name, {})) for name, cls in _SECTIONS.items()}
    try:
        return Config(model=_model(d["model"]), **sections)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def config_to_dict(cfg: Config) -> dict:
    """Plain, JSON-able nested dicts (tuples become lists); inverse of :func:`config_from_dict`."""

    def plain(obj):
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()
        }

    out = {"schema_version": SCHEMA_VERSION, "model": model_config_to_dict(cfg.model)}
    for name in _SECTIONS:
        out[name] = plain(getattr(cfg, name))
    return out


def _parse_toml(text: str, where: str) -> dict:
    """The TOML document ``text``; ConfigError naming ``where`` if invalid or nested too deep."""
    if _DEEP_KEY.search(text):
        raise ConfigError(f"{where}: a key is nested more than {MAX_KEY_DEPTH} levels deep")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _NotToml(f"{where} is not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where}: a value is nested too deeply") from None


def parse_override(text: str) -> tuple[list[str], object]:
    """``'optim.lr=1e-4'`` -> (['optim', 'lr'], 1e-4): a TOML value, or else the bare string."""
    if "=" not in text:
        raise ConfigError(f"override {short(text)} must look like section.key=value")
    key, raw = text.split("=", 1)
    path, raw = key.strip().split("."), raw.strip()
    if len(path) != 2 or not all(path):
        raise ConfigError(f"override key {short(key)} must be section.key (e.g. optim.lr)")
    try:
        value = _parse_toml(f"v = {raw}", f"override {key.strip()}")["v"]
    except _NotToml:
        value = raw
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={raw} is not a finite number")
    return path, value


def read_config_file(path: str | Path) -> dict:
    """The TOML document in the file ``path``; ConfigError naming the file when it is missing,
    not a regular file, larger than ``MAX_CONFIG_BYTES``, not UTF-8 or not valid TOML."""
    path = Path(path)
    try:
        check_regular_file(path, "config file")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"config file {str(path)!r}: {e.strerror or e}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {str(path)!r} is over {MAX_CONFIG_BYTES >> 10} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 (byte {e.start})") from None
    return _parse_toml(text, f"config file {str(path)!r}")


def load_config(files: list[str | Path] = (), overrides: list[str] = ()) -> Config:
    """Merge TOML ``files`` in order, then ``section.key=value`` ``overrides``."""
    merged: dict = {}
    for f in files:
        doc = read_config_file(f)
        for name, table in doc.items():
            if isinstance(table, dict) and isinstance(merged.get(name), dict):
                merged[name] = {**merged[name], **table}
            else:
                merged[name] = table
    for text in overrides:
        (section, key), value = parse_override(text)
        table = merged.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table of keys")
        table[key] = value
    return config_from_dict(merged)
