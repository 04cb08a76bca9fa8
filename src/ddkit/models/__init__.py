"""Networks: the DDPM U-Net, a time-conditioned MLP, named presets and config (de)serialisation.

Every model is called as ``model(x_t, t) -> output`` with ``t`` a [N] long tensor of timestep
indices 0 .. T-1; the output has the shape of ``x_t`` (twice the channels with ``learn_sigma``).
Every config satisfies :class:`ModelConfig` (``input_shape()``, ``build()``).
"""

from __future__ import annotations

from .base import ModelConfig, count_parameters
from .layers import AttentionBlock, Downsample, ResBlock, Upsample, timestep_embedding
from .mlp import MLP, MLPConfig
from .presets import PRESETS, model_config_from_dict, model_config_to_dict, preset
from .unet import UNet, UNetConfig

__all__ = [
    "MLP",
    "PRESETS",
    "AttentionBlock",
    "Downsample",
    "MLPConfig",
    "ModelConfig",
    "ResBlock",
    "UNet",
    "UNetConfig",
    "Upsample",
    "count_parameters",
    "model_config_from_dict",
    "model_config_to_dict",
    "preset",
    "timestep_embedding",
]
