"""The run folder a training run owns: an exclusive lock for the run's lifetime, the refusal to
start over another run's files, and the clean-up of temporary files a killed write left.

A folder *holds a run* when it has checkpoints (``checkpoints/ckpt-*.safetensors``), a
``metrics.jsonl`` or a ``config.json``.  The run's identity is the ``run_id`` written into every
checkpoint's metadata: a resumed run continues its own folder (or a copy of it, or an empty
one); a new run starts only in a folder that holds none, unless told to overwrite, which
deletes ddkit's files of the old run (and nothing else) once the lock is held.

The lock is ``flock`` on ``<folder>/.lock`` (advisory, released by the kernel when the process
dies, so a killed run never leaves a stale lock); the file names the holder's process, host and
start time for the message a second trainer gets.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import time
from pathlib import Path

from .. import checkpoint as ckpt

LOCK_NAME = ".lock"
RUN_FILES = ("metrics.jsonl", "config.json", "loss.png")
_SAMPLE = re.compile(r"^step-\d{8,}-(ema|online)\.png$")
_EVENTS = re.compile(r"^events\.out\.tfevents\.")
# temporary files of atomic_write_bytes: ".<name>.<random>.tmp"
_TMP = re.compile(r"^\.(ckpt-\d{8,}\.safetensors|metrics\.jsonl|config\.json|loss\.png|step-.*)\.")


class RunFolderError(ValueError):
    """The run folder is in use or holds another run (one line, naming the folder)."""


def held_run(folder: Path) -> tuple[str | None, int | None] | None:
    """(run_id, step) of the run ``folder`` holds -- from its newest checkpoint; (None, None)
    for a run without a readable checkpoint yet -- or None if it holds no run."""
    folder = Path(folder)
    latest = ckpt.latest_checkpoint(folder / "checkpoints")
    if latest is not None:
        try:
            meta = ckpt.read_metadata(latest)
        except ckpt.CheckpointError:
            return None, None
        return meta.get("run_id"), meta.get("step")
    if any((folder / name).exists() for name in ("metrics.jsonl", "config.json")):
        return None, None
    return None


def describe(folder: Path, held: tuple[str | None, int | None]) -> str:
    run_id, step = held
    who = f"run {run_id}" if run_id else "a run"
    at = f" at step {step}" if step is not None else " without a checkpoint"
    return f"folder {str(folder)!r} holds {who}{at}"


def check_new_run(folder: Path, overwrite: bool, *, locked: bool = False) -> None:
    """RunFolderError if a new run may not start in ``folder``: another process holds its lock
    (unless ``locked``: this process does), or it holds a run and ``overwrite`` is off."""
    if not locked:
        check_unlocked(folder)
    held = held_run(folder)
    if held is not None and not overwrite:
        raise RunFolderError(
            f"{describe(folder, held)}; resume it with --resume {str(folder)!r}, or choose "
            "another train.out_dir (or pass --overwrite to replace it)"
        )


def check_resume(folder: Path, run_id: str | None, step: int, *, locked: bool = False) -> None:
    """RunFolderError unless a run resumed from ``run_id`` at ``step`` may write into
    ``folder``: not locked by another process, and empty or holding the same run."""
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
    except OSError:  # no lock file (or not a plain one): nobody has trained here
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = _busy(self.path, fd)
            os.close(fd)
            raise RunFolderError(message) from None
        holder = f"pid {os.getpid()} on {socket.gethostname()} since "
        holder += time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        self.fd = fd

    def release(self) -> None:
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
    """Delete ddkit's files of a previous run in ``folder`` (checkpoints, metrics, config, loss
    curve, sample grids, TensorBoard events); other files stay.  Returns how many went."""
    folder, gone = Path(folder), 0
    victims = [folder / n for n in RUN_FILES]
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
            if path.name.endswith(".tmp") and path.is_file() and not path.is_symlink():
                path.unlink()
                gone += 1
    return gone


def _matching(folder: Path, pattern: re.Pattern) -> list[Path]:
    if not folder.is_dir() or folder.is_symlink():
        return []
    return [p for p in folder.iterdir() if pattern.match(p.name)]
