"""The data a checkpoint is measured on: its data set at a split without augmentation (or
examples handed in, the same for every split), a fixed subset of it, and a mean over images
with its standard error."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..data import DataConfig, load_dataset
from ..trained import Trained


def data_config_for(trained: Trained, split: str) -> DataConfig:
    """The checkpoint's data set, the given split, no augmentation."""
    return replace(trained.config.data, split=split, hflip=False)


def check_shape(trained: Trained, data) -> None:
    """ValueError unless the data set's items have the shape the checkpoint's model makes."""
    if tuple(data.shape) != tuple(trained.data_shape):
        raise ValueError(
            f"the checkpoint's model makes {list(trained.data_shape)} samples but the data set "
            f"{data.name!r} has shape {list(data.shape)}"
        )


def split_data(trained: Trained, split: str, data=None):
    """``data`` (examples handed in, a ddkit Dataset) when given, else the checkpoint's data
    set at ``split``; ValueError if its shape is not the model's."""
    if data is None:
        data = load_dataset(data_config_for(trained, split))
    check_shape(trained, data)
    return data


def held_out(trained: Trained, split: str, num: int, data=None):
    """(data set, images) of ``min(num, len(data))`` items of ``split`` (or of ``data``, a
    ddkit Dataset, when given): a fixed random subset (seed 0), the same for every checkpoint
    of the data set.  ValueError if shapes differ."""
    data = split_data(trained, split, data)
    n = min(num, len(data))
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n]
    return data, data.get_batch(idx)


def mean_stderr(values: torch.Tensor) -> tuple[float, float]:
    """Mean of ``values`` and its standard error (NaN for a single value), in float64."""
    v = values.double()
    se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(v.mean()), se
