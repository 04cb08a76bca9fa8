"""Examples handed to ddkit in Python (``ddkit.train``, ``Trainer(dataset=...)``): tensors,
numpy arrays, torch Datasets or ``.npy`` files as a ddkit :class:`~ddkit.data.base.Dataset`
named ``"memory"``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..progress import Progress
from ..resources import check_fits, check_regular_file
from .base import ArrayDataset, DataError, Dataset
from .config import MEMORY


def as_dataset(data, *, progress: bool = True) -> Dataset:
    """A ddkit :class:`~ddkit.data.Dataset` of ``data``: a ddkit Dataset as it is; a tensor or
    numpy array [N, *shape] (uint8 images, or floats in [-1, 1]); or any map-style torch
    ``Dataset`` whose items are such arrays or ``(x, label)`` pairs, read once into memory: its
    size is estimated from the first item and checked against the memory available before the
    rest is read, and ``progress`` shows the reading, with an ETA, when it takes over 5 s."""
    duck = ("get_batch", "shape", "name", "quantized", "__len__")
    if isinstance(data, Dataset) or all(hasattr(data, a) for a in duck):
        return data  # a ddkit Dataset, or one with its whole interface
    labels = None
    if isinstance(data, torch.utils.data.Dataset) and not torch.is_tensor(data):
        data, labels = _read_torch_dataset(data, progress)
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


def _read_torch_dataset(data, progress: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(examples [N, *shape], labels [N] or None) of a map-style torch Dataset, read item by
    item into one preallocated tensor."""
    if not hasattr(data, "__len__") or len(data) == 0:
        raise DataError("the torch Dataset is empty or has no length")
    n = len(data)
    first = _example(data[0], 0)
    x0 = first[0]
    if x0.dtype != torch.uint8 and not x0.is_floating_point():
        raise DataError(f"data must be uint8 images or floats in [-1, 1], got {x0.dtype}")
    dtype = torch.uint8 if x0.dtype == torch.uint8 else torch.float32
    need = n * x0.numel() * dtype.itemsize
    check_fits(
        {"examples": need},
        "cpu",
        f"reading the torch Dataset ({n} items of {list(x0.shape)}, {dtype})",
        "hand in a torch.utils.data.Subset of it",
    )
    out = torch.empty((n, *x0.shape), dtype=dtype)
    labels = [] if first[1] is not None else None
    with Progress(n, "reading the torch Dataset", unit="item", enabled=progress) as bar:
        for i in range(n):
            x, y = first if i == 0 else _example(data[i], i)
            if x.shape != x0.shape or (x.dtype == torch.uint8) != (dtype == torch.uint8):
                raise DataError(
                    f"the torch Dataset's item {i} is {x.dtype} {list(x.shape)} but item 0 is "
                    f"{x0.dtype} {list(x0.shape)}: items must be arrays of one shape and kind"
                )
            out[i] = x
            if labels is not None:
                labels.append(y)
            bar.update()
    return out, (_labels(labels) if labels is not None else None)


def _example(item, i: int) -> tuple[torch.Tensor, object]:
    """(x, label or None) of one torch Dataset item: an array, or (x,), (x, label, ...)."""
    label = None
    if isinstance(item, tuple | list):
        if len(item) > 1:
            label = item[1]
        item = item[0]
    try:
        x = item.detach().cpu() if torch.is_tensor(item) else torch.as_tensor(np.asarray(item))
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"the torch Dataset's item {i} is not an array ({e})") from None
    return x, label


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


def read_array_file(path, option: str = "--data") -> Dataset:
    """The examples in a numpy ``.npy`` file [N, *shape] (uint8 images, or floats in [-1, 1])
    as a ddkit Dataset (see :func:`as_dataset`).  The file is hostile until checked: a regular
    file, no pickled objects (nothing in it runs), its header's shape matching its size (it is
    mapped, not read, until then); anything else is a DataError naming ``option``, and an array
    larger than the memory available a ValueError, before it is read."""
    p = check_regular_file(path, option)
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # not .npy, object arrays, a short file
        raise DataError(f"{option} {str(p)!r} is not a readable .npy array ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{option} {str(p)!r} holds several arrays (.npz); save one with np.save")
    if arr.dtype != np.uint8 and arr.dtype.kind != "f":
        raise DataError(
            f"{option} {str(p)!r} holds {arr.dtype} values; allowed: uint8 images or floats"
        )
    what = f"{option} {str(p)!r} ({arr.dtype} {list(arr.shape)})"
    check_fits({"examples": arr.nbytes}, "cpu", what, "hand in fewer examples")
    try:
        return as_dataset(np.array(arr), progress=False)
    except DataError as e:
        raise DataError(f"{option} {str(p)!r}: {e}") from None
