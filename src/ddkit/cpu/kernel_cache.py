"""A private on-disk cache of compiled shared libraries, verified before ctypes loads them.

Trust rules.  The cache folder (``<cache>/kernels``) and every file read from it must be owned by
the process's effective user, be writable by nobody else (no group or other write bit), and not
be a symbolic link; anything else raises :class:`UntrustedCacheError` and nothing is loaded.  A
new folder is made 0o700 and new files owner-only (0o700 for a library, 0o600 for its hash),
whatever the umask; an existing folder keeps its mode.  Beside each library ``NAME`` lies
``NAME.sha256``, the SHA-256 of the bytes ddkit built; a library without it, or with other bytes,
is built again and replaced, never loaded.

How the check and the load see the same bytes: the folder is opened once (``O_NOFOLLOW``) and
checked through its descriptor, and every file is opened relative to that descriptor, so renaming
or replacing a folder on the path after the check changes nothing.  The library is opened with
``O_NOFOLLOW``, checked with ``fstat``, hashed from that descriptor, and ``dlopen``-ed through
``/proc/self/fd/N``, which names the inode that was hashed, not the path.  Only its owner (or
root) could write that inode, and ddkit never writes a published file in place (it writes a
temporary file and renames it).  Without ``/proc`` (not Linux) the verified bytes are copied into
a fresh private folder (``tempfile.mkdtemp``, 0o700) and loaded from there.

The folder holding ``kernels`` is not checked: the descriptor makes its permissions irrelevant to
what is loaded, and a cache shared with a group for data stays usable.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

FOLDER_MODE = 0o700
LIBRARY_MODE = 0o700
HASH_MODE = 0o600
HASH_SUFFIX = ".sha256"
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH

# descriptors of loaded libraries, open for the life of the process: glibc knows a loaded library
# by its file name, and a reused descriptor number would make /proc/self/fd/N name another file
_held: list[int] = []


class UntrustedCacheError(RuntimeError):
    """A cache folder or file that someone other than this user could have written: owned by
    another user, writable by group or others, a symbolic link, or not a plain file or folder."""


def load_library(folder: Path, name: str, build: Callable[[], bytes]) -> ctypes.CDLL:
    """``folder/name`` loaded with ctypes once it passes the trust rules (module docstring) and
    its hash.  When it is missing, or its hash file is missing or disagrees, ``build()`` gives
    the library's bytes, which are published atomically with their hash and loaded."""
    dir_fd = open_folder(Path(folder))
    try:
        fd = open_verified(dir_fd, Path(folder), name)
        if fd is None:
            fd = publish(dir_fd, name, build())
    finally:
        os.close(dir_fd)
    return _dlopen(fd)


def open_folder(folder: Path) -> int:
    """A descriptor of ``folder``, made 0o700 when it does not exist (its parents as ``mkdir -p``
    makes them); raises :class:`UntrustedCacheError` when it breaks the trust rules."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(folder, FOLDER_MODE)
        created = True
    except FileExistsError:
        created = False
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symbolic link" if folder.is_symlink() else "not a folder"
            raise UntrustedCacheError(f"{folder} is {kind}") from None
        raise
    try:
        if created:
            os.fchmod(fd, FOLDER_MODE)  # mkdir's mode passes through the umask
        check(os.fstat(fd), folder, directory=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check(st: os.stat_result, path: Path, directory: bool = False) -> None:
    """Raise :class:`UntrustedCacheError` unless ``st`` (of ``path``) is a folder (``directory``)
    or regular file owned by the effective user and writable by nobody else."""
    if not (stat.S_ISDIR if directory else stat.S_ISREG)(st.st_mode):
        raise UntrustedCacheError(f"{path} is not a {'folder' if directory else 'regular file'}")
    if st.st_uid != os.geteuid():
        raise UntrustedCacheError(
            f"{path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
        )
    if st.st_mode & _OTHERS_WRITE:
        mode = stat.S_IMODE(st.st_mode)
        raise UntrustedCacheError(f"{path} is writable by group or others (mode {mode:#o})")


def _open_checked(dir_fd: int, path: Path) -> int | None:
    """A read descriptor of ``path`` (a name in the folder ``dir_fd``) that passed :func:`check`,
    or None when there is no such file."""
    try:
        # O_NONBLOCK: a FIFO in its place must not block the open (check() then refuses it)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        fd = os.open(path.name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UntrustedCacheError(f"{path} is a symbolic link") from None
        raise
    try:
        check(os.fstat(fd), path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def open_verified(dir_fd: int, folder: Path, name: str) -> int | None:
    """A read descriptor of the library ``name`` in ``folder`` (open as ``dir_fd``) whose bytes
    hash to what ``name.sha256`` says, or None when either file is missing or they disagree.
    Raises :class:`UntrustedCacheError` when either file breaks the trust rules."""
    fd = _open_checked(dir_fd, folder / name)
    try:
        hash_fd = _open_checked(dir_fd, folder / (name + HASH_SUFFIX))
        expected = None
        if hash_fd is not None:
            try:
                expected = os.read(hash_fd, 256).decode("ascii", "replace").strip()
            finally:
                os.close(hash_fd)
        verified = fd is not None and expected == hashlib.sha256(_read(fd)).hexdigest()
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    if not verified:
        if fd is not None:
            os.close(fd)
        return None
    return fd


def _write_atomic(dir_fd: int, name: str, data: bytes, mode: int) -> int:
    """Write ``data`` to ``name`` in the folder ``dir_fd`` with permission bits ``mode`` through
    a temporary file and a rename (readers see the old file or the whole new one); returns a
    descriptor of the new file."""
    tmp = f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # os.open's mode passes through the umask
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
        os.fsync(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
    return fd


def publish(dir_fd: int, name: str, data: bytes) -> int:
    """Store the library bytes ``data`` as ``name`` (0o700) and their SHA-256 as
    ``name.sha256`` (0o600) in the folder ``dir_fd``; returns a descriptor of the library."""
    digest = hashlib.sha256(data).hexdigest()
    os.close(_write_atomic(dir_fd, name + HASH_SUFFIX, f"{digest}\n".encode(), HASH_MODE))
    fd = _write_atomic(dir_fd, name, data, LIBRARY_MODE)
    os.fsync(dir_fd)
    return fd


def _dlopen(fd: int) -> ctypes.CDLL:
    """The library open as ``fd`` (whose bytes were verified), loaded by descriptor.  ``fd`` is
    kept open when that succeeds (see :data:`_held`) and closed otherwise."""
    if os.path.isdir("/proc/self/fd"):
        try:
            lib = ctypes.CDLL(f"/proc/self/fd/{fd}")
        except BaseException:
            os.close(fd)
            raise
        _held.append(fd)
        return lib
    private = tempfile.mkdtemp(prefix="ddkit-kernel-")
    try:
        copy = Path(private) / "kernel.so"
        copy.write_bytes(_read(fd))
        return ctypes.CDLL(str(copy))
    finally:
        shutil.rmtree(private, ignore_errors=True)
        os.close(fd)
