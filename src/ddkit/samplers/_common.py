"""Helpers shared by the samplers: validation and the (t, t_prev) walk."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from ..diffusion.denoiser import Estimate
from ..diffusion.schedule import DATA, check_index_list


class NoiseSource(Protocol):
    """What a sampler's ``generator=`` may be besides a ``torch.Generator``: an object whose
    ``normal(shape, std=, dtype=, device=)`` returns N(0, std^2) noise (:class:`ddkit.noise.
    PhiloxNoise`)."""

    def normal(self, shape, *, std: float = 1.0, dtype=None, device=None) -> torch.Tensor:
        """A new tensor of ``shape``, ``dtype`` on ``device``, of independent N(0, std^2)."""


NoiseGenerator = torch.Generator | NoiseSource | None
"""A sampler's ``generator=``: torch's default generator (None), a ``torch.Generator`` or a
:class:`NoiseSource`."""

Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
"""callback(i, t, x_t, x0_hat): called after the denoiser is evaluated at step i (timestep t)."""


def check_inputs(denoiser, x: torch.Tensor, timesteps: Sequence[int]) -> list[int]:
    """Validate a sampler's inputs; return the timesteps as a list of ints."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if x.ndim < 2:
        raise ValueError(f"x must be batched [N x ...], got shape {tuple(x.shape)}")
    ts = list(timesteps)
    bad = [t for t in ts if isinstance(t, bool) or int(t) != t]
    if bad:
        raise ValueError(f"timesteps must be integer indices, got {bad[:3]!r}")
    ts = [int(t) for t in ts]
    T = denoiser.schedule.T
    if not ts:
        raise ValueError("timesteps is empty; give at least one index")
    check_index_list(ts, T)
    rising = [(a, b) for a, b in zip(ts, ts[1:]) if a < b]
    if rising:
        raise ValueError(
            f"timesteps must be strictly decreasing (use ddkit.diffusion.schedule.timesteps); "
            f"{rising[0][0]} is followed by {rising[0][1]}"
        )
    return ts


def estimate(denoiser, x: torch.Tensor, t: int) -> Estimate:
    """One model call: ``denoiser.estimate`` (a :class:`ddkit.Denoiser`: eps and x0 formed on
    demand) or, for any other ``denoiser(x, t) -> (eps, x0)`` callable, its explicit pair."""
    fn = getattr(denoiser, "estimate", None)
    if fn is not None:
        return fn(x, t)
    eps, x0 = denoiser(x, t)
    return Estimate.of(x, eps, x0)


def pairs(ts: list[int]) -> list[tuple[int, int]]:
    """(t, t_prev) for each step; the last step goes to DATA (alpha_bar = 1)."""
    return list(zip(ts, ts[1:] + [DATA]))


def randn_like(x: torch.Tensor, generator: NoiseGenerator, std: float = 1.0) -> torch.Tensor:
    """Gaussian noise N(0, std^2) shaped like x (std applied while drawing: no extra pass).
    ``generator``: None (torch's default generator), a ``torch.Generator``, or a noise source
    with ``normal(shape, std=, dtype=, device=)`` such as :class:`ddkit.noise.PhiloxNoise`."""
    if generator is None or isinstance(generator, torch.Generator):
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        return out.normal_(0.0, std, generator=generator)
    return generator.normal(x.shape, std=std, dtype=x.dtype, device=x.device)


def rademacher_like(x: torch.Tensor, generator: NoiseGenerator) -> torch.Tensor:
    """Independent +-1 entries shaped like x, each with probability 1/2 (from a noise source: the
    sign of a Gaussian draw, whose exact zeros, of probability 2**-24 or less, count as +1)."""
    if generator is None or isinstance(generator, torch.Generator):
        u = torch.randint(0, 2, x.shape, generator=generator, device=x.device)
        return u.to(x.dtype) * 2 - 1
    z = generator.normal(x.shape, dtype=x.dtype, device=x.device)
    return torch.where(z >= 0, 1.0, -1.0).to(x.dtype)


def check_count(name: str, value) -> int:
    """``value`` as given; ValueError unless it is an integer >= 1 (a bool is refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")
    return value


def check_nonneg(name: str, value: float) -> float:
    """``value`` as a float; ValueError unless it is >= 0 (NaN is refused)."""
    v = float(value)
    if not v >= 0.0:  # also rejects NaN
        raise ValueError(f"{name}={value!r} must be >= 0")
    return v
