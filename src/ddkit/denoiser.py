"""The one interface every sampler uses: ``denoiser(x_t, t) -> (eps, x0)``.

A :class:`Denoiser` wraps a network ``model(x_t, t) -> output`` (``t`` a [N] long tensor), the
:class:`NoiseSchedule` it was trained with and its :class:`Prediction` type.  Samplers never branch
on the parameterization: they only see (eps, x0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .parameterization import Prediction
from .schedule import NoiseSchedule

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Denoiser:
    """(model, schedule, prediction) -> ``(eps, x0)`` at integer timestep t.

    ``clip``: optional (low, high) range; x0 is clamped to it and eps recomputed from the clamped
    x0 so that the pair stays consistent with x_t (off by default: right for images in [-1, 1],
    wrong for unbounded data).
    """

    def __init__(
        self,
        model: Model,
        schedule: NoiseSchedule,
        prediction: Prediction | str = Prediction.EPS,
        *,
        clip: tuple[float, float] | None = None,
    ):
        self.model = model
        self.schedule = schedule
        self.prediction = Prediction.parse(prediction)
        if clip is not None:
            lo, hi = clip
            if not lo < hi:
                raise ValueError(f"clip range {clip!r} must have low < high")
        self.clip = clip
        if self.prediction is Prediction.EPS and schedule.alphas_cumprod[-1] == 0.0:
            raise ValueError(
                "a zero-terminal-SNR schedule leaves x0 undefined for eps prediction at the last "
                "step; use prediction 'v' or 'x0'"
            )

    def __call__(self, x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.is_tensor(x_t) or not x_t.is_floating_point():
            raise ValueError(f"x_t must be a floating-point tensor, got {type(x_t).__name__}")
        ab = self.schedule.alpha_bar(t)
        if t < 0:
            raise ValueError(f"the denoiser is not defined at the data index {t}")
        a, s = ab**0.5, (1.0 - ab) ** 0.5
        t_vec = torch.full((x_t.shape[0],), int(t), dtype=torch.long, device=x_t.device)
        out = self.model(x_t, t_vec)
        if out.shape != x_t.shape:
            raise ValueError(
                f"model output shape {tuple(out.shape)} does not match x_t {tuple(x_t.shape)}"
            )
        out = out.to(x_t.dtype)
        # the conversions of Prediction.to_eps_x0, fused for scalar a, s (one pass each)
        if self.prediction is Prediction.EPS:
            eps, x0 = out, torch.add(x_t, out, alpha=-s).div_(a)
        elif self.prediction is Prediction.X0:
            eps, x0 = torch.add(x_t, out, alpha=-a).div_(s), out
        else:
            eps = torch.mul(x_t, s).add_(out, alpha=a)
            x0 = torch.mul(x_t, a).add_(out, alpha=-s)
        if self.clip is not None:
            x0 = x0.clamp(*self.clip)
            eps = torch.add(x_t, x0, alpha=-a).div_(s)
        return eps, x0
