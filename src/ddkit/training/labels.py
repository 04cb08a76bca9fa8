"""Class labels in training: which data sets a class-conditional model can train on, and label
dropout (Ho & Salimans 2022), which trains the unconditional branch that guidance needs."""

from __future__ import annotations

import torch

from ..data.base import DataError


def class_names(num_classes: int, dataset) -> tuple[str, ...] | None:
    """The names of the ``num_classes`` classes a class-conditional model trains on (None for
    an unconditional model); DataError when ``dataset`` has no labels or labels outside
    0..num_classes-1."""
    if not num_classes:
        return None
    labels = getattr(dataset, "labels", None)
    name = getattr(dataset, "name", "the data")
    if labels is None:
        raise DataError(
            f"model.num_classes = {num_classes} needs labelled data, but {name} has no labels; "
            "use a labelled set (digits, mnist, fashion_mnist, a folder of class folders, hf "
            "with a label column, 8gaussians/moons/checkerboard) or set model.num_classes = 0"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"{name} has labels {low}..{high}; model.num_classes = {num_classes} allows "
            f"0..{num_classes - 1}: set model.num_classes = {high + 1}"
        )
    names = getattr(dataset, "class_names", None)
    if names is None or len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    return tuple(str(n) for n in names)


def drop_labels(y: torch.Tensor, p_uncond: float, null: int, generator) -> torch.Tensor:
    """``y`` with each label replaced by the ``null`` label with probability ``p_uncond`` (one
    uniform draw per label from ``generator``, also when p_uncond is 0, so a run's random
    stream does not depend on it)."""
    drop = torch.rand(y.shape[0], generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(y, null), y)
