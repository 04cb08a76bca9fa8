"""Fuzzing training checkpoints through the command line: several hundred generated hostile or
corrupted checkpoints -- metadata of the wrong form, each entry deleted or of the wrong type or
range, tensors deleted, cast, reshaped or added, the file's bytes flipped, cut or padded, the
file replaced by a FIFO, a folder or a device -- each fed in-process to ``ddkit.cli.main`` as
``train --resume``, ``sample`` and ``eval``.  For each: exit status 2, exactly one line on
stderr with no traceback, naming the checkpoint file (and the entry the case is about), and
nothing written: the run folder is byte-identical afterwards and no ``--out`` folder appears.
A case that would block (a FIFO opened for reading) fails after ``CASE_TIMEOUT`` seconds
instead of hanging.

Mutations that leave the tensors' integrity hash valid are written through
:func:`ddkit.checkpoint.save_checkpoint` (so the schema checks must refuse them); those that
must fail the hash are written as raw safetensors bytes."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import stat
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save
from tiny_run import MLP_TOML

from ddkit import checkpoint as ckpt
from ddkit.cli import main

CASE_TIMEOUT = 10  # seconds; every case takes well under one
CKPT = "checkpoints/ckpt-00000002.safetensors"  # in a run folder, after max_steps = 2

# the commands, with "{run}" (the copied run folder), "{ckpt}" (its checkpoint file) and
# "{tmp}" (the case's folder) filled in; each is valid as it stands (see test_control)
COMMANDS = {
    "resume": ["train", "--resume", "{run}", "--set", "train.max_steps=3"],
    "resume-file": ["train", "--resume", "{ckpt}", "--set", "train.max_steps=3"],
    "sample": ["sample", "{ckpt}", "--steps", "3", "--num", "4", "--out", "{tmp}/o"],
    "eval": ["eval", "{ckpt}", "--bpd", "--ode-steps", "5", "--bpd-num", "4", "--out", "{tmp}/o"],
}
ALL = ("resume", "sample", "eval")  # what reads model/ema and config
RESUME = ("resume",)  # what reads the rest (optimizer, RNG, data position)
FILE_KINDS = ("resume", "resume-file", "sample", "eval")

# wrong JSON values for an entry, by name
WRONG = {
    "null": None,
    "list": [1],
    "string": "x",
    "float": 1.5,
    "bool": True,
    "huge": 10**30,
    "negative": -1,
}
RESUME_KEYS = (
    "world_size",
    "data_position",
    "data_shape",
    "optimizer",
    "ema",
    "rng_python",
    "rng_numpy",
)


# ---- the pristine runs --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, dict, dict]]:
    """name -> (run folder, its checkpoint's tensors, its metadata without "path"): the MLP
    run of tests/tiny_run.py trained for 2 steps, and the same with the loss-second-moment
    timestep sampler (whose state is checkpointed as ``tsampler/*`` tensors)."""
    root = tmp_path_factory.mktemp("ckpt-fuzz")
    tomls = {
        "mlp": MLP_TOML,
        "lsm": MLP_TOML.replace("T = 25\n", 'T = 25\ntimestep_sampler = "loss_second_moment"\n'),
    }
    out = {}
    for name, toml in tomls.items():
        cfg = root / f"{name}.toml"
        cfg.write_text(toml.replace("max_steps = 1\n", "max_steps = 2\n"))
        run = root / name
        state = _rng_states()
        try:
            code = main(["train", str(cfg), "--set", f'train.out_dir="{run}"'])
        finally:
            _set_rng_states(state)
        assert code == 0
        assert (run / CKPT).is_file()
        tensors, meta = ckpt.load_checkpoint(run / CKPT)
        meta.pop("path")
        out[name] = (run, tensors, meta)
    assert any(k.startswith("tsampler/") for k in out["lsm"][1])
    return out


def _rng_states():
    return torch.get_rng_state(), np.random.get_state(), random.getstate()  # noqa: NPY002


def _set_rng_states(states) -> None:
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])  # noqa: NPY002
    random.setstate(states[2])


# ---- writing a mutated checkpoint ------------------------------------------------------------
def _raw(path: Path, tensors: dict, metadata: dict | None) -> None:
    """Write ``tensors`` with the safetensors ``metadata`` as they are (no hash recomputed)."""
    plain = {k: v.contiguous() for k, v in tensors.items()}
    path.write_bytes(st_save(plain, metadata=metadata))


def meta_edit(fn):
    """A mutation of the metadata, saved with a valid integrity hash."""

    def mutate(path, tensors, meta):
        fn(meta)
        ckpt.save_checkpoint(path, tensors, meta)

    return mutate


def stale_meta_edit(fn):
    """A mutation of the metadata (schema_version and tensors_sha256 included), written raw."""

    def mutate(path, tensors, meta):
        fn(meta)
        _raw(path, tensors, {"ddkit": json.dumps(meta)})

    return mutate


def raw_metadata(metadata: dict | None):
    """The safetensors metadata replaced by ``metadata``."""

    def mutate(path, tensors, meta):
        _raw(path, tensors, metadata)

    return mutate


def tensor_edit(fn):
    """A mutation of the tensors, saved with a fresh (valid) integrity hash."""

    def mutate(path, tensors, meta):
        fn(tensors)
        ckpt.save_checkpoint(path, tensors, meta)

    return mutate


def stale_tensor_edit(fn):
    """A mutation of the tensors, written with the old integrity hash."""

    def mutate(path, tensors, meta):
        fn(tensors)
        _raw(path, tensors, {"ddkit": json.dumps(meta)})

    return mutate


def bytes_edit(fn):
    """A mutation of the file's bytes."""

    def mutate(path, tensors, meta):
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(fn(data))

    return mutate


def header_edit(fn):
    """A mutation of the safetensors header (JSON), the tensor data left as it is."""

    def edit(data: bytes) -> bytes:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        fn(header)
        text = json.dumps(header).encode()
        return len(text).to_bytes(8, "little") + text + data[8 + n :]

    return bytes_edit(edit)


def file_edit(fn):
    """The checkpoint file replaced by something else (``fn(path)`` makes it)."""

    def mutate(path, tensors, meta):
        path.unlink()
        fn(path)

    return mutate


def _noise(n: int) -> bytes:
    """``n`` pseudo-random bytes, the same on every run."""
    return random.Random(n).randbytes(n)


# ---- the cases --------------------------------------------------------------------------------
def _cases():
    cases = []

    def add(name, commands, mutate, words=(), run="mlp"):
        """``words``: the entry the case is about (any of them must be named)."""
        for command in commands:
            cases.append(pytest.param(command, run, mutate, words, id=f"{command}:{name}"))

    def setter(dotted: str, value):
        def fn(meta):
            *parents, last = dotted.split(".")
            d = meta
            for p in parents:
                d = d[int(p)] if isinstance(d, list) else d[p]
            if isinstance(d, list):
                d[int(last)] = value
            else:
                d[last] = value

        return fn

    def deleter(dotted: str):
        def fn(meta):
            *parents, last = dotted.split(".")
            d = meta
            for p in parents:
                d = d[int(p)] if isinstance(d, list) else d[p]
            del d[last]

        return fn

    # the metadata as a whole
    deep = "[" * 10_000 + "]" * 10_000
    for name, text in (
        ("list", "[]"),
        ("list-of-meta", '[{"schema_version": 2}]'),
        ("null", "null"),
        ("string", '"ddkit"'),
        ("number", "2"),
        ("deep-list", deep),
        ("deep-object", '{"a":' * 10_000 + "1" + "}" * 10_000),
        ("not-json", "{not json"),
        ("empty", ""),
        ("nan", "NaN"),
    ):
        add(f"metadata-{name}", ALL, raw_metadata({"ddkit": text}))
    add("metadata-ddkit-missing", ALL, raw_metadata({"format": "pt"}))
    add("metadata-none", ALL, raw_metadata(None))

    # schema version and integrity hash (written raw: save_checkpoint would set them)
    for name, value in (("99", 99), ("0", 0), ("string", "2"), ("null", None), ("neg", -2)):
        add(f"schema_version-{name}", ALL, stale_meta_edit(setter("schema_version", value)))
    add("schema_version-missing", ALL, stale_meta_edit(deleter("schema_version")))
    # a version-1 claim skips the hashes: the entries of version 2 give it away
    add("schema_version-downgrade", ALL, stale_meta_edit(setter("schema_version", 1)), ("version",))
    # any metadata entry changed without its hash: corrupt
    for key, value in (("step", 1), ("world_size", 2), ("rng_numpy", None), ("run_id", "0" * 32)):
        edit = stale_meta_edit(setter(key, value))
        add(f"stale-metadata-{key}", ALL, edit, ("integrity hash",))
    for name, value in (("missing", ...), ("null", None), ("short", "ab"), ("number", 5)):
        edit = deleter("tensors_sha256") if value is ... else setter("tensors_sha256", value)
        add(f"tensors_sha256-{name}", ALL, stale_meta_edit(edit), ("integrity hash",))

    # top-level entries deleted, and of the wrong JSON type or range
    for key in ("config", "step"):
        add(f"delete-{key}", ALL, meta_edit(deleter(key)), (key,))
        for name, value in WRONG.items():
            if key == "config" or name != "huge":
                add(f"{key}-{name}", ALL, meta_edit(setter(key, value)), (key,))
    add("step-huge", ALL, meta_edit(setter("step", 10**30)), ("step",))
    add("step-string-number", ALL, meta_edit(setter("step", "2")), ("step",))
    for key in RESUME_KEYS:
        add(f"delete-{key}", RESUME, meta_edit(deleter(key)), (key,))
        for name, value in WRONG.items():
            add(f"{key}-{name}", RESUME, meta_edit(setter(key, value)), (key,))
    add("world_size-0", RESUME, meta_edit(setter("world_size", 0)), ("world_size",))
    add("world_size-2", RESUME, meta_edit(setter("world_size", 2)), ("world_size", "rng/torch/1"))
    huge = meta_edit(setter("world_size", 1 << 20))  # refused before a state per rank is made
    add("world_size-million", RESUME, huge, ("rng/torch/1",))
    for name, value in (("short", "ab"), ("number", 7), ("upper", "A" * 32), ("list", [])):
        add(f"run_id-{name}", ALL, meta_edit(setter("run_id", value)), ("run_id",))

    # data position
    for key in ("n", "seed", "epoch", "pos"):
        entry = f"data_position.{key}"
        add(f"delete-{entry}", RESUME, meta_edit(deleter(entry)), (entry,))
        for name, value in (("negative", -1), ("float", 1.5), ("string", "3"), ("null", None)):
            add(f"{entry}-{name}", RESUME, meta_edit(setter(entry, value)), (entry,))
        add(f"{entry}-bool", RESUME, meta_edit(setter(entry, True)), (entry,))
    for name, value in (("n", 64), ("n+5", 69), ("huge", 2**63)):
        add(
            f"data_position.pos-{name}",
            RESUME,
            meta_edit(setter("data_position.pos", value)),
            ("data_position.pos",),
        )
    add("data_position.n-0", RESUME, meta_edit(setter("data_position.n", 0)), ("data_position.n",))
    add(
        "data_position.seed-2**63",
        RESUME,
        meta_edit(setter("data_position.seed", 2**63)),
        ("data_position.seed",),
    )
    # a position in a data set of another size than the run's (64 examples)
    add(
        "data_position.n-65", RESUME, meta_edit(setter("data_position.n", 65)), ("data_position.n",)
    )
    add("data_shape-3", RESUME, meta_edit(setter("data_shape", [3])), ("data_shape",))
    add("data_shape-strings", RESUME, meta_edit(setter("data_shape", ["2"])), ("data_shape",))

    # EMA
    bad_ema = {
        "decay": (("2.0", 2.0), ("-0.1", -0.1), ("string", "x"), ("null", None)),
        "warmup": (("yes", "yes"), ("int", 1), ("null", None)),
        "updates": (("-1", -1), ("float", 1.5), ("string", "2"), ("huge", 10**30), ("null", None)),
    }
    bad_ema["decay"] += (("nan", float("nan")), ("inf", float("inf")), ("bool", True))
    for key, values in bad_ema.items():
        entry = f"ema.{key}"
        add(f"delete-{entry}", RESUME, meta_edit(deleter(entry)), (entry,))
        for name, value in values:
            add(f"{entry}-{name}", RESUME, meta_edit(setter(entry, value)), (entry,))

    # optimizer: its param groups and scalars
    groups = "optimizer.param_groups"
    for key in ("param_groups", "scalars"):
        add(
            f"delete-optimizer.{key}",
            RESUME,
            meta_edit(deleter(f"optimizer.{key}")),
            (f"optimizer.{key}",),
        )

    def twice(meta):
        meta["optimizer"]["param_groups"] *= 2

    add("param_groups-empty", RESUME, meta_edit(setter(groups, [])), (groups,))
    add("param_groups-twice", RESUME, meta_edit(twice), (groups,))
    for name, value in (("string", "x"), ("object", {}), ("null", None), ("ints", [1])):
        add(f"param_groups-{name}", RESUME, meta_edit(setter(groups, value)), (groups,))
    for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "params"):
        entry = f"{groups}.0.{key}"
        add(f"param_group-delete-{key}", RESUME, meta_edit(deleter(entry)), (f"{groups}[0].{key}",))

    def params(fn):
        def edit(meta):
            g = meta["optimizer"]["param_groups"][0]
            g["params"] = fn(g["params"])

        return meta_edit(edit)

    for name, fn in (
        ("reversed", lambda p: p[::-1]),
        ("dropped", lambda p: p[:-1]),
        ("extra", lambda p: [*p, len(p)]),
        ("strings", lambda p: [str(i) for i in p]),
        ("empty", lambda p: []),
        ("object", lambda p: {"0": 0}),
    ):
        add(f"params-{name}", RESUME, params(fn), (f"{groups}[0].params",))
    # values of the right JSON type for the check, of the wrong type for Adam
    for key, value in (
        ("lr", {"a": 1}),
        ("betas", "x"),
        ("betas", [0.9]),
        ("eps", "x"),
        ("weight_decay", None),
        ("amsgrad", "yes"),
    ):
        entry = f"{groups}.0.{key}"
        add(
            f"param_group-{key}-{json.dumps(value)}",
            RESUME,
            meta_edit(setter(entry, value)),
            (f"{groups}[0].{key}",),
        )
    scalars = "optimizer.scalars"
    for name, value in (
        ("string", "x"),
        ("list", [1]),
        ("value-string", {"0/step": "x"}),
        ("value-bool", {"0/step": True}),
        ("value-null", {"0/step": None}),
        ("key-no-slash", {"step": 1}),
        ("key-not-index", {"zz/step": 1}),
        ("shadows-a-tensor", {"0/exp_avg": 1.0}),
        ("number", {"0/step": 1}),
    ):
        add(f"scalars-{name}", RESUME, meta_edit(setter(scalars, value)), (scalars,))

    # Python's and numpy's RNG states
    def rng(key, fn):
        def edit(meta):
            meta[key] = fn(meta[key])

        return meta_edit(edit)

    for name, fn in (
        ("empty", lambda s: []),
        ("short", lambda s: s[:2]),
        ("long", lambda s: [*s, 1]),
        ("strings", lambda s: [str(v) for v in s]),
        ("state-short", lambda s: [s[0], s[1][:10], s[2]]),
        ("state-strings", lambda s: [s[0], [str(v) for v in s[1]], s[2]]),
        ("state-huge", lambda s: [s[0], [2**70] * len(s[1]), s[2]]),
        ("version-99", lambda s: [99, s[1], s[2]]),
        ("gauss-string", lambda s: [s[0], s[1], "x"]),
    ):
        add(f"rng_python-{name}", RESUME, rng("rng_python", fn), ("rng_python",))
    for name, fn in (
        ("name", lambda s: ["PCG64", *s[1:]]),
        ("name-number", lambda s: [1, *s[1:]]),
        ("four", lambda s: s[:4]),
        ("three", lambda s: s[:3]),
        ("six", lambda s: [*s, 0]),
        ("key-short", lambda s: [s[0], s[1][:10], *s[2:]]),
        ("key-strings", lambda s: [s[0], ["x"] * len(s[1]), *s[2:]]),
        ("key-huge", lambda s: [s[0], [2**40] * len(s[1]), *s[2:]]),
        ("key-negative", lambda s: [s[0], [-1] * len(s[1]), *s[2:]]),
        ("pos-string", lambda s: [s[0], s[1], "x", *s[3:]]),
        ("pos-huge", lambda s: [s[0], s[1], 10**30, *s[3:]]),
        ("pos-far", lambda s: [s[0], s[1], 10**8, *s[3:]]),
        ("pos-625", lambda s: [s[0], s[1], 625, *s[3:]]),
        ("pos-negative", lambda s: [s[0], s[1], -1, *s[3:]]),
        ("has_gauss-2", lambda s: [*s[:3], 2, s[4]]),
    ):
        add(f"rng_numpy-{name}", RESUME, rng("rng_numpy", fn), ("rng_numpy",))

    # the saved config
    def config(fn):
        def edit(meta):
            fn(meta["config"])

        return meta_edit(edit)

    def nested(depth):
        value = 1
        for _ in range(depth):
            value = [value]
        return value

    for name, fn, words in (
        ("unknown-section", lambda c: c.update(evil={"x": 1}), ("config",)),
        ("missing-model", lambda c: c.pop("model"), ("config",)),
        ("missing-data", lambda c: c.pop("data"), ("config",)),
        ("empty", lambda c: c.clear(), ("config",)),
        ("model-list", lambda c: c.update(model=[1]), ("config",)),
        ("hidden-string", lambda c: c["model"].update(hidden="16"), ("config",)),
        ("hidden-float", lambda c: c["model"].update(hidden=16.5), ("config",)),
        ("hidden-bool", lambda c: c["model"].update(hidden=True), ("config",)),
        ("hidden-nested", lambda c: c["model"].update(hidden=nested(500)), ("config",)),
        ("depth-negative", lambda c: c["model"].update(depth=-1), ("config",)),
        ("dropout-string", lambda c: c["model"].update(dropout="x"), ("config",)),
        ("arch-unknown", lambda c: c["model"].update(arch="evil"), ("config",)),
        ("unknown-model-key", lambda c: c["model"].update(evil=1), ("config",)),
        ("T-string", lambda c: c["diffusion"].update(T="25"), ("config",)),
        ("T-zero", lambda c: c["diffusion"].update(T=0), ("config",)),
        ("T-huge", lambda c: c["diffusion"].update(T=10**12), ("memory",)),
        ("hidden-huge", lambda c: c["model"].update(hidden=10**6), ("memory",)),
        ("depth-huge", lambda c: c["model"].update(depth=10**9), ("memory",)),
        ("hidden-32", lambda c: c["model"].update(hidden=32), ("model/",)),
        ("depth-2", lambda c: c["model"].update(depth=2), ("model/",)),
        ("schedule-unknown", lambda c: c["diffusion"].update(schedule="evil"), ("config",)),
        ("prediction-unknown", lambda c: c["diffusion"].update(prediction=1), ("config",)),
    ):
        add(f"config-{name}", ALL, config(fn), words)
    for name, fn in (
        ("batch_size-zero", lambda c: c["train"].update(batch_size=0)),
        ("seed-negative", lambda c: c["train"].update(seed=-1)),
        ("device-evil", lambda c: c["train"].update(device="evil")),
        ("optim-name", lambda c: c["optim"].update(name="evil")),
    ):
        add(f"config-{name}", RESUME, config(fn), ("config",))
    # a run of another data set size than its data position says
    add(
        "config-num_samples-128",
        RESUME,
        config(lambda c: c["data"].update(num_samples=128)),
        ("data_position.n", "num_samples"),
    )

    # tensors: deleted, cast, reshaped
    def delete(name):
        return tensor_edit(lambda t: t.pop(name))

    def cast(name, dtype):
        return tensor_edit(lambda t: t.update({name: t[name].to(dtype)}))

    def reshape(name, how):
        def fn(t):
            v = t[name]
            if how == "extra-dim":
                t[name] = v.unsqueeze(0)
            else:  # truncated
                t[name] = v.reshape(-1)[:-1].clone() if v.dim() else v.reshape(1)[:0].clone()

        return tensor_edit(fn)

    targets = [
        ("gen/train", RESUME, "mlp", torch.uint8),
        ("rng/torch/0", RESUME, "mlp", torch.uint8),
        ("optim/3/exp_avg", RESUME, "mlp", torch.float32),
        ("optim/3/exp_avg_sq", RESUME, "mlp", torch.float32),
        ("optim/3/step", RESUME, "mlp", torch.float32),
        ("model/in_proj.weight", ALL, "mlp", torch.float32),
        ("model/out.bias", ALL, "mlp", torch.float32),
        ("ema/in_proj.weight", ALL, "mlp", torch.float32),
        ("tsampler/losses", RESUME, "lsm", torch.float64),
        ("tsampler/count", RESUME, "lsm", torch.int64),
    ]
    dtypes = (torch.float16, torch.float32, torch.float64, torch.int64, torch.uint8)
    for name, commands, run, own in targets:
        add(f"delete-{name}", commands, delete(name), (name,), run)
        for dtype in dtypes:
            if dtype != own:
                label = str(dtype).removeprefix("torch.")
                add(f"{name}-{label}", commands, cast(name, dtype), (name,), run)
        for how in ("extra-dim", "truncated"):
            add(f"{name}-{how}", commands, reshape(name, how), (name,), run)

    def put(name, value):
        return tensor_edit(lambda t: t.update({name: value}))

    def drop(prefix, suffix=""):
        def fn(t):
            for k in [k for k in t if k.startswith(prefix) and k.endswith(suffix)]:
                del t[k]

        return tensor_edit(fn)

    f32 = torch.zeros(3)
    add("extra-evil/x", RESUME, put("evil/x", f32), ("evil/x",))
    add("extra-top-level", RESUME, put("x", f32), ("'x'",))
    add("extra-model/evil", ALL, put("model/evil", f32), ("model/evil",))
    add("extra-ema/evil", ALL, put("ema/evil", f32), ("ema/evil",))
    add("extra-optim/99/exp_avg", RESUME, put("optim/99/exp_avg", f32), ("optim/99/exp_avg",))
    add("extra-optim/x/exp_avg", RESUME, put("optim/x/exp_avg", f32), ("optim/x/exp_avg",))
    add("extra-optim/0/evil", RESUME, put("optim/0/evil", f32), ("optim/0/evil",))
    add("extra-rng/torch/1", RESUME, put("rng/torch/1", torch.get_rng_state()), ("rng/torch/1",))
    add("extra-rng/cuda/0/0-float", RESUME, put("rng/cuda/0/0", f32), ("rng/cuda/0/0",))
    u8 = torch.zeros(16, dtype=torch.uint8)
    add("extra-rng/cuda/9/0-rank", RESUME, put("rng/cuda/9/0", u8), ("rng/cuda/9/0",))
    add("extra-rng/cuda/0/x-name", RESUME, put("rng/cuda/0/x", u8), ("rng/cuda/0/x",))
    add("extra-gen/evil", RESUME, put("gen/evil", f32), ("gen/evil",))
    add("extra-tsampler/losses", RESUME, put("tsampler/losses", f32), ("tsampler/losses",))
    add("delete-all-optim", RESUME, drop("optim/"), ("optim/",))
    add("delete-all-optim-steps", RESUME, drop("optim/", "/step"), ("/step",))
    add("delete-all-exp_avg_sq", RESUME, drop("optim/", "/exp_avg_sq"), ("/exp_avg_sq",))
    add("delete-all-rng", RESUME, drop("rng/"), ("rng/torch/0",))
    add("delete-all-tsampler", RESUME, drop("tsampler/"), ("tsampler/",), "lsm")
    add("delete-all-ema", ALL, drop("ema/"), ("ema/",))
    add("delete-all-model", ALL, drop("model/"), ("model/",))
    add("delete-all-tensors", ALL, drop(""), ("model/",))
    # the right dtype and shape, contents no generator state can have
    for name in ("gen/train", "rng/torch/0"):
        for label, value in (("zeros", 0), ("ones", 255)):
            add(
                f"{name}-{label}",
                RESUME,
                put(name, torch.full((5056,), value, dtype=torch.uint8)),
                (name,),
            )

    # integrity: bytes changed without the hash
    def flip(where):
        def fn(data):
            n = int.from_bytes(data[:8], "little")
            start = 8 + n
            i = {"first": start, "middle": (start + len(data)) // 2, "last": len(data) - 1}[where]
            return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]

        return bytes_edit(fn)

    for where in ("first", "middle", "last"):
        add(f"flip-data-{where}", ALL, flip(where), ("integrity hash",))

    def plus_one(name):
        return stale_tensor_edit(lambda t: t.update({name: t[name] + 1}))

    for name in ("model/in_proj.weight", "ema/out.bias", "optim/0/exp_avg", "gen/train"):
        add(f"stale-hash-{name}", ALL, plus_one(name), ("integrity hash",))
    add(
        "stale-hash-tensor-added",
        ALL,
        stale_tensor_edit(lambda t: t.update(x=f32)),
        ("integrity hash",),
    )
    add(
        "stale-hash-tensor-deleted",
        ALL,
        stale_tensor_edit(lambda t: t.pop("gen/train")),
        ("integrity hash",),
    )

    def shape_swap(header):
        header["model/out.weight"]["shape"] = header["model/out.weight"]["shape"][::-1]

    def dtype_same_size(header):
        header["model/out.bias"]["dtype"] = "I32"

    add("header-shape-swapped", ALL, header_edit(shape_swap), ("integrity hash",))
    add("header-dtype-same-size", ALL, header_edit(dtype_same_size), ("integrity hash",))

    def header_set(name, key, value):
        return header_edit(lambda h: h[name].__setitem__(key, value))

    for label, name, key, value in (
        ("offsets-beyond", "model/out.bias", "data_offsets", [0, 10**12]),
        ("offsets-reversed", "model/out.bias", "data_offsets", [8, 0]),
        ("offsets-overlap", "model/out.bias", "data_offsets", [0, 8]),
        ("dtype-other-size", "model/out.bias", "dtype", "F64"),
        ("dtype-unknown", "model/out.bias", "dtype", "EVIL"),
        ("shape-negative", "model/out.bias", "shape", [-2]),
        ("shape-huge", "model/out.bias", "shape", [2**62]),
        ("shape-string", "model/out.bias", "shape", "x"),
    ):
        add(f"header-{label}", ALL, header_set(name, key, value))
    add("header-metadata-object", ALL, header_set("__metadata__", "ddkit", {"a": 1}))
    add("header-metadata-missing", ALL, header_edit(lambda h: h.pop("__metadata__")))
    add("header-list", ALL, header_edit(lambda h: h.clear()))

    def length(n: int):
        """The header length field set to ``n`` (-1: the file's size)."""
        return bytes_edit(lambda d: (len(d) if n < 0 else n).to_bytes(8, "little") + d[8:])

    for label, fn in (
        ("half", lambda d: d[: len(d) // 2]),
        ("header-only", lambda d: d[: 8 + int.from_bytes(d[:8], "little")]),
        ("minus-one", lambda d: d[:-1]),
        ("garbage-appended", lambda d: d + _noise(64)),
        ("zeros-appended", lambda d: d + bytes(8)),
        ("zero-length", lambda d: b""),
        ("seven-bytes", lambda d: d[:7]),
        ("eight-bytes", lambda d: d[:8]),
        ("random", lambda d: _noise(len(d))),
        ("header-garbage", lambda d: d[:8] + _noise(int.from_bytes(d[:8], "little")) + d[8:]),
    ):
        add(f"bytes-{label}", ALL, bytes_edit(fn))
    for label, n in (("huge", 2**64 - 1), ("2**40", 2**40), ("zero", 0), ("file-size", -1)):
        add(f"header-length-{label}", ALL, length(n))

    # the file replaced by what is not a regular file
    def fifo_link(path):
        fifo = path.parent.parent.parent / "fifo"
        os.mkfifo(fifo)
        path.symlink_to(fifo)

    def make_socket(path):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()

    for label, fn in (
        ("fifo", os.mkfifo),
        ("fifo-link", fifo_link),
        ("folder", Path.mkdir),
        ("dev-zero", lambda p: p.symlink_to("/dev/zero")),
        ("dev-null", lambda p: p.symlink_to("/dev/null")),
        ("dev-urandom", lambda p: p.symlink_to("/dev/urandom")),
        ("socket", make_socket),
        ("dangling-link", lambda p: p.symlink_to(p.with_name("nowhere"))),
        ("link-loop", lambda p: p.symlink_to(p)),
    ):
        add(f"file-{label}", FILE_KINDS, file_edit(fn))
    return cases


CASES = _cases()


# ---- the runner -------------------------------------------------------------------------------
class CaseTimeout(BaseException):
    """A case ran past ``CASE_TIMEOUT`` (a BaseException, so that no ``except OSError`` or
    ``except Exception`` in the code under test turns it into an ordinary error)."""


def _timeout(signum, frame):
    raise CaseTimeout("the case ran past its time limit (blocked?)")


def _snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root`` (links not followed) with its bytes (files), its target
    (links) or its kind (the rest); nothing but regular files is opened."""
    out: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", p.read_bytes())
            else:
                out[rel] = ("kind", stat.S_IFMT(st.st_mode))
    return out


def _fresh_copy(runs, run: str, tmp: Path) -> tuple[Path, dict, dict]:
    """A copy of the pristine run ``run`` in ``tmp``, with fresh copies of its tensors and
    metadata for the mutation to edit."""
    src, tensors, meta = runs[run]
    dst = tmp / "run"
    shutil.copytree(src, dst, symlinks=True)
    return dst, {k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(meta))


def _run(argv: list[str]) -> int:
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(CASE_TIMEOUT)
    try:
        return main(argv)
    except SystemExit as e:  # argparse's refusals
        return e.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _argv(command: str, run: Path, tmp: Path) -> list[str]:
    fill = {"{run}": str(run), "{ckpt}": str(run / CKPT), "{tmp}": str(tmp)}
    out = []
    for a in COMMANDS[command]:
        for k, v in fill.items():
            a = a.replace(k, v)
        out.append(a)
    return out


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path_factory.getbasetemp() / "ckpt-fuzz-cache"))


@pytest.mark.parametrize("command, run, mutate, words", CASES)
def test_hostile_checkpoint(command, run, mutate, words, runs, tmp_path, monkeypatch, capsys):
    folder, tensors, meta = _fresh_copy(runs, run, tmp_path)
    path = folder / CKPT
    mutate(path, tensors, meta)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    problems = []
    state = _rng_states()
    try:
        code = _run(_argv(command, folder, tmp_path))
    except Exception as e:  # reported with all the case found
        code = None
        where = traceback.extract_tb(e.__traceback__)[-1]
        problems.append(
            f"{type(e).__name__} escaped ddkit.cli.main at {where.filename}:{where.lineno}: {e}"
        )
    finally:
        _set_rng_states(state)
    out, err = capsys.readouterr()
    line = err.strip()
    if "Traceback" in out + err:
        problems.append(f"a traceback was printed: {(out + err)[-2000:]!r}")
    if code is not None and code != 2:
        problems.append(f"exit status {code}, expected 2")
    if not line or "\n" in line:
        problems.append(f"stderr is not one line: {err[-2000:]!r}")
    elif str(path) not in line:
        problems.append(f"the line does not name the checkpoint {str(path)!r}: {line!r}")
    elif words and not any(w in line for w in words):
        problems.append(f"the line names none of {words}: {line!r}")
    after = _snapshot(tmp_path)
    written = sorted(k for k in after if after[k] != before.get(k))
    gone = sorted(set(before) - set(after))
    if written or gone:
        problems.append(f"files written: {written}, removed: {gone}")
    assert not problems, "\n".join(problems)


def test_control_resumes_samples_and_evaluates(runs, tmp_path, monkeypatch, capsys):
    """The unmutated copy is a good checkpoint for every command the cases run."""
    folder, _, _ = _fresh_copy(runs, "mlp", tmp_path)
    monkeypatch.chdir(tmp_path)
    state = _rng_states()
    try:
        for command in ("sample", "eval", "resume"):
            code = _run(_argv(command, folder, tmp_path))
            assert code == 0, (command, capsys.readouterr().err)
    finally:
        _set_rng_states(state)
    assert (tmp_path / "o" / "eval.json").is_file()
    assert (folder / "checkpoints" / "ckpt-00000003.safetensors").is_file()


def test_control_lsm_resumes(runs, tmp_path, monkeypatch, capsys):
    folder, _, _ = _fresh_copy(runs, "lsm", tmp_path)
    monkeypatch.chdir(tmp_path)
    state = _rng_states()
    try:
        assert _run(_argv("resume", folder, tmp_path)) == 0, capsys.readouterr().err
    finally:
        _set_rng_states(state)


def test_mutations_round_trip(runs, tmp_path):
    """The writers themselves: an unchanged metadata edit reloads with a valid hash; an
    unchanged raw write too (so a case's refusal is the mutation's, not the writer's)."""
    for mutate in (meta_edit(lambda m: None), stale_meta_edit(lambda m: None)):
        folder, tensors, meta = _fresh_copy(runs, "mlp", tmp_path)
        mutate(folder / CKPT, tensors, meta)
        ckpt.load_checkpoint(folder / CKPT)
        shutil.rmtree(folder)


def test_there_are_several_hundred_cases():
    assert len(CASES) >= 300
