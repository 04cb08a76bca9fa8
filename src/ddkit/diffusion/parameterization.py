"""What a network predicts, and the one place where its output becomes (eps, x0).

With a = sqrt(alpha_bar_t) and s = sqrt(1 - alpha_bar_t), x_t = a x0 + s eps, and
  * EPS: the network predicts eps;            x0 = (x_t - s eps) / a
  * X0:  the network predicts x0;             eps = (x_t - a x0) / s
  * V:   the network predicts v = a eps - s x0 (Salimans & Ho 2022);
                                              x0 = a x_t - s v,  eps = s x_t + a v
The score of q(x_t) is -eps / s.
"""

from __future__ import annotations

import enum

import torch


class Prediction(enum.Enum):
    """What the network predicts: eps, x0 or v = a eps - s x0."""

    EPS = "eps"
    X0 = "x0"
    V = "v"

    @classmethod
    def parse(cls, value: str | Prediction) -> Prediction:
        """The member named by ``value`` (a member or its string value)."""
        if isinstance(value, Prediction):
            return value
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown prediction {value!r}; allowed: {allowed}") from None

    def to_eps_x0(self, out: torch.Tensor, x_t: torch.Tensor, a, s):
        """(eps, x0) from a network output ``out`` at x_t; a, s are scalars or broadcastable."""
        if self is Prediction.EPS:
            return out, (x_t - s * out) / a
        if self is Prediction.X0:
            return (x_t - a * out) / s, out
        return s * x_t + a * out, a * x_t - s * out

    def target(self, x0: torch.Tensor, eps: torch.Tensor, a, s) -> torch.Tensor:
        """The regression target for this prediction type (what L_simple compares against)."""
        if self is Prediction.EPS:
            return eps
        if self is Prediction.X0:
            return x0
        return a * eps - s * x0


def eps_to_x0(eps, x_t, a, s):
    """x0 = (x_t - s eps) / a, with a = sqrt(alpha_bar_t) and s = sqrt(1 - alpha_bar_t)."""
    return (x_t - s * eps) / a


def x0_to_eps(x0, x_t, a, s):
    """eps = (x_t - a x0) / s, with a = sqrt(alpha_bar_t) and s = sqrt(1 - alpha_bar_t)."""
    return (x_t - a * x0) / s


def score_from_eps(eps, s):
    """Score grad log q(x_t) = -eps / sqrt(1 - alpha_bar_t)."""
    return -eps / s
