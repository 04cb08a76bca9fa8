"""``load_dataset``: the one entry point from a ``DataConfig`` to a ``Dataset``."""

from __future__ import annotations

import numpy as np
import torch

from .base import ArrayDataset, DataError, Dataset, held_out_indices
from .bundled import digits_uint8, mnist5k_uint8
from .config import MEMORY, SPLITS, DataConfig
from .folder import load_folder
from .hf import load_hf
from .idx import read_fashion_mnist
from .images import resize_uint8
from .toys import toy_labels

__all__ = ["load_dataset"]


def _toy(cfg: DataConfig) -> ArrayDataset:
    # train and test are independent streams of the same seed: SeedSequence([seed, 0 or 1])
    rng = np.random.default_rng([cfg.seed, SPLITS.index(cfg.split)])
    points, labels = toy_labels(cfg.name, cfg.num_samples, rng)
    labels = None if labels is None else torch.from_numpy(labels)
    return ArrayDataset(cfg.name, torch.from_numpy(points.astype(np.float32)), labels=labels)


# the class names of the labelled image sets
DIGIT_NAMES = tuple(str(i) for i in range(10))
FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _images(cfg: DataConfig, images: np.ndarray, labels: np.ndarray, split_given: bool):
    """uint8 gray [N, H, W] + labels [N] -> the configured split, channels and size."""
    if not split_given:
        keep = held_out_indices(len(images), cfg.split)
        images, labels = images[keep], labels[keep]
    data = resize_uint8(images, cfg.channels or 1, cfg.image_size)
    names = FASHION_NAMES if cfg.name == "fashion_mnist" else DIGIT_NAMES
    y = torch.from_numpy(labels.astype(np.int64))
    return ArrayDataset(cfg.name, torch.from_numpy(data), labels=y, class_names=names)


def load_dataset(cfg: DataConfig) -> Dataset:
    """The data set ``cfg`` describes: every example a float32 tensor of ``.shape`` in [-1, 1].

    Toys, digits, mnist5k and fashion_mnist are held in memory (``ArrayDataset``); folder and
    hf are validated up front and decoded lazily unless they fit the memory cache
    (``ImageFileDataset``).  Raises DataError for anything unusable.
    """
    if cfg.name == MEMORY:
        raise DataError(
            "data 'memory' was handed to ddkit in Python and is not stored with the run; pass it "
            "again (ddkit.train(..., dataset=...) or Trainer(..., dataset=...))"
        )
    if cfg.is_toy:
        return _toy(cfg)
    if cfg.name == "digits":
        return _images(cfg, *digits_uint8(), split_given=False)
    if cfg.name == "mnist5k":
        return _images(cfg, *mnist5k_uint8(), split_given=False)
    if cfg.name == "fashion_mnist":
        return _images(cfg, *read_fashion_mnist(cfg.path, cfg.split), split_given=True)
    loader = load_folder if cfg.name == "folder" else load_hf
    return loader(
        cfg.path,
        split=cfg.split,
        channels=cfg.channels,
        image_size=cfg.image_size,
        on_corrupt=cfg.on_corrupt,
        name=cfg.name,
    )
