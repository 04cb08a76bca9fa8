"""CPU-only fast paths of the U-Net, behind one switch and one eligibility check.

The model files (``ddkit.models``) are plain PyTorch; at two places they ask this package whether
a call may take a faster CPU route that computes the same function up to rounding:

* :func:`group_norm_silu`: GroupNorm + SiLU (+ the time-embedding shift before it, + dropout after
  it) as one C kernel compiled on first use (``gn_silu.py``, ``gn_silu.c``);
* :func:`upsample_conv`: nearest-neighbour x2 upsampling followed by a 3x3 convolution as four 2x2
  convolutions on the low-resolution grid (``upsample.py``), where :func:`subpixel_pays`;
* :func:`winograd_conv3x3`: a 3x3 convolution by Winograd F(2x2, 3x3) (``winograd.py``), where
  :func:`winograd_pays` (AVX2 CPUs, many channels).

One more path serves the samplers, not the U-Net: ``philox`` (``philox.py``, ``philox.c``), the
C kernel of :class:`ddkit.noise.PhiloxNoise`, which computes the same bits as its PyTorch
definition.  The C kernels are built on first use by ``build.py``.

The one eligibility check is :func:`fast_path`: every tensor of the call is a plain fp32 CPU
tensor, outside autocast, ``torch.compile``, ``torch.func`` transforms and forward-mode AD, and
the switch is on.  So no path measured on a CPU ever runs on CUDA or MPS, in bf16, or under a
compiler that picks its own kernels.

The switch: ``DDKIT_CPU_FAST_PATHS=0`` in the environment turns every path off for the process;
``with ddkit.cpu.disabled():`` (all) or ``disabled("gn_silu")`` (one, by name in
:data:`FAST_PATHS`) turns them off for a block of code, as the tests and the throughput benchmark
do.  Each path's share of a training step is in BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch.autograd import forward_ad

from . import philox
from .gn_silu import group_norm_silu, kernel_applies
from .upsample import subpixel_pays, upsample_conv
from .winograd import winograd_conv3x3, winograd_pays

FAST_PATHS = ("gn_silu", "philox", "subpixel", "winograd")

_off: set[str] = set(FAST_PATHS) if os.environ.get("DDKIT_CPU_FAST_PATHS") == "0" else set()


@contextlib.contextmanager
def disabled(*names: str) -> Iterator[None]:
    """Turn the named fast paths (all of :data:`FAST_PATHS` when none is named) off inside the
    ``with`` block; the previous state comes back after it."""
    unknown = sorted(set(names) - set(FAST_PATHS))
    if unknown:
        raise ValueError(f"unknown CPU fast paths {unknown}; the paths are {list(FAST_PATHS)}")
    before = set(_off)
    _off.update(names or FAST_PATHS)
    try:
        yield
    finally:
        _off.clear()
        _off.update(before)


def enabled(name: str) -> bool:
    """Whether the fast path ``name`` is switched on (see :func:`disabled`)."""
    return name not in _off


def is_transformed(t: torch.Tensor) -> bool:
    """Whether ``t`` is a ``torch.func`` wrapper (vmap, grad, jacrev, ...).  The one use of a
    private torch API in ddkit; ``tests/test_cpu.py`` fails loudly if torch changes it."""
    from torch._C._functorch import is_functorch_wrapped_tensor

    return is_functorch_wrapped_tensor(t)


def fast_path(name: str, *tensors: torch.Tensor | None) -> bool:
    """The eligibility check of every CPU fast path: path ``name`` is switched on, and every
    tensor given (None entries are skipped) is a plain fp32 CPU tensor, outside ``torch.compile``,
    CPU autocast, ``torch.func`` transforms and forward-mode AD."""
    if torch.compiler.is_compiling():  # first: Dynamo cannot trace the checks below
        return False
    if name in _off or torch.is_autocast_enabled("cpu"):
        return False
    return all(
        t is None
        or (
            t.device.type == "cpu"
            and t.dtype == torch.float32
            and not is_transformed(t)
            and forward_ad.unpack_dual(t).tangent is None
        )
        for t in tensors
    )


__all__ = [
    "FAST_PATHS",
    "disabled",
    "enabled",
    "fast_path",
    "group_norm_silu",
    "is_transformed",
    "kernel_applies",
    "philox",
    "subpixel_pays",
    "upsample_conv",
    "winograd_conv3x3",
    "winograd_pays",
]
