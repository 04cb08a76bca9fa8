"""Building ddkit's C kernels on first use, for every kernel the same way.

A kernel's C file is compiled with the system's C compiler (``$CC``, else ``cc``, else ``gcc``)
into ``$DDKIT_CACHE/kernels`` (default ``~/.cache/ddkit/kernels``) as ``NAME-KEY.so``, the key a
hash of the source, the compiler's version, the flags and the CPU (an ``-march=native`` build is
only valid on a matching CPU), and loaded with ctypes once it passes the cache's trust rules
(``kernel_cache.py``).  Without a compiler, after a failed build or load, or with a cache someone
else could write, :func:`library` warns once in one line and returns None, and the caller uses
its PyTorch ops.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..paths import default_cache_dir
from .kernel_cache import UntrustedCacheError, load_library

# every kernel's flags: -fno-trapping-math -fno-math-errno let GCC vectorise the loops (rounding
# and selects); no -ffast-math: NaN and infinity keep their IEEE behaviour
FLAGS = (
    "-O3",
    "-march=native",
    "-fopenmp",
    "-fno-trapping-math",
    "-fno-math-errno",
    "-shared",
    "-fPIC",
    "-std=gnu11",
)
# /proc/cpuinfo fields that say which instructions -march=native may use (x86 and Arm)
CPU_FIELDS = (
    "vendor_id",
    "cpu family",
    "model",
    "model name",
    "flags",
    "CPU implementer",
    "CPU architecture",
    "CPU variant",
    "CPU part",
    "Features",
)


def cpu_signature() -> str:
    """The machine, CPU model and ISA flags: the distinct values of :data:`CPU_FIELDS` in
    /proc/cpuinfo, or what ``platform`` says."""
    fields = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in CPU_FIELDS:
                fields.add(f"{key.strip()}={value.strip()}")
    except OSError:
        pass
    return "\n".join([platform.machine(), platform.processor(), *sorted(fields)])


def build_key(compiler: str, source: Path, flags: Sequence[str]) -> str:
    """The build's cache key: a hash of the source, the compiler's version, the flags and the
    CPU."""
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=60
    ).stdout.splitlines()[:1]
    return hashlib.sha256(
        "\0".join([source.read_text(), *version, *flags, cpu_signature()]).encode()
    ).hexdigest()[:16]


def compile_source(compiler: str, source: Path, flags: Sequence[str]) -> bytes:
    """``source`` built by ``compiler`` with ``flags``, as the bytes of a shared library.  The
    compiler writes into a private temporary folder; :func:`kernel_cache.load_library` publishes
    the bytes."""
    with tempfile.TemporaryDirectory(prefix="ddkit-build-") as tmp:
        out = Path(tmp) / f"{source.stem}.so"
        done = subprocess.run(
            [compiler, *flags, "-o", str(out), str(source), "-lm"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"{compiler} exited with {done.returncode}")
        return out.read_bytes()


def library(
    name: str,
    source: Path,
    flags: Sequence[str],
    symbols: Sequence[str],
    *,
    what: str,
    instead: str,
) -> ctypes.CDLL | None:
    """Kernel ``name`` built from ``source`` and loaded, with every one of ``symbols``; or None
    after a one-line RuntimeWarning "ddkit: ... {what} ...; {instead}" that says why."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        warnings.warn(
            f"ddkit: no C compiler found (cc, gcc or $CC) to build {what}: {instead}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    try:
        path = default_cache_dir() / "kernels" / f"{name}-{build_key(compiler, source, flags)}.so"
        build = functools.partial(compile_source, compiler, source, flags)
        lib = load_library(path.parent, path.name, build)
        missing = [s for s in symbols if not hasattr(lib, s)]
        if missing:
            raise RuntimeError(f"{path} lacks {', '.join(missing)}")
        return lib
    except UntrustedCacheError as err:
        warnings.warn(
            f"ddkit: not loading {what}: {err} (remove it, or set DDKIT_CACHE to a folder of "
            f"this user's); {instead}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(
            f"ddkit: could not build {what} ({err}); {instead}", RuntimeWarning, stacklevel=3
        )
        return None
