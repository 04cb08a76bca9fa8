"""The CPU kernel of ddkit's Philox noise (``philox.c``): the same bits as the PyTorch definition
in :mod:`ddkit.noise`, several times faster than that and about twice as fast as torch's own CPU
generator on one thread (figures in BENCHMARKS.md), and split over torch's threads.

Built like every ddkit kernel (``build.py``), with ``-ffp-contract=off`` on top: fusing a multiply
and an add into one rounding would change the numbers.  Without a compiler, or with a refused
cache, :func:`library` is None and :mod:`ddkit.noise` computes the same numbers with PyTorch ops.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from . import build

SOURCE = Path(__file__).with_name("philox.c")
FLAGS = [*build.FLAGS, "-ffp-contract=off"]
SYMBOLS = ("philox_normal", "philox_words")


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None after a one-line warning (see ``build.py``)."""
    lib = build.library(
        "philox",
        SOURCE,
        FLAGS,
        SYMBOLS,
        what="the Philox noise CPU kernel",
        instead="noise is drawn with PyTorch ops (slower, same numbers)",
    )
    if lib is None:
        return None
    ptr, i64, u64, u32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32
    lib.philox_normal.restype = None
    lib.philox_normal.argtypes = [ptr, i64, u64, u64, ctypes.c_float, ptr, ctypes.c_int]
    lib.philox_words.restype = None
    lib.philox_words.argtypes = [ptr, u64, i64, u32, u32, u64]
    return lib


def normal_(out: torch.Tensor, seed: int, stream: int, std: float, constants: torch.Tensor):
    """Fill ``out`` (contiguous fp32 CPU) with draw ``stream`` of ``seed`` times ``std``; the
    caller has checked that :func:`library` is not None."""
    library().philox_normal(
        out.data_ptr(),
        out.numel(),
        seed,
        stream,
        std,
        constants.data_ptr(),
        torch.get_num_threads(),
    )
    return out


def words(first: int, blocks: int, c2: int, c3: int, key: int) -> torch.Tensor:
    """The raw Philox4x32-10 words [blocks, 4] of counters (first + b, c2, c3) under ``key``
    (64-bit; the counter's first two words are the 64-bit block number), as int64."""
    out = torch.empty(blocks, 4, dtype=torch.int32)
    library().philox_words(out.data_ptr(), first, blocks, c2, c3, key)
    return out.to(torch.int64) & 0xFFFFFFFF
