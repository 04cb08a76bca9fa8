"""Data sets for diffusion training: each yields float32 tensors of a declared ``shape`` in
[-1, 1].

    cfg = DataConfig("fashion_mnist", split="train", channels=1)
    ds = load_dataset(cfg)            # ds.shape == (1, 28, 28), ds.quantized, ds.labels
    x0 = ds.get_batch(idx)            # idx: LongTensor [B] -> float32 [B, 1, 28, 28]
    if cfg.hflip:
        x0 = random_hflip(x0, generator)

Modules: ``config`` (DataConfig), ``base`` (Dataset, ArrayDataset, DataError, the held-out
split), ``toys`` (2-D distributions), ``idx`` (IDX parser, Fashion-MNIST), ``bundled`` (digits,
mnist5k), ``images`` (PIL conversion, lazily decoded image sets), ``folder``, ``hf``,
``augment`` (random_hflip), ``load`` (load_dataset).
"""

from .augment import random_hflip
from .base import DATA_RANGE, ArrayDataset, DataError, Dataset, DataWarning, held_out_indices
from .config import DATA_NAMES, IMAGE_NAMES, TOY_NAMES, DataConfig
from .idx import FASHION_MNIST_DIR, read_fashion_mnist, read_idx
from .images import ImageFileDataset
from .load import load_dataset
from .memory import as_dataset, read_array_file
from .toys import make_toy

__all__ = [
    "DATA_NAMES",
    "DATA_RANGE",
    "FASHION_MNIST_DIR",
    "IMAGE_NAMES",
    "TOY_NAMES",
    "ArrayDataset",
    "as_dataset",
    "DataConfig",
    "DataError",
    "DataWarning",
    "Dataset",
    "ImageFileDataset",
    "held_out_indices",
    "load_dataset",
    "make_toy",
    "random_hflip",
    "read_array_file",
    "read_fashion_mnist",
    "read_idx",
]
