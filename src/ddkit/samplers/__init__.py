"""Samplers: pure functions ``sample_x(denoiser, x_T, timesteps, *, generator=None,
callback=None, **options) -> x_0`` over an explicit decreasing list of timesteps.

``SAMPLERS`` maps the CLI's names to (function, model calls per step, options it accepts).
"""

from __future__ import annotations

from dataclasses import dataclass

from .ddim import ddim_invert, sample_ddim, slerp
from .ddpm import sample_ddpm
from .ode import sample_dpmpp_2m, sample_heun
from .sde import langevin_correct, sample_euler_maruyama, sample_pc


@dataclass(frozen=True)
class SamplerInfo:
    fn: object
    calls_per_step: int  # model calls per timestep (the last step may use fewer: see steps_for_nfe)
    options: tuple[str, ...]
    last_step_calls: int | None = None

    def nfe(self, steps: int, **options) -> int:
        """Model calls for ``steps`` timesteps with these options."""
        per = self.calls_per_step + int(options.get("corrector_steps", 1 if self.fn is sample_pc else 0))
        last = per if self.last_step_calls is None else self.last_step_calls
        return per * (steps - 1) + last


SAMPLERS: dict[str, SamplerInfo] = {
    "ddpm": SamplerInfo(sample_ddpm, 1, ("variance",)),
    "ddim": SamplerInfo(sample_ddim, 1, ("eta",)),
    "euler_maruyama": SamplerInfo(sample_euler_maruyama, 1, ()),
    "pc": SamplerInfo(sample_pc, 1, ("snr", "corrector_steps")),
    "heun": SamplerInfo(sample_heun, 2, (), last_step_calls=1),
    "dpmpp_2m": SamplerInfo(sample_dpmpp_2m, 1, ("order",)),
}


def get_sampler(name: str) -> SamplerInfo:
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
    "sample_dpmpp_2m",
]
