"""Files: where ddkit keeps what it builds once and reuses (feature networks, reference
statistics, compiled CPU kernels), the permission bits of new files, and atomic writes."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path


class DiskFullError(OSError):
    """A write ran out of space (or quota); one line naming the file and the free space.  The
    file it was replacing is kept, and the partial temporary file is removed."""


def disk_full_error(path: Path) -> DiskFullError:
    """The :class:`DiskFullError` for a failed write to ``path``."""
    where = Path(path).parent
    while not where.exists() and where != where.parent:  # a folder not made yet: its parent's
        where = where.parent
    try:
        free = f"{shutil.disk_usage(where).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    err = DiskFullError(f"no space left on the device writing {str(path)!r} ({free})")
    err.errno = errno.ENOSPC
    return err


def default_cache_dir() -> Path:
    """``$DDKIT_CACHE``, else ``$XDG_CACHE_HOME/ddkit``, else ``~/.cache/ddkit``."""
    if os.environ.get("DDKIT_CACHE"):
        return Path(os.environ["DDKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ddkit"


def file_mode(executable: bool = False) -> int:
    """The permission bits that ``open()`` would give a new file here (0o666, or 0o777 for an
    executable, less the process's umask).  Atomic writes go through ``tempfile.mkstemp``, whose
    files are 0o600; they take these bits before the rename, so that a shared run folder or cache
    stays readable to the group as any other file would be."""
    mask = None
    try:  # Linux >= 4.7 reports the umask without changing it
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    mask = int(line.split()[1], 8)
                    break
    except (OSError, ValueError):
        pass
    if mask is None:  # elsewhere: read it by setting it (and put it straight back)
        mask = os.umask(0o022)
        os.umask(mask)
    return (0o777 if executable else 0o666) & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())  # mkstemp's 0600 -> what open() would give
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_error(path) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (a log); a full disk is a :class:`DiskFullError` naming the
    file, and a partial line it left is dropped by the log's reader as a torn last line."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        with os.fdopen(os.open(path, flags, 0o666), "ab") as f:  # never through a link
            f.write(data)
            f.flush()
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_error(path) from None
        raise
