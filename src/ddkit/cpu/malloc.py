"""glibc's malloc, set to keep freed memory for the next training step.

A CPU training step allocates and frees the same large activation and gradient buffers every
step.  With glibc's defaults, blocks above the mmap threshold (128 KiB at first, raised
dynamically up to 32 MiB) come from ``mmap`` and go back with ``munmap``, and free memory at the
top of the heap is returned to the kernel once it exceeds the trim threshold; each step then
touches fresh pages again, one page fault per 4 KiB.  On the 2-vCPU KVM guest of BENCHMARKS.md a
``ddpm-28`` step at batch 64 took 30,000-50,000 page faults this way.  :func:`keep_freed_memory`
sets ``M_MMAP_THRESHOLD`` to its maximum (32 MiB) and ``M_TRIM_THRESHOLD`` to 2 GiB - 1, so freed
blocks stay in the process and are reused: the resident size stays at its peak, which a training
step reaches every step anyway.

``ddkit train`` calls it (CPU runs) unless ``DDKIT_MALLOC_TUNING=0`` or the user has set glibc's own
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (or ``GLIBC_TUNABLES``), which win.  Other
C libraries, and allocators put in with ``LD_PRELOAD`` (jemalloc, tcmalloc), are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit: 4 MiB * sizeof(long)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int

_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory (see the module docstring).  Returns whether it
    did: False off Linux, on another C library, with ``LD_PRELOAD`` set, with
    ``DDKIT_MALLOC_TUNING=0``, or when the user set glibc's own variables."""
    if not sys.platform.startswith("linux") or os.environ.get("DDKIT_MALLOC_TUNING") == "0":
        return False
    if os.environ.get("LD_PRELOAD") or any(os.environ.get(k) for k in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first, as glibc's own tunables do
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
