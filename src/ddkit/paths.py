"""Where ddkit keeps what it builds once and reuses (feature networks, reference statistics,
compiled CPU kernels)."""

from __future__ import annotations

import os
from pathlib import Path


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
