"""Named model configs and their (de)serialisation as JSON-able dicts."""

from __future__ import annotations

import dataclasses

from .base import ModelConfig
from .mlp import MLPConfig
from .unet import UNetConfig

PRESETS: dict[str, ModelConfig] = {
    # Ho et al. 2020, CIFAR-10: 35,746,307 parameters
    "ddpm-cifar10": UNetConfig(
        image_size=32,
        in_channels=3,
        base_channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16,),
        dropout=0.1,
    ),
    # 28x28 grayscale (MNIST, Fashion-MNIST): levels 28/14/7 with 32/64/64 channels, attention at
    # 7x7 and in the middle; 1,623,169 parameters, ~0.55 GFLOP per image forward
    "ddpm-28": UNetConfig(
        image_size=28,
        in_channels=1,
        base_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(7,),
        dropout=0.1,
        groups=8,
    ),
    # 8x8 grayscale (sklearn digits): levels 8/4 with 32/64 channels, attention at 4x4;
    # 1,001,729 parameters
    "ddpm-8": UNetConfig(
        image_size=8,
        in_channels=1,
        base_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=2,
        attention_resolutions=(4,),
        dropout=0.1,
        groups=8,
    ),
    # 2-D toy data
    "mlp-2d": MLPConfig(dim=2, hidden=256, depth=4, time_dim=128, dropout=0.0),
}

_ARCHS: dict[str, type] = {"unet": UNetConfig, "mlp": MLPConfig}


def preset(name: str) -> ModelConfig:
    """The named config (see ``PRESETS``); unknown names raise ValueError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}"
        ) from None


def model_config_to_dict(config: ModelConfig) -> dict:
    """A JSON-able dict of ``config`` with ``"arch": "unet" | "mlp"`` (tuples become lists)."""
    for arch, cls in _ARCHS.items():
        if type(config) is cls:
            fields = {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(config).items()
            }
            return {"arch": arch, **fields}
    raise ValueError(
        f"not a model config: {type(config).__name__}; expected UNetConfig or MLPConfig"
    )


def model_config_from_dict(d: dict) -> ModelConfig:
    """Inverse of :func:`model_config_to_dict`; unknown arch or keys raise ValueError naming
    them."""
    if not isinstance(d, dict):
        raise ValueError(f"a model config dict is expected, got {type(d).__name__}")
    d = dict(d)
    arch = d.pop("arch", None)
    if arch not in _ARCHS:
        raise ValueError(f"unknown model arch {arch!r}; choose one of {sorted(_ARCHS)}")
    cls = _ARCHS[arch]
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {arch} config keys {unknown}; allowed keys are {allowed}")
    try:
        return cls(**d)
    except TypeError as err:  # a required field missing (image_size)
        raise ValueError(f"incomplete {arch} config {d}: {err}") from None
