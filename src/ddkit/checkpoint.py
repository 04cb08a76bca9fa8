"""Self-describing checkpoints: one safetensors file per save.

Tensors (model, EMA, optimizer state, RNG states) are stored as safetensors; everything else
(config, schema version, step, optimizer hyper-parameters, data-loader position, Python and
numpy RNG states) is JSON in the file's metadata under the key ``ddkit``.  Nothing is
unpickled on load.  Files are written atomically: a temporary file in the same folder, fsync,
rename, fsync of the folder; a crash leaves either the old set of checkpoints or the new one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .paths import atomic_write_bytes

SCHEMA_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{8,})\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit (one line, naming the file)."""


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint saved after ``step`` optimizer steps."""
    return f"ckpt-{step:08d}.safetensors"


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Atomically write ``tensors`` and the JSON-able ``meta`` (schema version added)."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {"ddkit": json.dumps({"schema_version": SCHEMA_VERSION, **meta})}
    atomic_write_bytes(Path(path), st_save(plain, metadata=header))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a checkpoint file, or CheckpointError naming the file."""
    path = Path(path)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"no checkpoint (ckpt-*.safetensors) in folder {str(path)!r}")
        path = latest
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {e.strerror}") from None
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(json.loads(data[8 : 8 + header_len]).get("__metadata__", {})["ddkit"])
    except (SafetensorError, KeyError, ValueError, TypeError):
        raise CheckpointError(f"{str(path)!r} is not a ddkit checkpoint") from None
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint schema version {version!r}; this ddkit reads "
            f"version {SCHEMA_VERSION}"
        )
    meta["path"] = str(path)
    return tensors, meta


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files in ``folder``, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint in ``folder`` or its ``checkpoints/`` subfolder."""
    folder = Path(folder)
    found = list_checkpoints(folder) or list_checkpoints(folder / "checkpoints")
    return found[-1] if found else None


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints in ``folder``."""
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)


def state_to_tensors(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state``'s tensors under the keys ``<prefix>/<name>``."""
    return {f"{prefix}/{k}": v for k, v in state.items()}


def tensors_with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``<prefix>/``, with the prefix taken off their keys."""
    p = prefix + "/"
    return {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}


def model_weights(tensors: dict[str, torch.Tensor], weights: str = "ema") -> dict:
    """A model state_dict from a checkpoint's tensors: the online weights (buffers included),
    with the EMA-averaged parameters in their place for ``weights="ema"``."""
    if weights not in ("ema", "online"):
        raise ValueError(f"weights={weights!r} is not allowed; allowed: ema, online")
    state = tensors_with_prefix(tensors, "model")
    if weights == "ema":
        state |= tensors_with_prefix(tensors, "ema")
    return state


def optimizer_to_checkpoint(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(tensors, JSON meta) of an optimizer's state_dict: tensors under ``optim/<param>/<key>``."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{idx}/{k}"] = v
            else:
                scalars[f"{idx}/{k}"] = v
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_checkpoint(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The state_dict for ``optimizer.load_state_dict`` from :func:`optimizer_to_checkpoint`."""
    state: dict[int, dict] = {}
    for key, v in tensors_with_prefix(tensors, "optim").items():
        idx, k = key.split("/", 1)
        state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split("/", 1)
        state.setdefault(int(idx), {})[k] = v
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}
