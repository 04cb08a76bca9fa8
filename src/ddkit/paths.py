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
