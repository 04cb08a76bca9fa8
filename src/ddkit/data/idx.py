"""IDX files (the MNIST / Fashion-MNIST format) and the Fashion-MNIST loader.

IDX layout, all integers big-endian: magic ``0x00 0x00 TT NN`` (TT the element type, NN the
number of dimensions), then NN uint32 sizes, then the elements in C order.  A file whose name
ends in ``.gz`` (or whose content starts with the gzip signature) is decompressed first.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import stat
import zlib

import numpy as np

from ..resources import available_memory, file_kind, format_bytes
from .base import DataError

__all__ = [
    "FASHION_MNIST_DIR",
    "IDX_DTYPES",
    "fashion_mnist_files",
    "read_fashion_mnist",
    "read_idx",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"

# type code -> big-endian numpy dtype
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_SIGNATURE = b"\x1f\x8b"


def _gunzip(path: str, raw: bytes) -> bytes:
    """The decompressed ``raw``; DataError when it is corrupt or would not fit in memory."""
    found = available_memory("cpu")
    limit = found[0] // 2 if found else 1 << 34
    out, size = [], 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            while chunk := f.read(1 << 24):
                size += len(chunk)
                if size > limit:
                    raise DataError(
                        f"{path}: decompresses to more than {format_bytes(limit)} (half the "
                        "memory available); not an IDX file of this machine's size"
                    )
                out.append(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt gzip data ({e})") from None
    return b"".join(out)


def _read_bytes(path: str) -> bytes:
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
            raise DataError(f"{path}: {file_kind(mode)}, not a regular IDX file")
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such IDX file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e.strerror or e})") from None
    if path.endswith(".gz") or raw[:2] == _GZIP_SIGNATURE:
        raw = _gunzip(path, raw)
    return raw


def read_idx(path: str | os.PathLike, *, ndim: int | None = None, dtype=None) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed) into a numpy array of its declared shape.

    ``ndim`` / ``dtype``, when given, are required of the file (checked from its magic number).
    Raises DataError naming the file when it is missing, is not IDX (bad magic), is truncated,
    or has bytes beyond its declared size.  Values are returned in native byte order.
    """
    path = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no complete magic number)")
    magic = int.from_bytes(raw[:4], "big")
    type_code, n_dims = raw[2], raw[3]
    if raw[0] != 0 or raw[1] != 0 or type_code not in IDX_DTYPES or n_dims == 0:
        codes = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(
            f"{path}: bad IDX magic number 0x{magic:08X}; expected 0x0000TTNN with type TT in "
            f"{{{codes}}} and NN >= 1 dimensions"
        )
    want_dtype = None if dtype is None else np.dtype(dtype)
    if (ndim is not None and n_dims != ndim) or (
        want_dtype is not None and IDX_DTYPES[type_code].newbyteorder("=") != want_dtype
    ):
        want_code = next(
            (c for c, d in IDX_DTYPES.items() if d.newbyteorder("=") == want_dtype), type_code
        )
        want_nd = n_dims if ndim is None else ndim
        raise DataError(
            f"{path}: IDX magic number {magic} (0x{magic:08X}) is not the expected "
            f"{(want_code << 8) | want_nd} (0x{(want_code << 8) | want_nd:08X}: "
            f"{IDX_DTYPES[want_code].name} elements, {want_nd} dimensions)"
        )
    header = 4 + 4 * n_dims
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(n_dims))
    item = IDX_DTYPES[type_code]
    expected = math.prod(dims) * item.itemsize
    have = len(raw) - header
    if have < expected:
        raise DataError(
            f"{path}: truncated IDX data: dims {dims} need {expected} bytes, file has {have}"
        )
    if have > expected:
        raise DataError(
            f"{path}: {have - expected} bytes beyond the IDX data declared by dims {dims}"
        )
    arr = np.frombuffer(raw, dtype=item, count=math.prod(dims), offset=header).reshape(dims)
    return arr.astype(item.newbyteorder("="))  # a writable native-order copy


def fashion_mnist_files(folder: str | os.PathLike, split: str) -> tuple[str, str]:
    """(images, labels) paths of ``split`` ('train' or 'test' = the t10k files) in ``folder``:
    ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``, or the same names without ``.gz``
    when only those exist.  Missing files are reported by ``read_fashion_mnist``."""
    prefix = "train" if split == "train" else "t10k"
    paths = []
    for kind in ("images-idx3", "labels-idx1"):
        gz = os.path.join(os.fspath(folder), f"{prefix}-{kind}-ubyte.gz")
        plain = gz[: -len(".gz")]
        paths.append(plain if not os.path.exists(gz) and os.path.exists(plain) else gz)
    return paths[0], paths[1]


def read_fashion_mnist(
    folder: str | os.PathLike | None = None, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (or any MNIST-layout IDX folder): uint8 images [N, H, W] and uint8 labels
    [N] of ``split``.  ``folder`` defaults to ``FASHION_MNIST_DIR``.  Raises DataError naming the
    file when one is missing or malformed, or when the image and label counts differ."""
    folder = FASHION_MNIST_DIR if folder is None else os.fspath(folder)
    images_path, labels_path = fashion_mnist_files(folder, split)
    for p in (images_path, labels_path):
        if not os.path.exists(p):
            hint = (
                f"install the Debian package {FASHION_MNIST_PACKAGE}"
                if folder == FASHION_MNIST_DIR
                else "set path to a folder holding the four IDX files"
            )
            raise DataError(f"{p}: no such Fashion-MNIST IDX file; {hint}")
    images = read_idx(images_path, ndim=3, dtype=np.uint8)
    labels = read_idx(labels_path, ndim=1, dtype=np.uint8)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; the counts must match"
        )
    if images.shape[0] == 0:
        raise DataError(f"{images_path}: no images")
    return images, labels
