"""Seeded Gaussian noise from a counter-based generator: Philox4x32-10 and Box-Muller in float32.

The samplers take ``generator=`` either a ``torch.Generator`` (torch's stream: with it ddkit's
DDPM and DDIM steps equal diffusers' step for step) or a :class:`PhiloxNoise`.  The latter is
what ``ddkit sample`` uses on a CPU: its C kernel draws a batch of noise 1.3-1.8x faster than
torch's CPU generator on one thread and about 2x faster on two (BENCHMARKS.md, "Sampler overhead
per step"), and the draw is most of a DDPM step's cost besides the network.  Its numbers depend only
on (seed, draw, element index): not on the thread count or the batch split, and, each operation
being one correctly rounded IEEE float32 step, not on the CPU.

The stream.  Draw number ``k`` of :class:`PhiloxNoise` ``(seed)`` fills n elements; element i
comes from block b = i // 4, the Philox4x32-10 block function (Salmon, Moraes, Dror and Shaw
2011, "Parallel random numbers: as easy as 1, 2, 3") of the counter (b mod 2^32, b // 2^32,
k mod 2^32, k // 2^32) under the key (seed mod 2^32, seed // 2^32).  Its words (r0, r1) give
elements 4b and 4b + 1, (r2, r3) elements 4b + 2 and 4b + 3, by Box-Muller (:func:`_box_muller`)
on 24-bit uniforms, as torch draws float32 normals: |z| <= sqrt(48 ln 2) = 5.77.

This module is the definition, in PyTorch ops; on CPU float32 the C kernel ``ddkit.cpu.philox``
computes the same bits, split over torch's threads (``tests/test_noise.py`` checks equality, the
Random123 known answers, and the moments, tails and independence of the output).  For another
dtype the float32 noise is converted and then scaled.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import cpu

MASK = 0xFFFFFFFF
M0, M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # and key increments (Weyl sequence)


def _f32(v: float) -> float:
    return float(np.float32(v))


# The constants of the Box-Muller arithmetic, each exactly a float32, in the order of philox.c's
# enum: both implementations read this one table.
_LN2_HI = 0.693145751953125  # ln 2 to 16 bits: (e - 24) ln2_hi is exact
COEFFICIENTS = {
    "sqrt2": _f32(math.sqrt(2.0)),
    "half": 0.5,
    "ln2_hi": _LN2_HI,
    "ln2_lo": _f32(math.log(2.0) - _LN2_HI),
    # ln m = s (2 + q (2/3 + q (2/5 + q (2/7 + q 2/9)))), s = (m - 1) / (m + 1), q = s^2
    "l9": _f32(2 / 9),
    "l7": _f32(2 / 7),
    "l5": _f32(2 / 5),
    "l3": _f32(2 / 3),
    "l1": 2.0,
    "angle": _f32(2.0 * math.pi / 2**24),  # radians per step of the 24-bit uniform
    # sin y = y + y^3 (s3 + y^2 (s5 + y^2 (s7 + y^2 s9))), Taylor to y^9 (error < 2e-9 at pi/4)
    "s9": _f32(1 / 362880),
    "s7": _f32(-1 / 5040),
    "s5": _f32(1 / 120),
    "s3": _f32(-1 / 6),
    # cos y = 1 + y^2 (c2 + y^2 (c4 + ... + y^2 c10)), Taylor to y^10 (error < 2e-10)
    "c10": _f32(-1 / 3628800),
    "c8": _f32(1 / 40320),
    "c6": _f32(-1 / 720),
    "c4": _f32(1 / 24),
    "c2": -0.5,
    "one": 1.0,
    "minus_two": -2.0,
}
_TABLE = torch.tensor(list(COEFFICIENTS.values()), dtype=torch.float32)
_K = COEFFICIENTS


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a * m for int64 tensors a holding 32-bit values, without
    overflowing int64: a * m = (a m_hi) 2^16 + a m_lo, each part below 2^48."""
    lo_part = a * (m & 0xFFFF)
    hi_part = a * (m >> 16)
    mid = lo_part + ((hi_part & 0xFFFF) << 16)
    return (hi_part >> 16) + (mid >> 32), mid & MASK


def philox4x32_10(counter, key: int) -> tuple[torch.Tensor, ...]:
    """The Philox4x32-10 block function: four int64 tensors (or ints) of 32-bit counter words
    and a 64-bit key -> four int64 tensors of 32-bit output words."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) for c in counter)
    k0, k1 = key & MASK, key >> 32
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, M0)
        hi1, lo1 = _mulhilo(c2, M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
    return c0, c1, c2, c3


def _box_muller(a: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float32 standard normals per pair of 32-bit words (int64 tensors a, c): u1 =
    ((a >> 8) + 1) / 2^24 in (0, 1], u2 = (c >> 8) / 2^24 in [0, 1), r = sqrt(-2 ln u1),
    (r cos 2 pi u2, r sin 2 pi u2).  One float32 rounding per operation, in philox.c's order."""
    k = ((a >> 8) + 1).to(torch.float32)  # exact: at most 2^24
    bits = k.view(torch.int32)
    m0 = ((bits & 0x7FFFFF) | 0x3F800000).view(torch.float32)  # k = m0 2^e0, m0 in [1, 2)
    big = m0 > _K["sqrt2"]
    m = torch.where(big, m0 * _K["half"], m0)
    e = (bits >> 23) - 127 + big.to(torch.int32)
    s = (m - _K["one"]) / (m + _K["one"])
    q = s * s
    p = q * _K["l9"] + _K["l7"]
    for name in ("l5", "l3", "l1"):
        p = p * q + _K[name]
    fe = (e - 24).to(torch.float32)
    ln_u = fe * _K["ln2_hi"] + (fe * _K["ln2_lo"] + s * p)
    # torch's float32 sqrt is not correctly rounded on every CPU; sqrt in float64 rounded to
    # float32 is (53 >= 2 * 24 + 2 bits), as is philox.c's
    r = torch.sqrt((ln_u * _K["minus_two"]).double()).float()

    kc = c >> 8
    j = (kc + (1 << 21)) >> 22  # the nearest quarter turn, 0..4
    y = (kc - j * (1 << 22)).to(torch.float32) * _K["angle"]  # |y| <= pi / 4, exactly reduced
    y2 = y * y
    sp = y2 * _K["s9"] + _K["s7"]
    for name in ("s5", "s3"):
        sp = sp * y2 + _K[name]
    sn = y + (y * y2) * sp
    cp = y2 * _K["c10"] + _K["c8"]
    for name in ("c6", "c4", "c2"):
        cp = cp * y2 + _K[name]
    cs = _K["one"] + y2 * cp
    quarter = j & 3  # (cos, sin) of y + quarter pi / 2
    swap = (quarter & 1) == 1
    cos_a, sin_a = torch.where(swap, sn, cs), torch.where(swap, cs, sn)
    cos_t = torch.where((quarter == 1) | (quarter == 2), -cos_a, cos_a)
    sin_t = torch.where(quarter >= 2, -sin_a, sin_a)
    return r * cos_t, r * sin_t


def reference_normal(n: int, seed: int, stream: int, std: float = 1.0, device="cpu"):
    """Draw ``stream`` of ``seed``: n float32 normals times ``std``, by the PyTorch definition."""
    blocks = (n + 3) // 4
    b = torch.arange(blocks, dtype=torch.int64, device=device)
    counter = (b & MASK, b >> 32, stream & MASK, stream >> 32)
    r0, r1, r2, r3 = (w.expand(blocks) for w in philox4x32_10(counter, seed))
    z0, z1 = _box_muller(r0, r1)
    z2, z3 = _box_muller(r2, r3)
    z = torch.stack([z0, z1, z2, z3], 1).reshape(-1)[:n]
    return z * _f32(std) if _f32(std) != 1.0 else z


def _check_u64(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise ValueError(f"{name}={value!r} must be an integer in [0, 2**64)")
    return value


class PhiloxNoise:
    """Seeded N(0, std^2) noise, one Philox stream per draw (module docstring).

    ``normal(shape, std=, dtype=, device=)`` returns draw number :attr:`stream` and advances it:
    two sources made with the same seed give the same sequence of tensors.  The samplers accept
    one wherever they take ``generator=``."""

    def __init__(self, seed: int, *, stream: int = 0):
        self.seed = _check_u64("seed", seed)
        self.stream = _check_u64("stream", stream)

    def __repr__(self) -> str:
        return f"PhiloxNoise(seed={self.seed}, stream={self.stream})"

    def normal(self, shape, *, std: float = 1.0, dtype=None, device=None) -> torch.Tensor:
        """Draw :attr:`stream` as a tensor of ``shape``, N(0, std^2), then advance the stream.
        ``dtype`` (default float32) and ``device`` (default CPU) as for ``torch.empty``."""
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 <= std < math.inf:
            raise ValueError(f"std={std!r} must be a finite number >= 0")
        dtype = torch.float32 if dtype is None else dtype
        device = torch.device("cpu" if device is None else device)
        shape = tuple(int(d) for d in shape)
        n = math.prod(shape)
        stream = self.stream
        self.stream = _check_u64("stream", stream + 1)
        scale = float(std) if dtype == torch.float32 else 1.0  # scaled in float32 by the draw
        if device.type == "cpu" and cpu.enabled("philox") and cpu.philox.library() is not None:
            z = cpu.philox.normal_(torch.empty(n), self.seed, stream, _f32(scale), _TABLE)
        else:
            z = reference_normal(n, self.seed, stream, scale, device)
        z = z.reshape(shape)
        if dtype != torch.float32:
            z = z.to(dtype)
            if std != 1.0:
                z = z.mul_(std)
        return z
