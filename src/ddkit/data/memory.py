"""Examples handed to ddkit in Python (``ddkit.train``, ``Trainer(dataset=...)``): tensors,
numpy arrays or torch Datasets as a ddkit :class:`~ddkit.data.base.Dataset` named ``"memory"``.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import ArrayDataset, DataError, Dataset
from .config import MEMORY


def as_dataset(data) -> Dataset:
    """A ddkit :class:`~ddkit.data.Dataset` of ``data``: a ddkit Dataset as it is; a tensor or
    numpy array [N, *shape] (uint8 images, or floats in [-1, 1]); or any map-style torch
    ``Dataset`` whose items are such arrays or ``(x, label)`` pairs (read once into memory)."""
    duck = ("get_batch", "shape", "name", "quantized", "__len__")
    if isinstance(data, Dataset) or all(hasattr(data, a) for a in duck):
        return data  # a ddkit Dataset, or one with its whole interface
    labels = None
    if isinstance(data, torch.utils.data.Dataset) and not torch.is_tensor(data):
        if not hasattr(data, "__len__") or len(data) == 0:
            raise DataError("the torch Dataset is empty or has no length")
        items = [data[i] for i in range(len(data))]
        if isinstance(items[0], tuple | list):  # (x,), (x, label) or (x, label, ...)
            if len(items[0]) > 1:
                labels = _labels([it[1] for it in items])
            items = [it[0] for it in items]
        try:
            data = torch.stack([torch.as_tensor(np.asarray(it)) for it in items])
        except (TypeError, ValueError, RuntimeError) as e:
            raise DataError(
                f"the torch Dataset's items are not arrays of one shape ({e})"
            ) from None
    try:
        x = data.detach().cpu() if torch.is_tensor(data) else torch.as_tensor(np.asarray(data))
    except (TypeError, ValueError, RuntimeError):
        kind = type(data).__name__
        raise DataError(
            f"data of type {kind} is not a tensor, an array or a torch Dataset"
        ) from None
    if x.ndim < 2:
        raise DataError(f"data must be [N, *shape] with N examples, got shape {tuple(x.shape)}")
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        raise DataError(
            f"images of shape {tuple(x.shape)} look like [N, H, W, C]; ddkit takes [N, C, H, W] "
            "(x.permute(0, 3, 1, 2))"
        )
    if x.dtype != torch.uint8:
        if not x.is_floating_point():
            raise DataError(f"data must be uint8 images or floats in [-1, 1], got {x.dtype}")
        x = x.float()
        if not torch.isfinite(x).all():
            raise DataError("data holds NaN or infinite values")
    return ArrayDataset(MEMORY, x, labels=labels)


def _labels(values) -> torch.Tensor:
    """Class indices [N] from per-item labels (integers, or 0-d integer tensors/arrays)."""
    try:
        items = [np.asarray(v).item() for v in values]
        if not all(isinstance(i, int | bool) or float(i).is_integer() for i in items):
            raise ValueError("not whole numbers")
        out = torch.as_tensor([int(i) for i in items], dtype=torch.long)
    except (TypeError, ValueError) as e:
        raise DataError(f"labels must be one integer class index per item ({e})") from None
    if (out < 0).any():
        raise DataError("labels must be class indices >= 0")
    return out
