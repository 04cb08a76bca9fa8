"""A folder of image files as a data set.

Files are found recursively under the folder and sorted by their POSIX path relative to it (so
the order is the same on every machine).  A file counts as an image when its extension is in
``RASTER_EXTENSIONS`` (.png .jpg .jpeg .jpe .jfif .bmp .dib .gif .tif .tiff .webp .ppm .pgm .pbm
.pnm .tga .qoi .avif .jp2 .j2k .pcx .ico) and this PIL build has a reader for it (PIL's stub
formats such as .h5, .eps or .fits are not images here); other files, and hidden files or
folders (name starting with '.'), are ignored.  When every image lies in a first-level subfolder
(one per class, as torchvision's ``ImageFolder`` expects), the sorted subfolder names are the
class names and each image's label is its subfolder's index; an image directly in the folder
leaves the set unlabelled.  A listed name that
is not a regular file (a FIFO, socket or device, or a symlink to one) is never opened: it counts
as unreadable (``on_corrupt``), as do empty, truncated and non-image files and images of more
than PIL's ``Image.MAX_IMAGE_PIXELS`` pixels.

The 'test' split is the fixed 10% held out by ``held_out_indices`` over the sorted list of all
image files (decided before unreadable files are skipped, so skipping never moves a file to the
other split).  Only the files of the requested split are validated and decoded.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .base import DataError, held_out_indices
from .images import CACHE_BYTES, ImageFileDataset, open_image_file

__all__ = [
    "RASTER_EXTENSIONS",
    "FolderSource",
    "image_extensions",
    "folder_classes",
    "list_image_files",
    "load_folder",
]


RASTER_EXTENSIONS = frozenset(
    ".png .jpg .jpeg .jpe .jfif .bmp .dib .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .qoi "
    ".avif .jp2 .j2k .pcx .ico".split()
)


def image_extensions() -> frozenset[str]:
    """Lower-case extensions (with the dot) of the raster formats this PIL build can read."""
    readable = {
        ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
    }
    return RASTER_EXTENSIONS & readable


def list_image_files(folder: str) -> list[str]:
    """Image files under ``folder`` (recursive), sorted by relative POSIX path.
    DataError when the folder is missing, not a folder, or holds no image file."""
    if not os.path.exists(folder):
        raise DataError(f"{folder}: no such image folder")
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: not a folder")
    exts = image_extensions()
    found = []
    seen = set()  # real paths of visited folders: symlinked folders are followed, once
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts:
                rel = os.path.relpath(os.path.join(root, f), folder)
                found.append(rel.replace(os.sep, "/"))
    if not found:
        raise DataError(
            f"{folder}: no image files (looked recursively for "
            f"{' '.join(sorted(image_extensions()))})"
        )
    return [os.path.join(folder, *rel.split("/")) for rel in sorted(found)]


def folder_classes(folder: str, files: list[str]):
    """(labels int64 [len(files)], class names) when every file lies in a first-level
    subfolder of ``folder`` (the sorted subfolder names are the classes), else (None, None)."""
    tops = []
    for f in files:
        parts = os.path.relpath(f, folder).split(os.sep)
        if len(parts) < 2:
            return None, None
        tops.append(parts[0])
    names = sorted(set(tops))
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[t] for t in tops], dtype=np.int64), tuple(names)


class FolderSource:
    """``ImageSource`` over a list of image file paths."""

    def __init__(self, folder: str, files: list[str]) -> None:
        self.description = folder
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def open(self, i: int) -> Image.Image:
        """PIL's (lazy) image of file i (:func:`open_image_file`)."""
        return open_image_file(self.files[i])

    def item_name(self, i: int) -> str:
        """The path of file i."""
        return self.files[i]


def load_folder(
    folder: str,
    *,
    split: str = "train",
    channels: int | None = None,
    image_size: int | None = None,
    on_corrupt: str = "error",
    cache_bytes: int = CACHE_BYTES,
    name: str = "folder",
) -> ImageFileDataset:
    """The ``split`` of the images under ``folder`` (see the module docstring)."""
    files = list_image_files(folder)
    indices = held_out_indices(len(files), split)
    if len(indices) == 0:
        raise DataError(
            f"{folder}: split {split!r} is empty ({len(files)} image files; the test split "
            "holds out 1 in 10)"
        )
    labels, names = folder_classes(folder, files)
    ds = ImageFileDataset(
        name,
        FolderSource(folder, files),
        channels=channels,
        size=image_size,
        on_corrupt=on_corrupt,
        indices=indices,
        labels=labels,
        cache_bytes=cache_bytes,
    )
    ds.class_names = names
    return ds
