"""The VP-SDE view of a discrete schedule (Song et al. 2021, "Score-based generative modeling
through SDEs").

Time is measured by rho = -log(alpha_bar), the integrated beta: rho = 0 at the data, and
rho(t) = -log(alpha_bar_t) at index t.  In that time the forward VP-SDE is

    dx = -1/2 x d(rho) + dw,          x(rho) | x0 ~ N(exp(-rho/2) x0, (1 - exp(-rho)) I),

which is exactly the discrete process's marginal q(x_t | x_0) at every index.  Its reverse-time SDE
and probability-flow ODE share one drift (Anderson 1982; Song et al. eq. 13):

    dx = [-1/2 x - k score(x, rho)] d(rho) + c dw_bar,   k = 1, c = 1 (SDE);  k = 1/2, c = 0 (ODE)

with score = -eps_hat / sqrt(1 - alpha_bar).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .schedule import NoiseSchedule


class VPSDE:
    """The forward VP-SDE whose marginals are those of ``schedule`` at every index."""

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule

    def rho(self, t: int) -> float:
        """Integrated beta -log(alpha_bar_t); 0 at the data index, inf at zero terminal SNR."""
        ab = self.schedule.alpha_bar(t)
        return math.inf if ab == 0.0 else -math.log(ab)

    @staticmethod
    def drift(x: torch.Tensor) -> torch.Tensor:
        """Forward drift f(x) = -x/2 per unit rho (the diffusion coefficient g is 1)."""
        return -0.5 * x

    def marginal(self, x0: torch.Tensor, t: int) -> tuple[torch.Tensor, float]:
        """Mean and standard deviation of x(rho_t) given x0."""
        ab = self.schedule.alpha_bar(t)
        return math.sqrt(ab) * x0, math.sqrt(1.0 - ab)

    def reverse(self, denoiser, probability_flow: bool = False) -> ReverseVPSDE:
        """The reverse-time SDE (or, with ``probability_flow``, the probability-flow ODE)."""
        return ReverseVPSDE(self, denoiser, probability_flow)


@dataclass
class ReverseVPSDE:
    """The reverse-time VP-SDE of ``sde``, or with ``probability_flow`` its probability-flow
    ODE, driven by ``denoiser(x, t) -> (eps, x0)``."""

    sde: VPSDE
    denoiser: object
    probability_flow: bool

    @property
    def diffusion(self) -> float:
        """The diffusion coefficient c: 1 for the SDE, 0 for the probability-flow ODE."""
        return 0.0 if self.probability_flow else 1.0

    def drift(self, x: torch.Tensor, t: int):
        """(dx/d rho of the reverse process at index t, x0_hat); integrate with d rho < 0."""
        eps, x0 = self.denoiser(x, t)
        s = math.sqrt(1.0 - self.sde.schedule.alpha_bar(t))
        k = 0.5 if self.probability_flow else 1.0
        # f - k g^2 score with score = -eps / s
        return torch.add(self.sde.drift(x), eps, alpha=k / s), x0

    def score(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """grad log q(x_t) = -eps_hat / sqrt(1 - alpha_bar_t) at index t, shaped like x."""
        eps, _ = self.denoiser(x, t)
        return eps / -math.sqrt(1.0 - self.sde.schedule.alpha_bar(t))
