"""ddkit from Python: train on your own tensors, load a run (or a diffusers folder), sample in
memory, measure FID.  The command line is built on the same pieces.

    import ddkit
    trained = ddkit.train({"model": {"preset": "mlp-2d"}, "train": {"max_steps": 500}},
                          dataset=points)            # [N, 2] float in [-1, 1]
    x = trained.sample(1000, sampler="ddim", steps=20)
    ddkit.fid(x, points, features=lambda v: v)       # or inception="pt_inception-...pth"
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import Config, config_from_dict, config_to_dict, read_config_file
from .data import Dataset, as_dataset
from .data.base import uint8_to_float
from .data.config import MEMORY
from .trained import Trained, load_trained


def _config(config, dataset: Dataset | None, out_dir) -> Config:
    """The run's config; with a ``dataset``, its ``[data]`` is ``"memory"`` (keeping only
    ``hflip``): the other keys would describe a data set that is not the one trained on."""
    if isinstance(config, Config):
        d = config_to_dict(config)
    elif isinstance(config, dict):
        d = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    elif isinstance(config, str | Path | list | tuple):
        d = {}
        for f in [config] if isinstance(config, str | Path) else list(config):
            for name, table in read_config_file(f).items():
                old = d.get(name)
                d[name] = (
                    {**old, **table} if isinstance(old, dict) and isinstance(table, dict) else table
                )
    else:
        raise TypeError(f"config must be a Config, a dict or TOML path(s), not {type(config)}")
    if dataset is not None:
        data = d.get("data") if isinstance(d.get("data"), dict) else {}
        d["data"] = {"name": MEMORY, **({"hflip": data["hflip"]} if "hflip" in data else {})}
    if out_dir is not None:
        d["train"] = {**(d.get("train") or {}), "out_dir": str(out_dir)}
    return config_from_dict(d)


def train(config, *, dataset=None, out_dir=None, overwrite: bool = False, log=print) -> Trained:
    """Train a model and return its EMA weights from the last checkpoint, ready to sample.

    ``config``: a :class:`~ddkit.config.Config`, a dict of sections as in a TOML file, or TOML
    file path(s).  ``dataset``: the examples to train on (see :func:`as_dataset`); without it,
    the config's ``[data]`` is loaded.  ``out_dir`` overrides ``train.out_dir`` (the run folder:
    checkpoints, log, grids); ``overwrite`` replaces another run there."""
    from .training.trainer import Trainer

    data = as_dataset(dataset) if dataset is not None else None
    cfg = _config(config, data, out_dir)
    trainer = Trainer(cfg, dataset=data, log=log, overwrite=overwrite)
    trainer.fit()
    return load_trained(trainer.last_checkpoint)


def load(path, *, weights: str = "ema", device: str = "cpu") -> Trained:
    """A trained model: a checkpoint file, a run folder (its newest checkpoint), or a diffusers
    DDPM-family pipeline folder; ``weights`` "ema" or "online"."""
    return load_trained(path, weights, device)


def fid(images_a, images_b, *, inception=None, features=None, batch_size: int = 500) -> float:
    """The Fréchet distance between two sets of examples [N, ...] in [-1, 1], in the features
    of the FID Inception network read from the local weights file ``inception`` (pytorch-fid's
    .pth or a TorchScript export; no code in it runs), or of ``features``: any callable from a
    batch to features [B, d].  Both sets need more examples than feature dimensions for a
    stable estimate."""
    from .evaluation.features import extract
    from .evaluation.fid import feature_stats, frechet_distance

    if (inception is None) == (features is None):
        raise ValueError("give exactly one of inception=PATH or features=callable")
    if inception is not None:
        from .evaluation.inception import load_inception

        features = load_inception(inception)
    a, b = _examples(images_a), _examples(images_b)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"the two sets differ in shape: {a.shape[1:]} and {b.shape[1:]}")
    fa = extract(features, a, batch_size).double()
    fb = extract(features, b, batch_size).double()
    return frechet_distance(feature_stats(fa), feature_stats(fb))


def _examples(data) -> torch.Tensor:
    """All examples of ``data`` as one float tensor (uint8 images mapped to [-1, 1]; samples
    may lie outside it)."""
    if isinstance(data, Dataset):
        return data.get_batch(torch.arange(len(data)))
    x = data.detach().cpu() if torch.is_tensor(data) else torch.as_tensor(np.asarray(data))
    if x.dtype == torch.uint8:
        return uint8_to_float(x)
    if not x.is_floating_point() or x.ndim < 2:
        raise ValueError(
            f"examples must be [N, ...] floats or uint8, got {x.dtype} {tuple(x.shape)}"
        )
    return x.float()
