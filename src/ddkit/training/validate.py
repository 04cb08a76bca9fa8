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
            f"train.max_steps={new_max} cannot change on resume with "
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
    if not _number(ema["decay"]) or not 0.0 <= ema["decay"] <= 1.0:
        _fail(meta, "ema.decay", f"is {ema['decay']!r}, not a number in [0, 1]")
    if not isinstance(ema["warmup"], bool):
        _fail(meta, "ema.warmup", f"is {ema['warmup']!r}, not true or false")
    _int(meta, ema["updates"], "ema.updates")
    _check_host_rng(meta)

    unknown = sorted(k for k in tensors if not k.startswith(TENSOR_GROUPS))
    if unknown:
        _fail(meta, unknown[0], "is not a tensor of a ddkit training checkpoint")
    for k, v in tensors.items():
        if k.startswith("rng/cuda/") and (v.dtype != torch.uint8 or v.dim() != 1):
            _fail(meta, k, f"is {ckpt.describe(v)}; expected uint8 [n]")
    ckpt.check_model_tensors(meta, tensors, trainer.model, "ema")
    gen = {k.removeprefix("gen/"): v for k, v in tensors.items() if k.startswith("gen/")}
    ckpt.check_tensors(meta, gen, {"train": torch.Generator().get_state()}, "gen")
    cpu_rng = {str(r): torch.get_rng_state() for r in range(world)}
    got = {
        k.removeprefix("rng/torch/"): v for k, v in tensors.items() if k.startswith("rng/torch/")
    }
    ckpt.check_tensors(meta, got, cpu_rng, "rng/torch")
    for k in ["gen/train", *(f"rng/torch/{r}" for r in range(world))]:
        try:  # a Mersenne Twister state of the right size can still be invalid (all zeros)
            torch.Generator().set_state(tensors[k])
        except RuntimeError:
            _fail(meta, k, "is not a valid state of torch's random generator")
    sampler = trainer.t_sampler.state_dict()
    ckpt.check_tensors(meta, ckpt.tensors_with_prefix(tensors, "tsampler"), sampler, "tsampler")
    _check_optimizer(meta, tensors, trainer.optimizer)


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _same_kind(v, want) -> bool:
    """Whether a saved optimizer hyper-parameter ``v`` has the kind of this optimizer's
    ``want``: a flag a flag, a number a finite number, a tuple a list as long of numbers; an
    unset option (None) may be saved unset or as a flag."""
    if isinstance(want, bool):
        return isinstance(v, bool)
    if want is None:
        return v is None or isinstance(v, bool)
    if isinstance(want, int | float):
        return _number(v)
    if isinstance(want, tuple | list):
        return isinstance(v, list) and len(v) == len(want) and all(map(_number, v))
    return type(v) is type(want)


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
        if not ok or not _number(s[4]) or s[3] not in (0, 1) or isinstance(s[3], bool):
            raise ValueError
        np.random.RandomState().set_state((s[0], np.asarray(s[1], dtype=np.uint32), *s[2:]))
    except Exception:  # noqa: BLE001
        _fail(meta, "rng_numpy", "is not a state of numpy's random generator")


def _check_optimizer(meta: dict, tensors: dict, optimizer: torch.optim.Optimizer) -> None:
    """The optimizer's JSON part (groups with this optimizer's keys, numeric scalars) and one
    full state per trained parameter once a step was taken (Adam: step, exp_avg, exp_avg_sq
    [, max_exp_avg_sq]) of the parameter's shape."""
    o = _dict(meta, meta["optimizer"], "optimizer", ("param_groups", "scalars"))
    groups = o["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        _fail(meta, "optimizer.param_groups", f"is not a list of {len(optimizer.param_groups)}")
    params = []
    for i, (g, mine) in enumerate(zip(groups, optimizer.state_dict()["param_groups"], strict=True)):
        g = _dict(meta, g, f"optimizer.param_groups[{i}]", tuple(mine))
        if g["params"] != mine["params"]:
            _fail(meta, f"optimizer.param_groups[{i}].params", "does not match the model's")
        for k, want in mine.items():
            if k != "params" and not _same_kind(g[k], want):
                _fail(meta, f"optimizer.param_groups[{i}].{k}", f"is {g[k]!r}, unlike {want!r}")
        params += mine["params"]
    scalars = _dict(meta, o["scalars"], "optimizer.scalars")
    for k, v in scalars.items():
        idx, _, name = k.partition("/")
        if not (idx.isdigit() and int(idx) in params and name.isidentifier()):
            _fail(meta, f"optimizer.scalars.{k}", "is not '<parameter index>/<name>'")
        if not _number(v):
            _fail(meta, f"optimizer.scalars.{k}", f"is {v!r}, not a number")
    if meta["step"] == 0:
        return
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    amsgrad = any(g.get("amsgrad") for g in groups)  # the loaded groups decide the state
    got = ckpt.tensors_with_prefix(tensors, "optim")
    expected = {}
    for idx, p in zip(params, flat, strict=True):
        if not p.requires_grad:
            continue
        expected[f"{idx}/step"] = torch.zeros((), dtype=torch.float32)
        for k in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()):
            expected[f"{idx}/{k}"] = p.detach()
    ckpt.check_tensors(meta, got, expected, "optim")
