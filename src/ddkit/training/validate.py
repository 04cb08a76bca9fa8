"""The form a training checkpoint must have before a resume uses any of it.

:func:`ddkit.checkpoint.load_checkpoint` has already checked the file, the integrity hash and
the top of the metadata (schema version, step, config).  What is checked here is what a resume
reads: every metadata entry of :meth:`Trainer.save_checkpoint` with its JSON type and range,
and every tensor by name, dtype and shape against what the rebuilt trainer holds -- the
model, the EMA, one optimizer state per trained parameter, the RNG states of every rank, the
timestep sampler.  Nothing is cast or filled in: a tensor of another dtype or a missing
optimizer state is refused (one line naming the file and the entry) rather than resumed from
silently.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .. import checkpoint as ckpt
from ..config import Config
from ..resources import MAX_SEED
from ..trained import checkpoint_config
from .state import tuplify

# [train] keys a resume may change: none of them alters the computation
RESUMABLE_TRAIN_KEYS = (
    "max_steps",
    "log_every",
    "ckpt_every",
    "keep_last",
    "sample_every",
    "sample_num",
    "out_dir",
    "progress",
    "tensorboard",
)
# tensors a ddkit training checkpoint may hold, by name prefix
TENSOR_GROUPS = ("model/", "ema/", "optim/", "gen/train", "rng/torch/", "rng/cuda/", "tsampler/")


def resume_config(meta: dict, train_overrides: dict) -> Config:
    """The config a resume from ``meta`` runs: the checkpoint's, with ``train_overrides`` of
    :data:`RESUMABLE_TRAIN_KEYS`.  ``out_dir`` is the override if given, else the run folder
    the checkpoint file lies in (``<run>/checkpoints/ckpt-*.safetensors``) -- never the
    ``out_dir`` recorded inside the checkpoint, which may name any folder."""
    bad = sorted(set(train_overrides) - set(RESUMABLE_TRAIN_KEYS))
    if bad:
        allowed = ", ".join(sorted(RESUMABLE_TRAIN_KEYS))
        raise ValueError(f"train.{bad[0]} cannot change on resume; allowed: {allowed}")
    overrides = dict(train_overrides)
    if "out_dir" not in overrides:
        file = Path(meta["path"])
        if file.parent.name != "checkpoints":
            raise ValueError(
                f"checkpoint {str(file)!r} is not in a run folder's checkpoints/ folder; "
                "give the folder to write into with --set train.out_dir=DIR"
            )
        overrides["out_dir"] = str(file.parent.parent)
    cfg = checkpoint_config(meta)
    new_max = overrides.get("max_steps", cfg.train.max_steps)
    if cfg.optim.lr_schedule != "constant" and new_max != cfg.train.max_steps:
        raise ValueError(
            f"checkpoint {meta['path']!r}: train.max_steps={new_max} cannot change on resume with "
            f"optim.lr_schedule={cfg.optim.lr_schedule!r}: the decay is laid out over "
            f"max_steps={cfg.train.max_steps}"
        )
    if meta["step"] > new_max:
        raise ValueError(
            f"checkpoint {meta['path']!r} is at step {meta['step']}, past train.max_steps="
            f"{new_max}; give a larger one with --set train.max_steps=N"
        )
    return replace(cfg, train=replace(cfg.train, **overrides))


def _fail(meta: dict, entry: str, problem: str):
    raise ckpt.entry_error(meta, entry, problem)


def _int(meta: dict, value, entry: str, low: int = 0, high: int = MAX_SEED) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail(meta, entry, f"is {value!r}, not an integer in {low}..{high}")
    return value


def _dict(meta: dict, value, entry: str, keys=()) -> dict:
    if not isinstance(value, dict):
        got = "missing" if value is None else f"a JSON {type(value).__name__}"
        _fail(meta, entry, f"is {got}, not an object")
    for k in keys:
        if k not in value:
            _fail(meta, f"{entry}.{k}", "is missing")
    return value


def check_resume(meta: dict, tensors: dict, trainer) -> None:
    """CheckpointError (naming the file and the entry) unless ``meta`` and ``tensors`` hold
    everything :meth:`Trainer.load_state` restores, in the form ``trainer`` holds it."""
    for key in ("world_size", "data_position", "data_shape", "optimizer", "ema"):
        if key not in meta:
            _fail(meta, key, "is missing")
    for key in ("rng_python", "rng_numpy"):
        if key not in meta:
            _fail(meta, key, "is missing")
    world = _int(meta, meta["world_size"], "world_size", 1, 1 << 20)
    pos = _dict(meta, meta["data_position"], "data_position", ("n", "seed", "epoch", "pos"))
    n = _int(meta, pos["n"], "data_position.n", 1)
    if n != len(trainer.dataset):
        _fail(
            meta,
            "data_position.n",
            f"is {n}: trained on {n} examples; the data has {len(trainer.dataset)}",
        )
    _int(meta, pos["seed"], "data_position.seed")
    _int(meta, pos["epoch"], "data_position.epoch")
    _int(meta, pos["pos"], "data_position.pos", 0, n - 1)
    if meta["data_shape"] != list(trainer.dataset.shape):
        have = list(trainer.dataset.shape)
        _fail(meta, "data_shape", f"is {meta['data_shape']!r}; the data's shape is {have}")
    ema = _dict(meta, meta["ema"], "ema", ("decay", "warmup", "updates"))
    if not _number(ema["decay"]) or not 0.0 <= ema["decay"] < 1.0:
        _fail(meta, "ema.decay", f"is {ema['decay']!r}, not a number in [0, 1)")
    if not isinstance(ema["warmup"], bool):
        _fail(meta, "ema.warmup", f"is {ema['warmup']!r}, not true or false")
    _int(meta, ema["updates"], "ema.updates")
    _check_host_rng(meta)

    unknown = sorted(k for k in tensors if not k.startswith(TENSOR_GROUPS))
    if unknown:
        _fail(meta, unknown[0], "is not a tensor of a ddkit training checkpoint")
    _check_cuda_rng(meta, tensors, world)
    ckpt.check_model_tensors(meta, tensors, trainer.model, "ema")
    gen = {k.removeprefix("gen/"): v for k, v in tensors.items() if k.startswith("gen/")}
    ckpt.check_tensors(meta, gen, {"train": torch.Generator().get_state()}, "gen")
    got = {
        k.removeprefix("rng/torch/"): v for k, v in tensors.items() if k.startswith("rng/torch/")
    }
    ranks = {str(r) for r in range(world)}
    if set(got) != ranks:
        extra, missing = set(got) - ranks, ranks - set(got)
        odd = min(extra) if extra else min(missing, key=int)
        _fail(meta, f"rng/torch/{odd}", f"breaks the one state per process 0..{world - 1}")
    ckpt.check_tensors(meta, got, dict.fromkeys(got, torch.get_rng_state()), "rng/torch")
    for k in ["gen/train", *(f"rng/torch/{r}" for r in range(world))]:
        try:  # a Mersenne Twister state of the right size can still be invalid (all zeros)
            torch.Generator().set_state(tensors[k])
        except RuntimeError:
            _fail(meta, k, "is not a valid state of torch's random generator")
    sampler = trainer.t_sampler.state_dict()
    ckpt.check_tensors(meta, ckpt.tensors_with_prefix(tensors, "tsampler"), sampler, "tsampler")
    _check_optimizer(meta, tensors, trainer.optimizer)


def _check_cuda_rng(meta: dict, tensors: dict, world: int) -> None:
    """``rng/cuda/<rank>/<device>``: a rank of the run, uint8 [n] (of this machine's state size
    where it has CUDA)."""
    size = torch.cuda.get_rng_state().numel() if torch.cuda.is_available() else None
    for k, v in tensors.items():
        if not k.startswith("rng/cuda/"):
            continue
        m = re.fullmatch(r"rng/cuda/(\d{1,6})/(\d{1,4})", k)
        if m is None or int(m.group(1)) >= world:
            _fail(meta, k, f"is not rng/cuda/<rank below {world}>/<device>")
        if v.dtype != torch.uint8 or v.dim() != 1 or (size is not None and v.numel() != size):
            _fail(meta, k, f"is {ckpt.describe(v)}; expected uint8 [{size or 'n'}]")


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# what a resume takes from the checkpoint's optimizer groups, with its range; every other option
# (fused, foreach, capturable, maximize, ...) is the optimizer's that the config builds here
HYPER_PARAMETERS = {
    "lr": (0.0, math.inf),
    "eps": (1e-300, math.inf),
    "weight_decay": (0.0, math.inf),
}


def optimizer_groups(meta: dict, optimizer: torch.optim.Optimizer) -> list[dict]:
    """The param groups to load: ``optimizer``'s own, with lr, betas, eps, weight_decay and
    amsgrad from the checkpoint, each checked for type and range."""
    o = _dict(meta, meta["optimizer"], "optimizer", ("param_groups", "scalars"))
    groups, mine = o["param_groups"], optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(mine):
        _fail(meta, "optimizer.param_groups", f"is not a list of {len(mine)}")
    merged = []
    for i, (g, own) in enumerate(zip(groups, mine, strict=True)):
        where = f"optimizer.param_groups[{i}]"
        g = _dict(meta, g, where, ("params", "betas", "amsgrad", *HYPER_PARAMETERS))
        if g["params"] != own["params"]:
            _fail(meta, f"{where}.params", "does not match the model's")
        for k, (low, high) in HYPER_PARAMETERS.items():
            if not _number(g[k]) or not low <= g[k] <= high:
                _fail(meta, f"{where}.{k}", f"is {g[k]!r}, not a number in [{low:g}, {high}]")
        b = g["betas"]
        if not (isinstance(b, list) and len(b) == 2 and all(_number(v) and 0 <= v < 1 for v in b)):
            _fail(meta, f"{where}.betas", f"is {b!r}, not two numbers in [0, 1)")
        if not isinstance(g["amsgrad"], bool):
            _fail(meta, f"{where}.amsgrad", f"is {g['amsgrad']!r}, not true or false")
        merged.append({**own, **{k: g[k] for k in ("betas", "amsgrad", *HYPER_PARAMETERS)}})
    if o["scalars"] != {}:  # Adam and AdamW keep tensors only
        _fail(meta, "optimizer.scalars", f"is {str(o['scalars'])[:60]}, not {{}}")
    return merged


def _check_optimizer(meta: dict, tensors: dict, optimizer: torch.optim.Optimizer) -> None:
    """The optimizer's groups (:func:`optimizer_groups`) and, once a step was taken, one full
    state per trained parameter (Adam: step, exp_avg, exp_avg_sq [, max_exp_avg_sq]) of the
    parameter's shape; none before."""
    groups = optimizer_groups(meta, optimizer)
    expected = {}
    if meta["step"] > 0:
        amsgrad = any(g["amsgrad"] for g in groups)  # the loaded groups decide the state
        for g, own in zip(groups, optimizer.param_groups, strict=True):
            for idx, p in zip(g["params"], own["params"], strict=True):
                if not p.requires_grad:
                    continue
                expected[f"{idx}/step"] = torch.zeros((), dtype=torch.float32)
                for k in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()):
                    expected[f"{idx}/{k}"] = p.detach()
    ckpt.check_tensors(meta, ckpt.tensors_with_prefix(tensors, "optim"), expected, "optim")


def _check_host_rng(meta: dict) -> None:
    """Python's state is [version, 625 words, gauss_next]; numpy's ["MT19937", 624 words, pos,
    has_gauss, cached_gaussian].  Each is also tried on a throwaway generator."""
    s = meta["rng_python"]
    ok = isinstance(s, list) and len(s) == 3 and (s[2] is None or _number(s[2]))
    try:
        if not ok:
            raise ValueError
        random.Random().setstate(tuplify(s))
    except Exception:  # noqa: BLE001 (whatever the generator rejects it with)
        _fail(meta, "rng_python", "is not a state of Python's random generator")
    s = meta["rng_numpy"]
    ok = isinstance(s, list) and len(s) == 5 and s[0] == "MT19937"
    ok = ok and isinstance(s[1], list) and len(s[1]) == 624
    ok = ok and all(isinstance(w, int) and not isinstance(w, bool) for w in s[1])
    try:
        pos_ok = isinstance(s[2], int) and not isinstance(s[2], bool) and 0 <= s[2] <= 624
        if not ok or not pos_ok or not _number(s[4]) or s[3] not in (0, 1) or s[3] is True:
            raise ValueError
        np.random.RandomState().set_state((s[0], np.asarray(s[1], dtype=np.uint32), *s[2:]))
    except Exception:  # noqa: BLE001
        _fail(meta, "rng_numpy", "is not a state of numpy's random generator")
