"""A fused CPU kernel for GroupNorm + SiLU (+ the time-embedding shift before it, + dropout after
it): the pair that precedes every convolution of the DDPM U-Net.

Unfused, PyTorch makes five passes over the activations in the forward (shift add, GroupNorm's
statistics and normalisation, SiLU, dropout's mask and product) and saves three full-size tensors
(GroupNorm's input, SiLU's input, the mask); the backward makes another five.  ``gn_silu.c`` does
two passes each way and keeps only the input, the (mean, 1/std) per group and, with dropout, a
16-bit mask: the backward pass recomputes the normalised values.  The dropout mask is a
counter-based hash of (seed, element index), drawn in the forward pass and kept as a 16-bit flag
per element (half the activations' size), which costs less than hashing again in the backward.

The C file is compiled on first use (``build.py``: ``cc -O3 -march=native -fopenmp``) into
``$DDKIT_CACHE/kernels`` (default ``~/.cache/ddkit/kernels``), keyed by the source, compiler and
CPU, and called through ctypes; it shares torch's OpenMP runtime and thread count.  The cache is
trusted only when the folder and files are the user's own, writable by nobody else and not
symbolic links, and a library is loaded only when its bytes match the SHA-256 stored beside it
when it was built (``kernel_cache.py``); otherwise it is rebuilt or, for a folder or file someone
else could write, refused with a warning.  Without a compiler, or with a refused cache,
:func:`library` is None and the U-Net runs the same function as PyTorch ops
(``ddkit.models.layers.GroupNormSiLU``).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from . import build

SOURCE = Path(__file__).with_name("gn_silu.c")
FLAGS = list(build.FLAGS)
SYMBOLS = ("gn_silu_forward", "gn_silu_backward", "gn_silu_scratch_per_thread")
DROP_BITS = 24  # the kernel's dropout draws 24 bits per element: p is rounded to 2**-24


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    ptr, i64, i32, u64, u32, f32 = (
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int,
        ctypes.c_uint64,
        ctypes.c_uint32,
        ctypes.c_float,
    )
    lib.gn_silu_forward.restype = None
    lib.gn_silu_forward.argtypes = (
        [ptr] * 4 + [i64] * 4 + [i32, f32, u64, u32, f32, i32] + [ptr] * 5
    )
    lib.gn_silu_backward.restype = None
    lib.gn_silu_backward.argtypes = [ptr] * 8 + [i64] * 4 + [i32, f32, i32] + [ptr] * 5
    lib.gn_silu_scratch_per_thread.restype = i64
    lib.gn_silu_scratch_per_thread.argtypes = [i64]
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (no C compiler, a failed build or load, or a cache folder or
    file that breaks the trust rules of ``kernel_cache.py``: then a one-line warning says why,
    once, and the U-Net uses PyTorch ops)."""
    lib = build.library(
        "gn_silu",
        SOURCE,
        FLAGS,
        SYMBOLS,
        what="the fused GroupNorm + SiLU CPU kernel",
        instead="the U-Net uses PyTorch ops (slower on CPU, same function)",
    )
    return None if lib is None else _declare(lib)


def kernel_applies(
    x: torch.Tensor, weight: torch.Tensor, groups: int, shift: torch.Tensor | None = None
) -> bool:
    """Whether the kernel can run this call, which :func:`ddkit.cpu.fast_path` has admitted: x
    [N, C, H, W] non-empty with fewer than 2**32 elements, C a multiple of ``groups``, weight (and
    bias) [C], shift [N, C] or None, and the kernel built.  Anything else takes the PyTorch ops,
    which raise their own errors for inconsistent shapes."""
    if x.ndim != 4 or x.numel() == 0 or x.numel() >= 2**32:
        return False
    n, c = x.shape[:2]
    return (
        groups > 0
        and c % groups == 0
        and tuple(weight.shape) == (c,)
        and (shift is None or tuple(shift.shape) == (n, c))
        and library() is not None
    )


def dropout_threshold(p: float) -> tuple[int, float]:
    """(threshold, scale) of the kernel's dropout: an element is kept when its 24-bit draw is >=
    threshold = round(p 2**24), so P(keep) = 1 - threshold / 2**24 and scale = 1 / P(keep) makes
    it unbiased.  threshold 0 means no dropout."""
    levels = 1 << DROP_BITS
    threshold = min(round(p * levels), levels - 1)
    return threshold, levels / (levels - threshold)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a tensor dense in it (and not also NCHW-contiguous), else NCHW."""
    nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format


def _layout(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """x as a dense tensor in NCHW or channels_last order (no copy when it already is one), and
    whether it is channels_last."""
    fmt = memory_format_of(x)
    return x.contiguous(memory_format=fmt), fmt == torch.channels_last


def _scratch(lib: ctypes.CDLL, threads: int, channels: int) -> torch.Tensor:
    """Per-thread working memory of the kernel (a few doubles per channel for each thread)."""
    per_thread = int(lib.gn_silu_scratch_per_thread(channels))
    return torch.empty(threads * per_thread, dtype=torch.float64)


def _p(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class GroupNormSiLUFunction(torch.autograd.Function):
    """y = dropout(SiLU(GroupNorm(x + shift[:, :, None, None]))) by the fused kernel.

    x [N, C, H, W] fp32 (NCHW or channels_last; y has x's layout), shift [N, C] or None, weight
    and bias [C], ``seed`` the dropout draw (ignored when ``threshold`` is 0)."""

    @staticmethod
    def forward(ctx, x, shift, weight, bias, groups, eps, threshold, scale, seed):
        """y [N, C, H, W] in x's layout; saves the inputs, the group mean and rstd [N, groups]
        and the dropout mask for the backward."""
        lib = library()
        x, nhwc = _layout(x)
        n, c, h, w = x.shape
        shift = None if shift is None else shift.contiguous()
        weight, bias = weight.contiguous(), bias.contiguous()
        y = torch.empty_like(x)
        mean = x.new_empty(n, groups)
        rstd = x.new_empty(n, groups)
        # the dropout mask, 16 bits per element in y's memory order, kept for the backward
        keep = torch.empty_like(x, dtype=torch.int16) if threshold else None
        threads = torch.get_num_threads()
        scratch = _scratch(lib, threads, c)
        lib.gn_silu_forward(
            _p(x), _p(shift), _p(weight), _p(bias), n, c, h * w, groups, int(nhwc), eps,
            seed, threshold, scale, threads, _p(scratch), _p(y), _p(mean), _p(rstd), _p(keep),
        )  # fmt: skip
        ctx.save_for_backward(x, shift, weight, bias, mean, rstd, keep)
        ctx.config = (groups, nhwc, scale)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        """(dx, dshift, dweight, dbias) from dy by the fused kernel; None for the other inputs."""
        lib = library()
        x, shift, weight, bias, mean, rstd, keep = ctx.saved_tensors
        groups, nhwc, scale = ctx.config
        dy = dy.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        n, c, h, w = x.shape
        dx = torch.empty_like(x)
        dgamma = x.new_empty(n, c)
        dbeta = x.new_empty(n, c)
        dshift = None if shift is None else x.new_empty(n, c)
        threads = torch.get_num_threads()
        scratch = _scratch(lib, threads, c)
        lib.gn_silu_backward(
            _p(dy), _p(x), _p(shift), _p(weight), _p(bias), _p(mean), _p(rstd), _p(keep), n, c,
            h * w, groups, int(nhwc), scale, threads, _p(scratch), _p(dx), _p(dgamma), _p(dbeta),
            _p(dshift),
        )  # fmt: skip
        return (dx, dshift, dgamma.sum(0), dbeta.sum(0)) + (None,) * 5


def group_norm_silu(
    x: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    groups: int,
    eps: float,
    dropout: float = 0.0,
) -> torch.Tensor:
    """``dropout(silu(group_norm(x + shift[:, :, None, None], groups, weight, bias, eps)))`` by
    the fused kernel.  The caller checks :func:`ddkit.cpu.fast_path` and :func:`kernel_applies`;
    their conditions are not re-checked here.  Dropout (training only: pass 0 in eval) draws its
    seed from torch's default generator; p is rounded to a multiple of 2**-24."""
    threshold, scale = dropout_threshold(dropout) if dropout > 0.0 else (0, 1.0)
    seed = int(torch.empty((), dtype=torch.int64).random_()) if threshold else 0
    return GroupNormSiLUFunction.apply(x, shift, weight, bias, groups, eps, threshold, scale, seed)
