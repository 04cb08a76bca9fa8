"""Exponential moving average of a model's parameters (Polyak averaging, as DDPM's 0.9999).

Only parameters are averaged.  Buffers (e.g. running statistics) are not: an EMA copy of the
model takes the online model's buffers as they are.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``shadow <- d shadow + (1 - d) param`` after each optimizer step, with the warm-up
    d_k = min(decay, (1 + k) / (10 + k)) at update k (k = 0, 1, ...) when ``warmup`` is on."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay={decay!r} must lie in [0, 1)")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.updates = 0
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters()}

    def current_decay(self) -> float:
        """The decay the next :meth:`update` applies."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the averages towards ``model``'s parameters (after an optimizer step)."""
        d = self.current_decay()
        names, params = zip(*model.named_parameters(), strict=True)
        if list(names) != list(self.shadow):
            raise ValueError("the model's parameters are not those the EMA was made from")
        for name, p in zip(names, params, strict=True):
            self.shadow[name].lerp_(p.detach(), 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged parameters into ``model`` (its buffers are left as they are)."""
        for n, p in model.named_parameters():
            p.copy_(self.shadow[n])

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` (buffers included, as they are) holding the averaged
        parameters."""
        ema_model = copy.deepcopy(model)
        self.copy_to(ema_model)
        return ema_model

    def state_dict(self) -> dict:
        """Decay, warm-up and update count, JSON-able (the averages are :attr:`shadow`)."""
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates}

    def load_state_dict(self, state: dict, shadow: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`'s settings and the averaged parameters ``shadow``."""
        if set(shadow) != set(self.shadow):
            missing = sorted(set(self.shadow) ^ set(shadow))
            raise ValueError(f"EMA weights do not match the model (first difference: {missing[0]})")
        for n, v in shadow.items():
            self.shadow[n].copy_(v)
        self.decay, self.warmup = float(state["decay"]), bool(state["warmup"])
        self.updates = int(state["updates"])
