"""diffusers folders: reading a DDPM-family pipeline (or UNet) folder into ddkit's U-Net, and
writing ddkit's U-Net as a pipeline folder that ``DDPMPipeline.from_pretrained`` loads offline.

A pipeline folder holds ``model_index.json``, ``unet/config.json`` with
``unet/diffusion_pytorch_model.safetensors`` (or ``.bin``) and ``scheduler/scheduler_config.json``.
A UNet folder alone is read when a ``scheduler/`` folder lies beside it.  Every file is treated
as hostile: configs are size-bounded JSON read from regular files, weights are safetensors
(nothing unpickled) or a ``.bin`` read with ``torch.load(weights_only=True)``; nothing in them
runs code.  Reading needs no diffusers installation; writing neither.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..models import UNetConfig
from ..paths import DiskFullError, atomic_write_bytes
from ..resources import NotRegularFileError, open_regular
from .scheduler import diffusion_from_scheduler, scheduler_to_diffusers
from .unet import (
    InteropError,
    short,
    state_from_diffusers,
    state_to_diffusers,
    unet_from_diffusers,
    unet_to_diffusers,
)

WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
MAX_JSON = 1 << 20
DIFFUSERS_VERSION = "0.42.0"  # the release whose formats these files follow


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a diffusers pipeline folder (``model_index.json``) or model folder
    (a ``config.json`` naming its ``_class_name``; a ddkit run's config.json names none)."""
    p = Path(path)
    if not p.is_dir() or _holds_checkpoints(p):
        return False
    if (p / "model_index.json").is_file():
        return True
    try:
        return "_class_name" in _json(p / "config.json")
    except InteropError:
        return False


def _holds_checkpoints(p: Path) -> bool:
    """Whether the folder holds ddkit checkpoints (a run folder, or its checkpoints/)."""
    return any(p.glob("ckpt-*.safetensors")) or any(p.glob("checkpoints/ckpt-*.safetensors"))


def read_diffusers(
    path: str | os.PathLike, check=None
) -> tuple[UNetConfig, dict, dict[str, torch.Tensor]]:
    """(ddkit U-Net config, ddkit ``[diffusion]`` dict, ddkit U-Net state_dict) of a diffusers
    pipeline or UNet folder; InteropError (one line, naming the file and key) otherwise.
    ``check(config)``, run before the weights are read, may refuse the model (ValueError) and
    returns the largest weights file in bytes it accepts."""
    root = Path(path).resolve()
    if (root / "model_index.json").is_file():
        index = _json(root / "model_index.json")
        if index.get("_class_name") not in ("DDPMPipeline", "DDIMPipeline"):
            raise InteropError(
                f"{str(root / 'model_index.json')!r}: _class_name="
                f"{short(index.get('_class_name'))} is not DDPMPipeline or DDIMPipeline "
                "(ddkit reads pixel-space DDPM-family pipelines)"
            )
        unet_entry = index.get("unet")
        if not (isinstance(unet_entry, list) and unet_entry[-1:] == ["UNet2DModel"]):
            raise InteropError(
                f"{str(root / 'model_index.json')!r}: its unet is {unet_entry!r}, not a "
                "UNet2DModel (ddkit reads DDPM-family pipelines)"
            )
        unet_dir, sched_dir = root / "unet", root / "scheduler"
    else:
        unet_dir, sched_dir = root, root.parent / "scheduler"
    cfg_path = unet_dir / "config.json"
    cfg = unet_from_diffusers(_json(cfg_path), str(cfg_path))
    sched_path = sched_dir / "scheduler_config.json"
    if not sched_path.is_file():
        raise InteropError(
            f"no scheduler config at {str(sched_path)!r}: the noise schedule is part of the model; "
            "give the pipeline folder"
        )
    diffusion = diffusion_from_scheduler(
        _json(sched_path), learned_variance=cfg.learn_sigma, where=str(sched_path)
    )
    limit = check(cfg) if check is not None else None
    weights = _weights(unet_dir, limit)
    state = state_from_diffusers(cfg, weights, str(unet_dir))
    return cfg, diffusion, state


def write_diffusers(
    cfg: UNetConfig, diffusion: dict, state: dict, out: str | os.PathLike, *, sampler: str = "ddpm"
) -> Path:
    """Write a diffusers pipeline folder (``DDPMPipeline`` or, for ``sampler="ddim"``,
    ``DDIMPipeline``) of ddkit's U-Net ``cfg`` with weights ``state``; ``out`` must not exist
    or be an empty folder.  The folder is built beside ``out`` and renamed into place, so a
    failure leaves nothing."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InteropError(f"--out {str(out)!r} exists and is not an empty folder")
    if sampler not in ("ddpm", "ddim"):
        raise InteropError(f"sampler {sampler!r} is not allowed; allowed: ddpm, ddim")
    if sampler == "ddim" and cfg.learn_sigma:
        raise InteropError(
            "a model with a learned variance exports as a DDPMPipeline only: diffusers' "
            "DDIMScheduler takes no variance output"
        )
    unet_cfg = unet_to_diffusers(cfg)
    pipeline, scheduler = (
        ("DDPMPipeline", "DDPMScheduler")
        if sampler == "ddpm"
        else ("DDIMPipeline", "DDIMScheduler")
    )
    sched_cfg = scheduler_to_diffusers(diffusion, image=True, cls=scheduler)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise InteropError(f"cannot write {str(out)!r}: {e.strerror or e}") from None
    try:
        index = {
            "_class_name": pipeline,
            "_diffusers_version": DIFFUSERS_VERSION,
            "scheduler": ["diffusers", scheduler],
            "unet": ["diffusers", "UNet2DModel"],
        }
        _write_json(tmp / "model_index.json", index)
        _write_json(tmp / "unet" / "config.json", unet_cfg)
        _write_json(tmp / "scheduler" / "scheduler_config.json", sched_cfg)
        tensors = {
            k: v.detach().cpu().contiguous() for k, v in state_to_diffusers(cfg, state).items()
        }
        atomic_write_bytes(tmp / "unet" / WEIGHTS[0], st_save(tensors, metadata={"format": "pt"}))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and not isinstance(err, DiskFullError):
            raise InteropError(f"cannot write {str(out)!r}: {err.strerror or err}") from None
        raise
    return out


def _write_json(path: Path, value: dict) -> None:
    value = {**value, "_diffusers_version": DIFFUSERS_VERSION}
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def _open_regular(path: Path):
    try:
        f, st = open_regular(path)
    except OSError as e:
        raise InteropError(f"cannot read {str(path)!r}: {e.strerror}") from None
    except NotRegularFileError as e:
        raise InteropError(str(e)) from None
    return f, st.st_size


def _json(path: Path) -> dict:
    f, size = _open_regular(path)
    with f:
        if size > MAX_JSON:
            raise InteropError(f"{str(path)!r} is {size} bytes; a config is under {MAX_JSON}")
        try:
            value = json.loads(f.read())
        except (ValueError, RecursionError):
            raise InteropError(f"{str(path)!r} is not JSON") from None
    if not isinstance(value, dict):
        raise InteropError(f"{str(path)!r} is not a JSON object")
    return value


def _weights(folder: Path, limit: int | None) -> dict[str, torch.Tensor]:
    for name in WEIGHTS:
        path = folder / name
        if not path.exists():
            continue
        f, size = _open_regular(path)
        if limit is not None and size > limit:
            f.close()
            raise InteropError(
                f"{str(path)!r} is {size} bytes, more than weights of the UNet its config "
                f"describes can take ({limit})"
            )
        with f:
            try:
                if name.endswith(".safetensors"):
                    return st_load(f.read())
                state = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 (a malformed file fails in many ways)
                raise InteropError(f"{str(path)!r} is not a weights file ({e})") from None
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise InteropError(f"{str(path)!r} is not a dict of tensors")
        return state
    raise InteropError(f"no weights in {str(folder)!r} (expected {' or '.join(WEIGHTS)})")
