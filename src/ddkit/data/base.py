"""The one dataset interface every loader returns, the in-memory implementation, and the
value conventions shared by all sets.

Every dataset yields float32 tensors of a declared ``shape`` -- ``(C, H, W)`` for images,
``(D,)`` for low-dimensional data -- with values in ``data_range == (-1.0, 1.0)``.

Image sets are 8-bit: a stored byte k in {0..255} becomes ``k / 127.5 - 1``, so every value lies
on the grid ``-1 + 2k/255`` that the discretized decoder L_0 and bits/dim assume
(``quantized = True``).  Low-dimensional toys are continuous (``quantized = False``).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "DATA_RANGE",
    "ArrayDataset",
    "DataError",
    "DataWarning",
    "Dataset",
    "as_index_tensor",
    "held_out_indices",
    "uint8_to_float",
]

DATA_RANGE = (-1.0, 1.0)
SPLIT_SEED = 0  # fixed: the held-out split never depends on the training seed
HELD_OUT_FRACTION_DENOMINATOR = 10  # the held-out 'test' split is n // 10 examples


class DataError(ValueError):
    """A data set, file or data setting that cannot be used; the message names it and what is
    allowed."""


class DataWarning(UserWarning):
    """Something was left out of a data set on request (``on_corrupt='skip'``)."""


def uint8_to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [...] with bytes k -> float32 [...] with values k / 127.5 - 1 in [-1, 1]."""
    return x.to(torch.float32).div_(127.5).sub_(1.0)


def held_out_indices(n: int, split: str) -> np.ndarray:
    """The examples of ``split`` for a set that comes without one: the last ``n // 10`` of a
    permutation drawn with a fixed seed (``SPLIT_SEED``, independent of ``DataConfig.seed``) are
    'test', the rest 'train'.  Returned in increasing order, so a split keeps the source order."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_test = n // HELD_OUT_FRACTION_DENOMINATOR
    chosen = perm[n - n_test :] if split == "test" else perm[: n - n_test]
    return np.sort(chosen)


def as_index_tensor(indices) -> torch.Tensor:
    """Batch indices as a LongTensor [B]; DataError for a non-integer or non-1-D input."""
    idx = torch.as_tensor(indices)
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise DataError(f"batch indices must be an integer tensor, got dtype {idx.dtype}")
    if idx.ndim != 1:
        raise DataError(f"batch indices must be 1-D [B], got shape {tuple(idx.shape)}")
    return idx.to(torch.long)


class Dataset(torch.utils.data.Dataset):
    """Base class: a finite set of examples, each a float32 tensor of ``shape`` in [-1, 1].

    Attributes
        name        the ``DataConfig.name`` it was loaded as
        shape       ``(C, H, W)`` or ``(D,)``
        quantized   True for 8-bit image data (values ``-1 + 2k/255``), False for continuous data
        data_range  always ``(-1.0, 1.0)``
        labels      LongTensor [N] of class indices, or None
        class_names the name of each class index, or None ("0", "1", ...)
    Subclasses implement ``__len__`` and ``get_batch``.
    """

    name: str
    shape: tuple[int, ...]
    quantized: bool
    labels: torch.Tensor | None
    class_names: tuple[str, ...] | None = None
    data_range: tuple[float, float] = DATA_RANGE

    def __len__(self) -> int:
        raise NotImplementedError

    def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """indices: integer tensor [B] -> float32 [B, *shape] in [-1, 1]."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> torch.Tensor:
        """One example, float32 ``shape``; negative indices count from the end."""
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.name} with {n} examples")
        return self.get_batch(torch.tensor([i % n]))[0]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, n={len(self)}, shape={self.shape}, "
            f"quantized={self.quantized}, labels={self.labels is not None})"
        )


class ArrayDataset(Dataset):
    """A data set held in memory as one tensor: uint8 [N, *shape] for 8-bit images (converted
    by ``uint8_to_float`` per batch) or float32 [N, *shape] already in [-1, 1].
    ``get_batch`` is a single indexing operation."""

    def __init__(
        self,
        name: str,
        data: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        class_names=None,
    ) -> None:
        if data.dtype == torch.uint8:
            quantized = True
        elif data.dtype == torch.float32:
            quantized = False
            if data.numel() and (data.min() < -1.0 or data.max() > 1.0):
                raise DataError(f"{name}: float data must lie in [-1, 1]")
        else:
            raise DataError(f"{name}: data must be uint8 or float32, got {data.dtype}")
        if data.shape[0] == 0:
            raise DataError(f"{name}: the data set is empty")
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (data.shape[0],):
                raise DataError(
                    f"{name}: labels must be [{data.shape[0]}], got {tuple(labels.shape)}"
                )
        self.name = name
        self.shape = tuple(int(s) for s in data.shape[1:])
        self.quantized = quantized
        self.labels = labels
        self.class_names = None if class_names is None else tuple(str(c) for c in class_names)
        self._data = data.contiguous()

    def __len__(self) -> int:
        return int(self._data.shape[0])

    def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """indices: integer tensor [B] -> float32 [B, *shape] in [-1, 1]; one indexing operation."""
        x = self._data[as_index_tensor(indices)]
        return uint8_to_float(x) if self.quantized else x  # indexing already copies
