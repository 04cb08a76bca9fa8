"""The one interface every sampler uses: ``denoiser(x_t, t) -> (eps, x0)``.

A :class:`Denoiser` wraps a network ``model(x_t, t) -> output`` (``t`` a [N] long tensor), the
:class:`NoiseSchedule` it was trained with and its :class:`Prediction` type.  Samplers never branch
on the parameterization: they only see (eps, x0).  ``Denoiser.estimate(x_t, t)`` makes the same
model call but returns an :class:`Estimate`, which forms eps and x0 only when asked and computes a
sampler step's linear combination of (x_t, x0, eps) directly from the model output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .parameterization import Prediction
from .schedule import NoiseSchedule

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# When a trained model's x0_hat is clamped to [-1, 1] at every sampling step: "auto" for 8-bit
# image data (as DDPM's code and diffusers' ``clip_sample``), "on" always, "off" never (as DDIM's
# code in its generalized steps, which only clamps the final image)
CLIP_X0 = ("auto", "on", "off")


def check_clip_x0(clip_x0: str) -> str:
    """``clip_x0`` if it is one of :data:`CLIP_X0`, else a ValueError naming the allowed values."""
    if clip_x0 not in CLIP_X0:
        raise ValueError(f"clip_x0={clip_x0!r} is not allowed; allowed: {', '.join(CLIP_X0)}")
    return clip_x0


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
        est = self.estimate(x_t, t)
        return est.eps, est.x0

    def estimate(self, x_t: torch.Tensor, t: int) -> Estimate:
        """One model call at (x_t, t); eps and x0 are formed from its output on first use."""
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
        # Prediction.to_eps_x0 as (x_t, out) coefficients, from x_t = a x0 + s eps, v = a eps - s x0
        if self.prediction is Prediction.EPS:
            est = Estimate(x_t, out, x0=(1.0 / a, -s / a), eps=(0.0, 1.0))
        elif self.prediction is Prediction.X0:
            est = Estimate(x_t, out, x0=(0.0, 1.0), eps=(1.0 / s, -a / s))
        else:
            est = Estimate(x_t, out, x0=(a, -s), eps=(s, a))
        if self.clip is not None:  # x0 clamped, eps recomputed from it: x_t = a x0 + s eps holds
            x0 = est.x0.clamp(*self.clip)
            est = Estimate(x_t, x0, x0=(0.0, 1.0), eps=(1.0 / s, -a / s))
        return est


class Estimate:
    """The denoiser's eps_hat and x0_hat at one (x_t, t), formed on first use.

    Both are affine in (x_t, b) with scalar coefficients, b being one tensor (the raw model output,
    or the clipped x0_hat): x0_hat = x0[0] x_t + x0[1] b and eps_hat = eps[0] x_t + eps[1] b.  A
    sampler step that is a fixed linear combination of x_t, x0_hat and eps_hat is then two passes
    over the batch (:meth:`combine`) whatever the parameterization, instead of forming both first.
    ``Estimate.of(x_t, eps, x0)`` holds an explicit pair instead (any denoiser callable).
    """

    def __init__(
        self,
        x_t: torch.Tensor,
        b: torch.Tensor | None,
        *,
        x0: tuple[float, float] = (0.0, 1.0),
        eps: tuple[float, float] = (0.0, 1.0),
    ):
        self.x_t, self.b = x_t, b
        self._x0_coef, self._eps_coef = x0, eps
        self._x0: torch.Tensor | None = None
        self._eps: torch.Tensor | None = None

    @classmethod
    def of(cls, x_t: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor) -> Estimate:
        """An Estimate holding an explicit (eps, x0) pair at x_t (from any denoiser callable)."""
        est = cls(x_t, None)
        est._eps, est._x0 = eps, x0
        return est

    @property
    def x0(self) -> torch.Tensor:
        """x0_hat, shaped like x_t: formed on first access and kept (or as given to :meth:`of`)."""
        if self._x0 is None:
            self._x0 = self._affine(self._x0_coef)
        return self._x0

    @property
    def eps(self) -> torch.Tensor:
        """eps_hat, shaped like x_t: formed on first access and kept (or as given to :meth:`of`)."""
        if self._eps is None:
            self._eps = self._affine(self._eps_coef)
        return self._eps

    def _affine(self, coef: tuple[float, float]) -> torch.Tensor:
        c_x, c_b = coef
        if (c_x, c_b) == (0.0, 1.0):
            return self.b
        out = torch.mul(self.b, c_b)
        return out.add_(self.x_t, alpha=c_x) if c_x != 0.0 else out

    def combine(
        self,
        *,
        x_t: float = 0.0,
        x0: float = 0.0,
        eps: float = 0.0,
        add_to: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_t * x_t + x0 * x0_hat + eps * eps_hat (scalar weights): a new tensor, or added in
        place to ``add_to`` and returned."""
        if self.b is None:
            terms = [(self._x0, x0), (self._eps, eps), (self.x_t, x_t)]
        else:
            c_x = x_t + x0 * self._x0_coef[0] + eps * self._eps_coef[0]
            c_b = x0 * self._x0_coef[1] + eps * self._eps_coef[1]
            terms = [(self.b, c_b), (self.x_t, c_x)]
        terms = [(v, c) for v, c in terms if c != 0.0]
        if add_to is None:
            v, c = terms.pop(0) if terms else (self.x_t, 0.0)
            add_to = torch.mul(v, c)
        for v, c in terms:
            add_to.add_(v, alpha=c)
        return add_to
