"""Hugging Face ``datasets`` image sets from local directories (nothing is downloaded).

``path`` is either a directory written by ``save_to_disk`` (it holds ``dataset_dict.json`` or
``state.json``; read with ``load_from_disk``) or a directory of image files, read with the
packaged ``imagefolder`` builder (``load_dataset('imagefolder', data_dir=path)``; sub-folders
become class labels, ``train`` / ``test`` sub-folders become splits; it writes its Arrow cache
to the usual HF cache, ``HF_DATASETS_CACHE``).

The image column is 'image' or 'img' (an ``Image`` feature); the label column, when there is
one, is 'label' or 'labels' holding integers (e.g. a ``ClassLabel``).  Split: a data set with
both 'train' and 'test' splits is used as it is; a single split (whatever its name) or a plain
``Dataset`` is divided by ``held_out_indices``; any other set of splits is a DataError.
Images are decoded by PIL and converted like image files (``ddkit.data.images``); the rows of
the requested split are validated up front.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from .base import DataError, held_out_indices
from .images import CACHE_BYTES, ImageFileDataset, open_image_file

__all__ = ["HFSource", "load_hf"]

IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels")
_INSTALL = "pip install datasets"


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"data 'hf' needs the Hugging Face 'datasets' package; install it with: {_INSTALL}"
        ) from None
    return datasets


class HFSource:
    """``ImageSource`` over the image column of a HF ``Dataset`` (read undecoded: bytes/path)."""

    def __init__(self, description: str, table, column: str) -> None:
        datasets = _import_datasets()
        self.description = description
        self._column = column
        self._table = table.cast_column(column, datasets.Image(decode=False))

    def __len__(self) -> int:
        return len(self._table)

    def _cell(self, i: int) -> dict:
        cell = self._table[int(i)][self._column]
        if cell is None:
            raise ValueError("empty image cell")
        return cell

    def open(self, i: int) -> Image.Image:
        """PIL's (lazy) image of row i: from its stored bytes, else its file path (ValueError if
        it has neither)."""
        cell = self._cell(i)
        if cell.get("bytes") is not None:
            return Image.open(io.BytesIO(cell["bytes"]))
        if cell.get("path"):
            return open_image_file(cell["path"])
        raise ValueError("image cell has neither bytes nor a path")

    def item_name(self, i: int) -> str:
        """Row i's file path when the image is read from one, else the set and row number."""
        try:
            cell = self._table[int(i)][self._column]
        except Exception:
            cell = None
        path = (cell or {}).get("path")
        if path and (cell or {}).get("bytes") is None:
            return path
        return f"{self.description} row {i}" + (f" ({path})" if path else "")


def _read(path: str):
    datasets = _import_datasets()
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such directory (expected a save_to_disk or imagefolder one)")
    saved = any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))
    try:
        if saved:
            return datasets.load_from_disk(path)
        return datasets.load_dataset("imagefolder", data_dir=path)
    except DataError:
        raise
    except Exception as e:
        how = "load_from_disk" if saved else "load_dataset('imagefolder')"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: {how} failed ({first})") from e


def _pick_split(loaded, path: str, split: str):
    """(table, row indices or None) of ``split``."""
    if hasattr(loaded, "keys") and not hasattr(loaded, "features"):  # a DatasetDict
        names = list(loaded.keys())
        if "train" in names and "test" in names:
            return loaded[split], None
        if len(names) == 1:
            table = loaded[names[0]]
            return table, held_out_indices(len(table), split)
        raise DataError(
            f"{path}: splits {', '.join(names)} are not usable; need both 'train' and 'test', "
            "or a single split to hold 10% out of"
        )
    return loaded, held_out_indices(len(loaded), split)


def _find_column(table, path: str, candidates, kind: str, required: bool) -> str | None:
    for c in candidates:
        if c in table.column_names:
            return c
    if required:
        raise DataError(
            f"{path}: no {kind} column ({' or '.join(candidates)}); columns are "
            f"{', '.join(table.column_names)}"
        )
    return None


def load_hf(
    path: str,
    *,
    split: str = "train",
    channels: int | None = None,
    image_size: int | None = None,
    on_corrupt: str = "error",
    cache_bytes: int = CACHE_BYTES,
    name: str = "hf",
) -> ImageFileDataset:
    """The ``split`` of the local HF data set at ``path`` (see the module docstring)."""
    datasets = _import_datasets()
    table, indices = _pick_split(_read(path), path, split)
    column = _find_column(table, path, IMAGE_COLUMNS, "image", required=True)
    if not isinstance(table.features[column], datasets.Image):
        raise DataError(
            f"{path}: column {column!r} is {type(table.features[column]).__name__}, "
            "not an Image feature"
        )
    labels = None
    label_col = _find_column(table, path, LABEL_COLUMNS, "label", required=False)
    if label_col is not None:
        values = np.asarray(table[label_col])
        if values.ndim == 1 and np.issubdtype(values.dtype, np.integer):
            labels = values.astype(np.int64)
    names = getattr(table.features[label_col], "names", None) if labels is not None else None
    if indices is not None and len(indices) == 0:
        raise DataError(
            f"{path}: split {split!r} is empty ({len(table)} rows; the test split holds out 1 "
            "in 10)"
        )
    ds = ImageFileDataset(
        name,
        HFSource(path, table, column),
        channels=channels,
        size=image_size,
        on_corrupt=on_corrupt,
        indices=indices,
        labels=labels,
        cache_bytes=cache_bytes,
    )
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        ds.class_names = tuple(n[:200] or "?" for n in names)  # a ClassLabel's names
    return ds
