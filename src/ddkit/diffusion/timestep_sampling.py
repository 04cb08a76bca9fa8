"""Which timesteps to train on: samplers returning (t, weights) with E[weights * L_t] equal to
the uniform mean (1/T) sum_t L_t, so that the weighted loss stays unbiased (improved DDPM,
Nichol & Dhariwal 2021, sec. 3.3).  Re-exported by :mod:`ddkit.diffusion.losses`.
"""

from __future__ import annotations

import torch


def check_int(name: str, value, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int, or ValueError unless it is an integer in [low, high]."""
    bad = isinstance(value, bool) or not isinstance(value, int) or value < low
    if bad or (high is not None and value > high):
        raise ValueError(f"{name}={value!r} must be an integer in {low}..{high or 'inf'}")
    return value


class UniformSampler:
    """t ~ Uniform{0..T-1} with weights 1 (DDPM Algorithm 1)."""

    def __init__(self, T: int):
        self.T = check_int("T", T)

    def probabilities(self) -> torch.Tensor:
        """p_t, [T] float64, summing to 1."""
        return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)

    def sample(self, batch_size: int, generator: torch.Generator | None = None, device="cpu"):
        """(t [N] long, weights [N] float32) with t ~ p and weights 1 / (T p_t), so that
        E[weights * L_t] = (1/T) sum_t L_t: the weighted loss is unbiased for the uniform mean."""
        p = self.probabilities()
        t = torch.multinomial(p, check_int("batch_size", batch_size), True, generator=generator)
        w = 1.0 / (self.T * p[t])
        return t.to(device), w.to(device=device, dtype=torch.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors that :meth:`probabilities` depends on (none: uniform is stateless)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"a uniform timestep sampler has no state; got {sorted(state)}")


class LossSecondMomentSampler(UniformSampler):
    """Importance sampling of t (improved DDPM sec. 3.3): p_t proportional to sqrt(E[L_t^2]) over
    the last ``history`` losses seen at t, mixed with uniform: p = (1 - u) p + u / T.  Uniform
    until every t has ``history`` losses.  ``update`` must see the losses of all ranks under DDP.
    """

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 1e-3):
        super().__init__(T)
        check_int("history", history)
        if not 0.0 < uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob={uniform_prob!r} must lie in (0, 1] so every p_t > 0")
        self.history, self.uniform_prob = history, float(uniform_prob)
        self._losses = torch.zeros(T, history, dtype=torch.float64)
        self._count = torch.zeros(T, dtype=torch.long)

    @property
    def warmed_up(self) -> bool:
        """True once every t has ``history`` losses (until then p is uniform)."""
        return bool((self._count >= self.history).all())

    def probabilities(self) -> torch.Tensor:
        """p_t, [T] float64, summing to 1: proportional to sqrt(E[L_t^2]) mixed with uniform
        once warmed up (and while some loss is positive), else uniform."""
        if not self.warmed_up:
            return super().probabilities()
        p = self._losses.pow(2).mean(dim=1).sqrt()
        if not float(p.sum()) > 0.0:
            return super().probabilities()
        return (1.0 - self.uniform_prob) * p / p.sum() + self.uniform_prob / self.T

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-example losses [N] at timesteps t [N] (detached), overwriting the oldest."""
        t = t.detach().reshape(-1).cpu().long()
        losses = losses.detach().reshape(-1).cpu().double()
        if t.shape != losses.shape:
            raise ValueError(f"t and losses sizes differ: {t.numel()} vs {losses.numel()}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.T):
            raise ValueError(f"t holds indices outside 0..{self.T - 1}")
        for ti, li in zip(t.tolist(), losses.tolist(), strict=True):  # a ring buffer per t
            self._losses[ti, int(self._count[ti]) % self.history] = li
            self._count[ti] += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The loss history: ``losses`` [T, history] float64 and ``count`` [T] long (live)."""
        return {"losses": self._losses, "count": self._count}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the loss history that :meth:`state_dict` returned."""
        self._losses.copy_(state["losses"])
        self._count.copy_(state["count"])
