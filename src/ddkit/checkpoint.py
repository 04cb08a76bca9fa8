"""Self-describing checkpoints: one safetensors file per save.

Tensors (model, EMA, optimizer state, RNG states) are stored as safetensors; everything else
(config, schema version, step, optimizer hyper-parameters, data-loader position, Python and
numpy RNG states, the run's ID) is JSON in the file's metadata under the key ``ddkit``, with
``tensors_sha256`` and ``metadata_sha256``: hashes of every tensor and of the rest of the
metadata, checked on load, so that a flipped bit or a torn copy is refused rather than trained or
sampled from.  (They detect corruption; they are not a signature: whoever can edit a file can
recompute them.)  Nothing is unpickled on load, and the metadata is
checked for form before any of it is used.  Files are written atomically: a temporary file in
the same folder, fsync, rename, fsync of the folder; a crash leaves either the old set of
checkpoints or the new one.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .paths import atomic_write_bytes
from .resources import NotRegularFileError, available_memory, format_bytes, open_regular

SCHEMA_VERSION = 2  # 2: tensors_sha256, metadata_sha256 and run_id in the metadata
HASH_KEYS = ("tensors_sha256", "metadata_sha256")
READABLE_VERSIONS = (1, 2)
MAX_STEP = 2**63 - 1
MAX_HEADER = 100 * 2**20  # what the safetensors format itself allows
_NAME = re.compile(r"^ckpt-(\d{8,})\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit (one line, naming the file)."""


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint saved after ``step`` optimizer steps."""
    return f"ckpt-{step:08d}.safetensors"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes (in name order): the integrity
    hash stored in a checkpoint's metadata and checked on load."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode() + b"\0")
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def metadata_digest(meta: dict) -> str:
    """SHA-256 of the canonical JSON of ``meta`` less its hashes (and the ``path`` added on
    load)."""
    rest = {k: v for k, v in meta.items() if k not in (*HASH_KEYS, "path")}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def valid_run_id(run_id) -> bool:
    """Whether ``run_id`` is a run ID: 32 lower-case hex digits."""
    return isinstance(run_id, str) and re.fullmatch(r"[0-9a-f]{32}", run_id) is not None


def run_id_of(meta: dict) -> str:
    """The run ID of a checkpoint; for a schema-1 file, which has none, one derived from its
    config (so that every checkpoint of one such run has the same)."""
    if meta.get("run_id"):
        return meta["run_id"]
    return hashlib.sha256(json.dumps(meta["config"], sort_keys=True).encode()).hexdigest()[:32]


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Atomically write ``tensors`` and the JSON-able ``meta`` (schema version and the
    integrity hashes added)."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {k: v for k, v in meta.items() if k not in (*HASH_KEYS, "path")}
    meta |= {"schema_version": SCHEMA_VERSION, "tensors_sha256": tensors_digest(plain)}
    meta["metadata_sha256"] = metadata_digest(meta)
    atomic_write_bytes(Path(path), st_save(plain, metadata={"ddkit": json.dumps(meta)}))


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's newest checkpoint."""
    path = Path(path)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"no checkpoint (ckpt-*.safetensors) in folder {str(path)!r}")
        path = latest
    return path


def _read(path: Path, header_only: bool) -> bytes:
    """The file's bytes (or its 8-byte length and header), refusing anything but a regular file
    before reading it (a FIFO or device would block or never end) and what cannot fit memory."""
    name = str(path)
    try:
        f, st = open_regular(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {name!r} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {name!r}: {e.strerror}") from None
    except NotRegularFileError as e:
        raise CheckpointError(f"checkpoint {name!r} is {e.kind}, not a file") from None
    with f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(MAX_HEADER, st.st_size - 8):
            raise CheckpointError(f"{name!r} is not a ddkit checkpoint (no safetensors header)")
        if header_only:
            return head + f.read(n)
        avail = available_memory("cpu")
        if avail is not None and st.st_size > avail[0]:
            raise CheckpointError(
                f"checkpoint {name!r} is {format_bytes(st.st_size)}, more than the "
                f"{format_bytes(avail[0])} of memory available ({avail[1]})"
            )
        try:
            return head + f.read()
        except OSError as e:
            raise CheckpointError(f"cannot read checkpoint {name!r}: {e.strerror}") from None


def _metadata(path: Path, data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + n])
        meta = json.loads(header["__metadata__"]["ddkit"])
    except (KeyError, ValueError, TypeError, RecursionError):
        raise CheckpointError(f"{str(path)!r} is not a ddkit checkpoint") from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{str(path)!r}: its ddkit metadata is a JSON {type(meta).__name__}, not an object"
        )
    version = meta.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint schema version {version!r}; this ddkit reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    if version >= 2 and meta.get("metadata_sha256") != metadata_digest(meta):
        raise CheckpointError(
            f"{str(path)!r} is corrupt: its metadata does not match the integrity hash stored "
            "with it (metadata_sha256)"
        )
    if version == 1 and any(k in meta for k in (*HASH_KEYS, "run_id")):
        raise CheckpointError(
            f"{str(path)!r} claims schema version 1 but has version 2's entries; refused"
        )
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise CheckpointError(
            f"{str(path)!r}: entry 'step' is {step!r}, not an integer in 0..{MAX_STEP}"
        )
    if not isinstance(meta.get("config"), dict):
        got = "missing" if "config" not in meta else type(meta["config"]).__name__
        raise CheckpointError(f"{str(path)!r}: entry 'config' is {got}, not an object")
    run_id = meta.get("run_id")
    if run_id is not None and not valid_run_id(run_id):
        raise CheckpointError(f"{str(path)!r}: entry 'run_id' is {run_id!r}, not 32 hex digits")
    meta["path"] = str(path)
    return meta


def read_metadata(path: str | Path) -> dict:
    """The checkpoint's JSON metadata alone (its tensors are not read)."""
    path = resolve(path)
    return _metadata(path, _read(path, header_only=True))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a checkpoint file (or a run folder's newest), or CheckpointError
    naming the file: not a regular file, not a checkpoint, metadata of the wrong form, or
    tensors that do not match the integrity hash written with them."""
    path = resolve(path)
    data = _read(path, header_only=False)
    meta = _metadata(path, data)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError):
        raise CheckpointError(f"{str(path)!r} is not a ddkit checkpoint (bad tensors)") from None
    want = meta.get("tensors_sha256")
    if meta["schema_version"] >= 2 and want != tensors_digest(tensors):
        raise CheckpointError(
            f"{str(path)!r} is corrupt: its tensors do not match the integrity hash "
            "stored with them (tensors_sha256)"
        )
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
        if old.is_file() or old.is_symlink():  # a folder of that name is not ours to remove
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


def entry_error(meta: dict, entry: str, problem: str) -> CheckpointError:
    """The one-line error for a bad metadata entry or tensor of the checkpoint ``meta``."""
    return CheckpointError(f"{meta['path']!r}: entry {entry!r} {problem}")


def read_class_names(meta: dict, num_classes: int) -> tuple[str, ...] | None:
    """The class names a checkpoint records for its ``num_classes`` classes ("0", "1", ... when it
    records none); None for an unconditional model.  CheckpointError for any other form."""
    names = meta.get("class_names")
    if not num_classes:
        if names is not None:
            raise entry_error(meta, "class_names", "is set, but the model is unconditional")
        return None
    if names is None:
        return tuple(str(i) for i in range(num_classes))
    ok = isinstance(names, list) and len(names) == num_classes
    if not ok or not all(isinstance(n, str) and 0 < len(n) <= 200 for n in names):
        raise entry_error(
            meta, "class_names", f"must be a list of {num_classes} names of 1 to 200 characters"
        )
    return tuple(names)


def describe(t: torch.Tensor) -> str:
    """'float32 [3, 3]'."""
    return f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}"


def check_tensors(meta: dict, got: dict, expected: dict, prefix: str) -> None:
    """CheckpointError unless ``got`` (the checkpoint's tensors under ``prefix/``) has exactly
    the names of ``expected`` with the same dtypes and shapes."""
    for name, want in expected.items():
        entry = f"{prefix}/{name}"
        if name not in got:
            raise entry_error(meta, entry, "is missing")
        if got[name].dtype != want.dtype or got[name].shape != want.shape:
            raise entry_error(meta, entry, f"is {describe(got[name])}; expected {describe(want)}")
    extra = sorted(set(got) - set(expected))
    if extra:
        raise entry_error(meta, f"{prefix}/{extra[0]}", "is not expected (no such tensor here)")


def check_model_tensors(meta: dict, tensors: dict, model: torch.nn.Module, weights: str) -> None:
    """The model's tensors (``model/``) and, for ``weights="ema"``, the averaged parameters
    (``ema/``) have exactly the names, dtypes and shapes of ``model``'s."""
    check_tensors(meta, tensors_with_prefix(tensors, "model"), model.state_dict(), "model")
    if weights == "ema":
        params = {n: p.detach() for n, p in model.named_parameters()}
        check_tensors(meta, tensors_with_prefix(tensors, "ema"), params, "ema")
