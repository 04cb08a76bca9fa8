"""Samplers: pure functions ``sample_x(denoiser, x_T, timesteps, *, generator=None,
callback=None, **options) -> x_0`` over an explicit decreasing list of timesteps.

``SAMPLERS`` maps the CLI's names to the function, its fixed options and its cost in model calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .ddim import ddim_invert, sample_ddim, slerp
from .ddpm import sample_ddpm
from .ode import sample_adams, sample_dpmpp, sample_dpmpp_2m, sample_heun
from .stochastic import langevin_correct, sample_euler_maruyama, sample_pc


@dataclass(frozen=True)
class SamplerInfo:
    """A named sampler: ``fn``, the ``options`` it is always called with, and
    ``model_calls(steps, options)``, its cost in model evaluations.  Calling it calls ``fn``."""

    fn: Callable
    options: dict = field(default_factory=dict)  # fixed options passed to fn
    model_calls: Callable[[int, dict], int] = lambda steps, opts: steps  # noqa: E731

    def __call__(self, denoiser, x_T, timesteps, **kwargs):
        return self.fn(denoiser, x_T, timesteps, **{**self.options, **kwargs})

    def nfe(self, steps: int, **options) -> int:
        """Model evaluations for ``steps`` timesteps with these options."""
        return self.model_calls(steps, {**self.options, **options})


def _adams_calls(steps: int, options: dict) -> int:
    """One call per step; ``last="posterior"`` makes the last ``tail`` (default 1) steps draws of
    ``krylov`` (default 1) Jacobian-vector products each, counted as two calls per product (the
    network and its forward derivative)."""
    if options.get("last") != "posterior":
        return steps
    return steps + options.get("tail", 1) * (2 * options.get("krylov", 1) - 1)


def _ddpm_calls(steps: int, options: dict) -> int:
    """One call per step with a fixed variance; with ``variance="tweedie"`` one Jacobian-vector
    product per probe per step, with ``"tweedie_jacobian"`` ``krylov`` of them, each counted as
    two calls as in :func:`_adams_calls`."""
    variance = options.get("variance")
    if variance == "tweedie":
        return 2 * options.get("probes", 1) * steps
    if variance == "tweedie_jacobian":
        return 2 * options.get("krylov", 1) * steps
    return steps


SAMPLERS: dict[str, SamplerInfo] = {
    "ddpm": SamplerInfo(sample_ddpm, model_calls=_ddpm_calls),
    "ddim": SamplerInfo(sample_ddim),
    "euler_maruyama": SamplerInfo(sample_euler_maruyama),
    "pc": SamplerInfo(sample_pc, model_calls=lambda n, o: n * (1 + o.get("corrector_steps", 1))),
    "heun": SamplerInfo(sample_heun, model_calls=lambda n, o: 2 * n - 1),
    "dpmpp_2m": SamplerInfo(sample_dpmpp, {"order": 2}),
    "dpmpp_3m": SamplerInfo(sample_dpmpp, {"order": 3}),
    "adams2": SamplerInfo(sample_adams, {"order": 2}, model_calls=_adams_calls),
    "adams3": SamplerInfo(sample_adams, {"order": 3}, model_calls=_adams_calls),
}


def get_sampler(name: str) -> SamplerInfo:
    """The :class:`SamplerInfo` of ``name`` in ``SAMPLERS``; ValueError naming the allowed ones."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}") from None


__all__ = [
    "SAMPLERS",
    "SamplerInfo",
    "get_sampler",
    "sample_ddpm",
    "sample_ddim",
    "ddim_invert",
    "slerp",
    "sample_euler_maruyama",
    "sample_pc",
    "langevin_correct",
    "sample_heun",
    "sample_dpmpp",
    "sample_dpmpp_2m",
    "sample_adams",
]
