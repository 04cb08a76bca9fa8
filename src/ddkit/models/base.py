"""What every model config provides, so that no caller inspects a config's fields to learn its
data shape."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class ModelConfig(Protocol):
    """A frozen dataclass describing one network.

    ``input_shape()`` is the shape of one example (``(C, H, W)`` for images, ``(D,)`` for
    vectors); ``build()`` makes the module, called as ``model(x_t [N, *input_shape], t [N] long)``
    and returning a tensor of x_t's shape (twice its channels with ``learn_sigma``).
    """

    learn_sigma: bool

    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example: ``(C, H, W)`` for images, ``(D,)`` for vectors."""
        ...

    def build(self) -> nn.Module:
        """A freshly initialised network of this architecture."""
        ...


def check_class_fields(num_classes, p_uncond) -> None:
    """ValueError unless ``num_classes`` is an int >= 0 (0: unconditional) and ``p_uncond`` (the
    label-dropout probability used in training) a number in [0, 1)."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0: unconditional), got {num_classes!r}")
    ok = isinstance(p_uncond, (int, float)) and not isinstance(p_uncond, bool)
    if not ok or not 0.0 <= p_uncond < 1.0:
        raise ValueError(f"p_uncond must be a number in [0, 1), got {p_uncond!r}")


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (only those requiring grad if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
