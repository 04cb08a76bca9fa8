"""Decoded-image data sets: PIL mode conversion, crop and resize, and a data set over image
files (or HF rows) that is validated up front and decoded lazily.

Conversion of one PIL image to ``channels`` x ``size`` x ``size`` bytes (``to_uint8``):

1. to 8 bits per channel:
   - 'I;16*' and 'I' are taken as 16-bit and scaled: round(v / 257), clipped to 0..255
     (PIL's own ``convert('L')`` clips instead, turning most 16-bit images white);
   - 'F' is clipped to 0..255;  '1' becomes 0 / 255;
   - 'P' becomes 'RGBA' when it has a transparency entry, else 'RGB' ('PA' becomes 'RGBA');
   - alpha ('LA', 'La', 'RGBA', 'RGBa', 'PA') is composited onto white:
     v' = v a + 255 (1 - a), a = alpha / 255 (transparent pixels have arbitrary colours, which
     dropping alpha would expose);
   - every other mode ('CMYK', 'YCbCr', 'LAB', 'HSV', ...) goes through PIL's ``convert('RGB')``
     (for CMYK PIL's plain formula, no ICC colour management);
2. to the channel count: colour -> 1 by PIL's ITU-R 601-2 luma ``convert('L')``;
   gray -> 3 by repeating the channel;
3. if a size is set: centre crop to the largest square, then resize to size x size with
   bicubic resampling (PIL's, antialiased when reducing); an image already of that size is
   left as it is.

The first frame of a multi-frame file (GIF, TIFF) is used; EXIF orientation is not applied.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from ..resources import file_kind
from .base import DataError, Dataset, DataWarning, as_index_tensor, uint8_to_float

__all__ = [
    "CACHE_BYTES",
    "GRAY_MODES",
    "ImageFileDataset",
    "ImageSource",
    "native_channels",
    "open_image_file",
    "resize_uint8",
    "to_uint8",
]

GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"LA", "La", "RGBA", "RGBa", "PA"})
CACHE_BYTES = 1 << 30  # decoded images are kept in memory when they fit in 1 GiB
_MAX_NAMES_IN_WARNING = 20


def native_channels(mode: str) -> int:
    """1 for a grayscale PIL mode (``GRAY_MODES``), 3 for every other (palette included)."""
    return 1 if mode in GRAY_MODES else 3


def _composite_on_white(img: Image.Image) -> Image.Image:
    gray = img.mode in ("LA", "La")
    arr = np.asarray(img.convert("LA" if gray else "RGBA"), dtype=np.float64)
    alpha = arr[..., -1:] / 255.0
    out = arr[..., :-1] * alpha + 255.0 * (1.0 - alpha)
    out = np.rint(out).astype(np.uint8)
    return Image.fromarray(out[..., 0] if gray else out, "L" if gray else "RGB")


def to_8bit(img: Image.Image) -> Image.Image:
    """Any PIL image -> mode 'L' or 'RGB' (step 1 of the module docstring)."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode in _SIXTEEN_BIT:
        arr = np.asarray(img).astype(np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if mode == "1":
        return img.convert("L")
    if mode in _ALPHA_MODES:
        return _composite_on_white(img)
    return img.convert("RGB")


def _center_crop_resize(img: Image.Image, size: int | None) -> Image.Image:
    if size is None or img.size == (size, size):
        return img
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    if (w, h) != (side, side):
        img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return img


def to_uint8(img: Image.Image, channels: int, size: int | None) -> np.ndarray:
    """A decoded PIL image -> uint8 [channels, H, W] (H = W = size when size is set)."""
    img = to_8bit(img)
    if channels == 1 and img.mode == "RGB":
        img = img.convert("L")
    img = _center_crop_resize(img, size)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
        if channels == 3:
            arr = np.repeat(arr, 3, axis=0)
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def resize_uint8(images: np.ndarray, channels: int, size: int | None) -> np.ndarray:
    """uint8 gray images [N, H, W] -> uint8 [N, channels, size, size] (or native H, W when size
    is None), through the same conversion as image files (``to_uint8``)."""
    n, h, w = images.shape
    if size is None or (h, w) == (size, size):
        out = images[:, None]
        return np.repeat(out, 3, axis=1) if channels == 3 else np.ascontiguousarray(out)
    return np.stack([to_uint8(Image.fromarray(a, "L"), channels, size) for a in images])


def open_image_file(path: str) -> Image.Image:
    """PIL's (lazy) image of the file ``path``.  Anything but a regular file (after symlinks) --
    a FIFO, device, socket or folder, which could block or never end -- is refused by DataError
    without being opened."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise DataError(f"{file_kind(mode)}, not a regular file")
    return Image.open(path)


def _open_checked(source: ImageSource, i: int) -> Image.Image:
    """``source.open(i)``, refusing images of more than PIL's ``Image.MAX_IMAGE_PIXELS`` pixels
    (decompression bombs: a small file that decodes to gigabytes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return source.open(i)


class ImageSource(Protocol):
    """Where ImageFileDataset reads its images from: n items, each opened as a PIL image."""

    description: str  # e.g. the folder; used in messages

    def __len__(self) -> int: ...

    def open(self, i: int) -> Image.Image:
        """A PIL image for item i (may be lazy: decoding happens on ``load()``)."""
        ...

    def item_name(self, i: int) -> str:
        """How item i is named in messages (a file path, or a row number)."""
        ...


def _describe_error(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class ImageFileDataset(Dataset):
    """Images read from an ``ImageSource``, validated at construction and decoded per item.

    Construction reads every item's header (mode, size) and then fully decodes every item once,
    so an unreadable or truncated image is reported before training: with
    ``on_corrupt='error'`` a DataError names the first one, with 'skip' every unreadable item is
    left out and one DataWarning gives their count and names.  When the converted images fit in
    ``cache_bytes`` they are kept from that pass as one uint8 tensor (then ``get_batch`` is a
    single indexing operation); otherwise ``get_batch`` decodes the requested items again.

    ``indices`` restricts the set to those items of the source (a split), in the given order;
    ``labels`` [len(source)] are the per-item labels of the whole source, or None.
    ``channels`` / ``size`` None take the native values: 1 channel iff every item's mode is
    grayscale, and the common size of all items (a DataError names an item of another size).
    """

    quantized = True

    def __init__(
        self,
        name: str,
        source: ImageSource,
        *,
        channels: int | None,
        size: int | None,
        on_corrupt: str = "error",
        indices: Sequence[int] | None = None,
        labels: np.ndarray | None = None,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.name = name
        self._source = source
        self._on_corrupt = on_corrupt
        n_source = len(source)
        items = list(range(n_source)) if indices is None else [int(i) for i in indices]
        if not items:
            raise DataError(f"{source.description}: no images in this split")
        bad: list[str] = []

        # pass 1: headers (cheap): mode and size of every item
        headers: dict[int, tuple[str, tuple[int, int]]] = {}
        for i in items:
            try:
                with _open_checked(source, i) as img:
                    headers[i] = (img.mode, img.size)
            except Exception as e:  # PIL raises many types for unreadable files
                self._corrupt(i, e, bad)
        items = [i for i in items if i in headers]
        if not items:
            raise DataError(f"{source.description}: none of the images could be read")
        if channels is None:
            channels = 1 if all(headers[i][0] in GRAY_MODES for i in items) else 3
        if size is None:
            first = items[0]
            w, h = headers[first][1]
            for i in items:
                if headers[i][1] != (w, h):
                    raise DataError(
                        f"{source.item_name(i)} is {headers[i][1][0]}x{headers[i][1][1]} but "
                        f"{source.item_name(first)} is {w}x{h}; set image_size to resize all "
                        "images to one square size"
                    )
            shape = (channels, h, w)
        else:
            shape = (channels, size, size)
        self.shape = shape
        self._channels, self._size = channels, size

        # pass 2: decode everything once; keep the result when it fits in cache_bytes
        keep = len(items) * int(np.prod(shape)) <= cache_bytes
        decoded: list[np.ndarray] = []
        good: list[int] = []
        for i in items:
            try:
                arr = self._decode(i)
            except Exception as e:
                self._corrupt(i, e, bad)
                continue
            good.append(i)
            if keep:
                decoded.append(arr)
        if not good:
            raise DataError(f"{source.description}: none of the images could be read")
        if bad:
            shown = ", ".join(bad[:_MAX_NAMES_IN_WARNING])
            more = len(bad) - _MAX_NAMES_IN_WARNING
            warnings.warn(
                f"{source.description}: skipped {len(bad)} unreadable image(s): {shown}"
                + (f" and {more} more" if more > 0 else ""),
                DataWarning,
                stacklevel=3,
            )
        self.skipped = tuple(bad)
        self._items = np.asarray(good, dtype=np.int64)
        self._cache = torch.from_numpy(np.stack(decoded)) if keep else None
        self.labels = (
            None if labels is None else torch.as_tensor(np.asarray(labels)[self._items]).long()
        )

    def _corrupt(self, i: int, e: Exception, bad: list[str]) -> None:
        name = self._source.item_name(i)
        if self._on_corrupt == "error":
            raise DataError(
                f"{name}: unreadable image ({_describe_error(e)}); fix or remove it, or set "
                "on_corrupt='skip'"
            ) from e
        bad.append(name)

    def _decode(self, i: int) -> np.ndarray:
        with _open_checked(self._source, i) as img:
            img.load()
            arr = to_uint8(img, self._channels, self._size)
        if arr.shape != self.shape:  # only when the native size was taken from the headers
            raise DataError(
                f"{self._source.item_name(i)}: decoded shape {arr.shape} is not {self.shape}"
            )
        return arr

    @property
    def cached(self) -> bool:
        """True when every image is held in memory."""
        return self._cache is not None

    def __len__(self) -> int:
        return len(self._items)

    def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """indices: integer tensor [B] -> float32 [B, *shape] in [-1, 1], from the cache or
        decoded now (DataError if an image no longer reads)."""
        idx = as_index_tensor(indices)
        if self._cache is not None:
            return uint8_to_float(self._cache[idx])
        n = len(self._items)
        arrays = []
        for j in idx.tolist():
            if not -n <= j < n:
                raise IndexError(f"index {j} out of range for {self.name} with {n} examples")
            item = int(self._items[j])
            try:
                arrays.append(self._decode(item))
            except DataError:
                raise
            except Exception as e:
                raise DataError(
                    f"{self._source.item_name(item)}: unreadable image "
                    f"({_describe_error(e)}); it was readable when the data set was built"
                ) from e
        return uint8_to_float(torch.from_numpy(np.stack(arrays)))
