"""``ddkit export``: a trained U-Net as a diffusers pipeline folder.

The folder (``model_index.json``, ``unet/``, ``scheduler/``) loads offline with
``DDPMPipeline.from_pretrained`` (or ``DDIMPipeline`` for ``sampler="ddim"``), and its UNet
computes the same function as ddkit's; reading it back with :func:`ddkit.trained.load_trained`
gives bit-identical weights.  See :mod:`ddkit.interop`.
"""

from __future__ import annotations

from pathlib import Path

from .config import config_to_dict
from .interop import InteropError, write_diffusers
from .models import UNetConfig
from .resources import check_output_folder
from .trained import load_trained


def export_diffusers(
    checkpoint: str | Path, out: str | Path, *, weights: str = "ema", sampler: str = "ddpm"
) -> Path:
    """Write the U-Net of ``checkpoint`` (a file or run folder; its EMA or online ``weights``)
    as a diffusers pipeline folder ``out``, which must not exist or be empty.  ValueError,
    with nothing written, for a model diffusers' UNet2DModel cannot express."""
    out = check_output_folder(out, "out")  # can be a folder (before the checkpoint is read)
    if out.exists() and any(out.iterdir()):
        raise InteropError(f"--out {str(out)!r} exists and is not an empty folder")
    if sampler not in ("ddpm", "ddim"):
        raise InteropError(f"--sampler {sampler!r} is not allowed; allowed: ddpm, ddim")
    trained = load_trained(checkpoint, weights)
    cfg = trained.config.model
    if not isinstance(cfg, UNetConfig):
        raise InteropError(
            f"{trained.path!r} holds a {type(cfg).__name__}; only U-Nets export to diffusers"
        )
    diffusion = config_to_dict(trained.config)["diffusion"]
    state = trained.model.state_dict()
    return write_diffusers(cfg, diffusion, state, out, sampler=sampler)
