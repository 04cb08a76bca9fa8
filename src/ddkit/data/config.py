"""``DataConfig``: which data set, which split, and how images are shaped."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..resources import MAX_SEED
from .base import DataError

__all__ = [
    "DATA_NAMES",
    "IMAGE_NAMES",
    "SPLITS",
    "TOY_NAMES",
    "DataConfig",
]

TOY_NAMES = ("swiss_roll", "spiral", "8gaussians", "moons", "checkerboard")
IMAGE_NAMES = ("digits", "mnist5k", "fashion_mnist", "folder", "hf")
# "memory": examples handed to ddkit in Python (ddkit.train, Trainer(dataset=...)); nothing
# loads them from a config, so a run on them is resumed with the same data handed in again
MEMORY = "memory"
DATA_NAMES = TOY_NAMES + IMAGE_NAMES + (MEMORY,)
SPLITS = ("train", "test")
ON_CORRUPT = ("error", "skip")
_PATH_REQUIRED = ("folder", "hf")
_PATH_ALLOWED = ("fashion_mnist", "folder", "hf")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DataConfig:
    """Data set selection; validated on construction (``DataError`` names the bad field).

    name         one of ``DATA_NAMES``: 2-D toys ``TOY_NAMES``, images ``IMAGE_NAMES``, or
                 ``"memory"``: examples given in Python, which no config can load
    path         folder of images ('folder'), imagefolder or save_to_disk directory ('hf'),
                 folder of the four IDX files ('fashion_mnist'; default: the Debian package's)
    split        'train' or 'test'.  Fashion-MNIST has its own; toys draw 'test' from an
                 independent random stream; every other set holds out a fixed 10%
                 (``ddkit.data.base.held_out_indices``), independent of ``seed``
    image_size   output height = width; None keeps the native size (folder/hf: every image must
                 then have the same size, else a DataError asks for image_size).  Otherwise each
                 image is centre-cropped to a square and resized (bicubic).  Images only.
    channels     1 or 3; None keeps the native count (folder/hf: 1 iff every image is grayscale).
                 Images only.
    hflip        augment by random left-right flips; recorded here, applied by the training loop
                 with ``random_hflip``.  Images only.
    on_corrupt   'error' (DataError naming the first unreadable file) or 'skip' (leave out every
                 unreadable file, with one DataWarning naming them); folder/hf only
    num_samples  number of points drawn for a 2-D toy (ignored by image sets)
    seed         the toys' random stream (ignored by image sets: their splits are fixed)
    """

    name: str
    path: str | None = None
    split: str = "train"
    image_size: int | None = None
    channels: int | None = None
    hflip: bool = False
    on_corrupt: str = "error"
    num_samples: int = 10000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in DATA_NAMES:
            raise DataError(f"data name {self.name!r} is not one of {', '.join(DATA_NAMES)}")
        if self.path is not None:
            if not isinstance(self.path, str | os.PathLike):
                raise DataError(f"data path must be a string, got {type(self.path).__name__}")
            object.__setattr__(self, "path", os.fspath(self.path))
            if not isinstance(self.path, str) or not self.path or "\0" in self.path:
                raise DataError(f"data path {self.path!r} is not a usable path")
            if self.name not in _PATH_ALLOWED:
                raise DataError(
                    f"data path is not used by {self.name!r}; only {', '.join(_PATH_ALLOWED)} "
                    "read a path"
                )
        elif self.name in _PATH_REQUIRED:
            raise DataError(f"data {self.name!r} needs a path")
        if self.split not in SPLITS:
            raise DataError(f"split {self.split!r} is not one of {', '.join(SPLITS)}")
        is_toy = self.name in TOY_NAMES
        if self.image_size is not None:
            if is_toy:
                raise DataError(f"image_size does not apply to the 2-D set {self.name!r}")
            if not _is_int(self.image_size) or self.image_size < 1:
                raise DataError(f"image_size must be a positive integer, got {self.image_size!r}")
        if self.channels is not None:
            if is_toy:
                raise DataError(f"channels does not apply to the 2-D set {self.name!r}")
            if self.channels not in (1, 3) or not _is_int(self.channels):
                raise DataError(f"channels must be 1 or 3 (or None), got {self.channels!r}")
        if not isinstance(self.hflip, bool):
            raise DataError(f"hflip must be True or False, got {self.hflip!r}")
        if self.hflip and is_toy:
            raise DataError(f"hflip does not apply to the 2-D set {self.name!r}")
        if self.on_corrupt not in ON_CORRUPT:
            raise DataError(f"on_corrupt {self.on_corrupt!r} is not one of {', '.join(ON_CORRUPT)}")
        if not _is_int(self.num_samples) or self.num_samples < 1:
            raise DataError(f"num_samples must be a positive integer, got {self.num_samples!r}")
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise DataError(f"seed must be an integer in 0..{MAX_SEED}, got {self.seed!r}")

    @property
    def is_toy(self) -> bool:
        """True for the low-dimensional 2-D sets."""
        return self.name in TOY_NAMES
