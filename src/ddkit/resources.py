"""What the machine offers -- devices, memory, writable folders -- and the checks that every
input a command names can be used, made before anything is allocated, opened or written.

    check_device("cuda")                      # ValueError naming --device on a CPU-only machine
    check_fits({"samples": 8 * 2**40}, "cpu", "sampling", "lower --num")   # ValueError: too big
    check_output_folder("samples")            # an existing folder or one that can be made there
    check_regular_file("run.toml", "config file")   # no FIFO, device or folder is ever opened

Memory estimates come from :mod:`ddkit.memory`.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

MAX_SEED = 2**63 - 1


def format_bytes(n: float) -> str:
    """``n`` bytes as e.g. '1.5 GiB' (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


# ---- devices ----------------------------------------------------------------------------------
def allowed_devices() -> list[str]:
    """The device names this machine runs: 'cpu', and 'cuda', 'cuda:0', ... when CUDA works."""
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return names


def check_device(name: object, option: str = "--device") -> str:
    """``name`` when it is a device of this machine; ValueError naming ``option`` and the allowed
    names otherwise."""
    allowed = allowed_devices()
    name = name if isinstance(name, str) else str(name)  # a torch.device
    if name not in allowed:
        raise ValueError(
            f"{option} {name!r} is not a device of this machine; allowed: {', '.join(allowed)}"
        )
    return name


# ---- memory -----------------------------------------------------------------------------------
def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 memory limit, or None without one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_memory(device="cpu") -> tuple[int, str] | None:
    """(bytes free for new tensors on ``device``, where that number comes from), or None when
    it is unknown.  CPU: /proc/meminfo's MemAvailable (or the cgroup's limit, when lower);
    CUDA: ``torch.cuda.mem_get_info``."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return None
    if dev.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(dev)
        except (RuntimeError, AssertionError):
            return None
        return int(free), f"free on {dev}"
    if dev.type != "cpu":
        return None
    found = [(_meminfo_available(), "MemAvailable"), (_cgroup_available(), "cgroup memory.max")]
    found = [(v, source) for v, source in found if v is not None]
    return min(found) if found else None


def check_fits(parts: dict[str, int], device, what: str, hint: str) -> None:
    """ValueError when the estimated bytes ``parts`` (name -> bytes) exceed the memory available
    on ``device``; the message names ``what``, the estimate with its largest parts, the memory
    available and ``hint`` (what to lower)."""
    total = sum(parts.values())
    avail = available_memory(device)
    if avail is None or total <= avail[0]:
        return
    largest = sorted(parts.items(), key=lambda kv: -kv[1])[:3]
    shown = ", ".join(f"{name} {format_bytes(b)}" for name, b in largest if b > 0)
    free = format_bytes(avail[0])
    raise ValueError(
        f"{what} needs about {format_bytes(total)} of memory ({shown}) but {free} is available "
        f"on {str(device).split(':')[0]} ({avail[1]}); {hint}"
    )


# ---- files and folders ------------------------------------------------------------------------
def check_output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` as a Path when it is an existing folder, or a folder that can be made there
    (its nearest existing parent a folder); ValueError naming ``option`` otherwise.  Whether
    the folder can be written to is tried by making and removing an empty folder in it (the
    permission bits do not tell for root, nor for /proc or read-only mounts); nothing else is
    created."""
    out = Path(path)
    if str(path) == "" or "\0" in str(path):
        raise ValueError(f"{option} {str(path)!r} is not a folder name")
    probe = out
    while True:
        try:
            st = os.stat(probe)
            break
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                raise ValueError(f"{option} {str(out)!r}: no existing parent folder") from None
            probe = probe.parent
        except OSError as e:
            raise ValueError(f"{option} {str(out)!r}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        where = "exists" if probe == out else f"is inside {str(probe)!r}, which exists"
        raise ValueError(f"{option} {str(out)!r} {where} and is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ddkit-write-test-", dir=probe))
    except OSError as e:
        raise ValueError(
            f"{option} {str(out)!r}: cannot write in {str(probe)!r} ({e.strerror or e})"
        ) from None
    return out


def check_output_files(out: Path, names, option: str = "--out") -> None:
    """ValueError when one of the files ``names`` in the folder ``out`` exists and is not a
    regular file (a folder in its place would fail the write after all the work)."""
    for name in names:
        p = Path(out) / name
        if p.exists() and not p.is_file():
            raise ValueError(f"{option} {str(out)!r}: {name} exists and is not a regular file")


def check_regular_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path when it is a regular file (after symlinks); ValueError naming
    ``what`` otherwise (missing, a folder, a FIFO, a device or a socket), before it is opened."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ValueError(f"{what} {str(p)!r} does not exist") from None
    except OSError as e:
        raise ValueError(f"{what} {str(p)!r}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {str(p)!r} is {file_kind(st.st_mode)}, not a regular file")
    return p


class NotRegularFileError(ValueError):
    """A path that is a folder, FIFO, device or socket where a file's bytes are wanted."""

    def __init__(self, path, kind: str):
        super().__init__(f"{str(path)!r} is {kind}, not a regular file")
        self.kind = kind


def open_regular(path: str | os.PathLike):
    """(binary file, its ``os.stat`` result) for a regular file, opened without blocking and
    checked on the open descriptor, so that nothing waits on a FIFO or reads a device.
    OSError if it cannot be opened; :class:`NotRegularFileError` if it is not a regular file."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularFileError(path, file_kind(st.st_mode))
    return os.fdopen(fd, "rb"), st


def file_kind(mode: int) -> str:
    """'a folder', 'a FIFO', ... for an ``os.stat`` mode."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_seed(seed: object, key: str = "--seed") -> int:
    """``seed`` when it is an integer in 0 .. 2**63 - 1; ValueError naming ``key`` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{key}={seed!r} must be an integer in 0..{MAX_SEED} (2**63 - 1)")
    return seed
