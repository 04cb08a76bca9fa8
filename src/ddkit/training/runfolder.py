"""The run folder a training run owns: an exclusive lock for the run's lifetime, the refusal to
start over another run's files, and the clean-up of temporary files a killed write left.

A folder *holds a run* when it has checkpoints (``checkpoints/ckpt-*.safetensors``), a
``run.json``, a ``metrics.jsonl`` or a ``config.json`` that is a ddkit config.  The run's
identity is the ``run_id`` written into every checkpoint's metadata and into ``run.json`` when
the run claims the folder: a resumed run continues its own folder (or a copy of it, or an empty
one); a new run starts only in a folder that holds none, unless told to overwrite, which
deletes ddkit's files of the old run (and nothing else) once the lock is held.  The entries a
run writes (``checkpoints/``, ``samples/``, ``metrics.jsonl``, ...) must be the folder's own:
a symbolic link among them is refused, so that nothing is written or pruned elsewhere.

The lock is ``flock`` on ``<folder>/.lock`` (advisory, released by the kernel when the process
dies, so a killed run never leaves a stale lock); the file names the holder's process, host and
start time for the message a second trainer gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import stat
import time
from pathlib import Path

from .. import checkpoint as ckpt
from ..paths import atomic_write_bytes

LOCK_NAME = ".lock"
RUN_RECORD = "run.json"
# what a run writes, with whether it is a folder
ENTRIES = {
    "checkpoints": True,
    "samples": True,
    "tensorboard": True,
    "metrics.jsonl": False,
    "config.json": False,
    "loss.png": False,
    RUN_RECORD: False,
    LOCK_NAME: False,
}
_SAMPLE = re.compile(r"^step-\d{8,}-(ema|online)\.png$")
_EVENTS = re.compile(r"^events\.out\.tfevents\.")
# temporary files of atomic_write_bytes: ".<name>.<8 random characters of mkstemp>.tmp"
_TMP = re.compile(
    r"^\.(ckpt-\d{8,}\.safetensors|metrics\.jsonl|config\.json|run\.json|loss\.png"
    r"|step-\d{8,}-(ema|online)\.png)\.[a-z0-9_]{8}\.tmp$"
)
LOCK_WAIT = 2.0  # seconds acquire() retries, so that another process's probe cannot fail it


class RunFolderError(ValueError):
    """The run folder is in use or holds another run (one line, naming the folder)."""


def is_ddkit_config(path: Path) -> bool:
    """Whether ``path`` is a config.json a ddkit run wrote (model, data and train sections)."""
    config = read_json(path)
    return isinstance(config, dict) and {"model", "data", "train"} <= set(config)


def check_entries(folder: Path) -> None:
    """RunFolderError if an entry a run writes is a symbolic link or of the wrong kind, or the
    folder has a ``config.json`` that is not a ddkit run's (a run would replace it)."""
    for name, is_dir in ENTRIES.items():
        path = Path(folder) / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        except OSError as e:
            raise RunFolderError(f"run folder entry {str(path)!r}: {e.strerror}") from None
        if stat.S_ISLNK(mode):
            raise RunFolderError(
                f"run folder entry {str(path)!r} is a symbolic link; a run writes only into "
                "its own folder, so its files and subfolders must be its own"
            )
        if not (stat.S_ISDIR(mode) if is_dir else stat.S_ISREG(mode)):
            kind = "a folder" if is_dir else "a regular file"
            raise RunFolderError(f"run folder entry {str(path)!r} is not {kind}")
    config = Path(folder) / "config.json"
    if config.exists() and not is_ddkit_config(config):
        raise RunFolderError(
            f"{str(config)!r} is not a ddkit run's config.json, and a run would replace it; "
            "choose another train.out_dir"
        )


def held_run(folder: Path) -> tuple[str | None, int | None] | None:
    """(run_id, step) of the run ``folder`` holds: from its newest readable checkpoint, else
    (run_id, None) from its ``run.json``, else (None, None) if it has a run's log or config;
    None if it holds no run."""
    folder = Path(folder)
    found = ckpt.list_checkpoints(folder / "checkpoints")
    for path in reversed(found):
        try:
            meta = ckpt.read_metadata(path)
        except ckpt.CheckpointError:
            continue
        return ckpt.run_id_of(meta), meta["step"]
    record = read_json(folder / RUN_RECORD)
    if isinstance(record, dict) and ckpt.valid_run_id(record.get("run_id")):
        return record["run_id"], None
    if found or is_ddkit_config(folder / "config.json") or (folder / "metrics.jsonl").exists():
        return None, None
    return None


def read_json(path: Path):
    """The JSON value of a small regular file, or None (missing, not regular, not JSON)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 1 << 20:
            return None
        try:
            return json.loads(f.read())
        except (ValueError, RecursionError):
            return None


def write_run_record(folder: Path, run_id: str) -> None:
    """``run.json``: the ID of the run that claimed the folder (before its first checkpoint)."""
    atomic_write_bytes(Path(folder) / RUN_RECORD, json.dumps({"run_id": run_id}).encode())


def describe(folder: Path, held: tuple[str | None, int | None]) -> str:
    """A phrase naming what ``folder`` holds, from ``held`` = :func:`held_run`'s (run_id, step)."""
    run_id, step = held
    if run_id is None and step is None:
        return f"folder {str(folder)!r} holds the files of a ddkit run without a checkpoint"
    at = f" at step {step}" if step is not None else " (no checkpoint yet)"
    return f"folder {str(folder)!r} holds run {run_id}{at}"


def check_new_run(folder: Path, overwrite: bool, *, locked: bool = False) -> None:
    """RunFolderError if a new run may not start in ``folder``: an entry is a link, another
    process holds its lock (unless ``locked``: this process does), or it holds a run and
    ``overwrite`` is off."""
    check_entries(folder)
    if not locked:
        check_unlocked(folder)
    held = held_run(folder)
    if held is not None and not overwrite:
        resume = f"resume it with --resume {str(folder)!r}, or " if held[1] is not None else ""
        raise RunFolderError(
            f"{describe(folder, held)}; {resume}choose another train.out_dir (or pass "
            "--overwrite to replace it)"
        )


def check_resume(folder: Path, run_id: str, step: int, *, locked: bool = False) -> None:
    """RunFolderError unless a run resumed from ``run_id`` at ``step`` may write into
    ``folder``: its entries its own, not locked by another process, and empty or holding the
    same run."""
    check_entries(folder)
    if not locked:
        check_unlocked(folder)
    held = held_run(folder)
    if held is not None and held[0] != run_id:
        raise RunFolderError(
            f"{describe(folder, held)}, not the run of the checkpoint (run {run_id} at step "
            f"{step}); resume into that run's folder or an empty train.out_dir"
        )


def check_unlocked(folder: Path) -> None:
    """RunFolderError naming the holder if another process holds ``folder``'s lock."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # no lock file (or not a plain one, which check_entries refuses)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunFolderError(_busy(path, fd)) from None
    finally:
        os.close(fd)


class RunFolderLock:
    """The exclusive lock on a run folder, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (RunFolderError naming the holder if another process has it)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as e:
            raise RunFolderError(f"cannot lock {str(self.path)!r}: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunFolderError(f"run folder entry {str(self.path)!r} is not a regular file")
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:  # a probe holds it for a moment only
                    time.sleep(0.05)
                    continue
                message = _busy(self.path, fd)
                os.close(fd)
                raise RunFolderError(message) from None
        holder = f"pid {os.getpid()} on {socket.gethostname()} since "
        holder += time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        self.fd = fd

    def release(self) -> None:
        """Drop the lock by closing its file; nothing to do when it is not held."""
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def _busy(path: Path, fd: int) -> str:
    try:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        holder = ""
    return (
        f"run folder {str(path.parent)!r} is in use by another trainer "
        f"({holder or 'holder unknown'}); wait for it or choose another train.out_dir"
    )


def remove_run_files(folder: Path) -> int:
    """Delete ddkit's files of a previous run in ``folder`` (checkpoints, metrics, a ddkit
    config.json, run record, loss curve, sample grids, TensorBoard events); other files stay.
    The entries must be the folder's own (:func:`check_entries`).  Returns how many went."""
    folder, gone = Path(folder), 0
    check_entries(folder)
    victims = [folder / n for n in ("metrics.jsonl", RUN_RECORD, "loss.png")]
    if is_ddkit_config(folder / "config.json"):
        victims.append(folder / "config.json")
    victims += ckpt.list_checkpoints(folder / "checkpoints")
    victims += _matching(folder / "samples", _SAMPLE) + _matching(folder / "tensorboard", _EVENTS)
    for path in victims:
        if path.is_file() and not path.is_symlink():
            path.unlink()
            gone += 1
    return gone


def remove_orphan_temporaries(folder: Path) -> int:
    """Delete the temporary files of writes a killed run left in ``folder``, its checkpoints/
    and samples/ (ddkit's names only).  Returns how many went."""
    folder, gone = Path(folder), 0
    for sub in (folder, folder / "checkpoints", folder / "samples"):
        for path in _matching(sub, _TMP):
            if path.is_file() and not path.is_symlink():
                path.unlink()
                gone += 1
    return gone


def _matching(folder: Path, pattern: re.Pattern) -> list[Path]:
    if not folder.is_dir() or folder.is_symlink():
        return []
    return [p for p in folder.iterdir() if pattern.match(p.name)]
