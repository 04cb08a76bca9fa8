"""What a training run resumes from besides weights and optimizer: the position in the data
order and the random-number streams; and the weights a new run may start from (``init_from``).

Checkpoint layout: torch's RNG state of rank r under the tensor ``rng/torch/<r>`` and its CUDA
devices' under ``rng/cuda/<r>/<device>``; Python's and numpy's global states in the JSON
metadata as ``rng_python`` and ``rng_numpy``.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import checkpoint as ckpt
from . import distributed as D


class EpochBatches:
    """Indices of successive batches over a data set of size n: each epoch is a permutation drawn
    from (seed, epoch), so the position (epoch, pos) is the whole state."""

    def __init__(self, n: int, seed: int, epoch: int = 0, pos: int = 0):
        if n < 1:
            raise ValueError("the data set is empty")
        self.n, self.seed, self.epoch, self.pos = n, seed, epoch, pos
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**64)
        return torch.randperm(self.n, generator=g)

    def next(self, size: int) -> torch.Tensor:
        """The indices [size] of the next batch (continuing into the next epoch if needed)."""
        parts, need = [], size
        while need:
            take = min(need, self.n - self.pos)
            parts.append(self._perm[self.pos : self.pos + take])
            self.pos += take
            need -= take
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
        return torch.cat(parts)

    def state_dict(self) -> dict:
        """The position, JSON-able: ``EpochBatches(**state)`` continues from it."""
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos, "n": self.n}


def torch_rng_state() -> dict:
    """This process's torch RNG states: CPU (``torch``) and each CUDA device's (``cuda``)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def gather_torch_rng(info: D.DistInfo) -> list[dict]:
    """:func:`torch_rng_state` of every rank (in rank order), exchanged as flat uint8 tensors
    with their lengths (no pickled objects cross processes)."""
    mine = torch_rng_state()
    parts = [mine["torch"], *mine["cuda"]]
    lengths = torch.tensor([len(parts)] + [p.numel() for p in parts], dtype=torch.long)
    if not info.enabled:
        return [mine]
    states = []
    all_lengths = D.all_gather_tensor(lengths, info)
    all_bytes = D.all_gather_tensor(torch.cat(parts), info)
    i = j = 0
    for _ in range(info.world_size):
        k = int(all_lengths[i])
        sizes = [int(n) for n in all_lengths[i + 1 : i + 1 + k]]
        i += 1 + k
        chunks = list(torch.split(all_bytes[j : j + sum(sizes)], sizes))
        j += sum(sizes)
        states.append({"torch": chunks[0].clone(), "cuda": [c.clone() for c in chunks[1:]]})
    return states


def rng_tensors(states: list[dict]) -> dict[str, torch.Tensor]:
    """Checkpoint tensors for the :func:`torch_rng_state` of each rank (in rank order)."""
    tensors = {}
    for r, st in enumerate(states):
        tensors[f"rng/torch/{r}"] = st["torch"]
        for d, s in enumerate(st["cuda"]):
            tensors[f"rng/cuda/{r}/{d}"] = s
    return tensors


def restore_torch_rng(tensors: dict[str, torch.Tensor], rank: int) -> None:
    """Set this process's torch RNG states to those rank ``rank`` saved."""
    torch.set_rng_state(tensors[f"rng/torch/{rank}"])
    prefix = f"rng/cuda/{rank}/"
    cuda = {int(k[len(prefix) :]): v for k, v in tensors.items() if k.startswith(prefix)}
    if cuda and torch.cuda.is_available():  # the devices both machines have, in device order
        for d in sorted(cuda)[: torch.cuda.device_count()]:
            torch.cuda.set_rng_state(cuda[d], d)


def host_rng_meta() -> dict:
    """Python's and numpy's global RNG states, JSON-able (``rng_python``, ``rng_numpy``)."""
    np_state = np.random.get_state()  # noqa: NPY002 (legacy global state, saved as issued)
    return {
        "rng_python": _jsonable(random.getstate()),
        "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def restore_host_rng(meta: dict) -> None:
    """Set Python's and numpy's global RNG states from :func:`host_rng_meta`'s keys."""
    random.setstate(tuplify(meta["rng_python"]))
    s = meta["rng_numpy"]
    np.random.set_state((s[0], np.asarray(s[1], dtype=np.uint32), *s[2:]))  # noqa: NPY002


def init_weights(model: nn.Module, path: str | Path, log=None) -> None:
    """Start ``model`` from the EMA weights of a checkpoint (a file or a run folder: its
    newest) of the same architecture -- fine-tuning, or a new training phase with other
    optimizer settings.  Only the weights are taken: step, optimizer and RNG start fresh."""
    tensors, meta = ckpt.load_checkpoint(path)
    try:
        model.load_state_dict(ckpt.model_weights(tensors, "ema"))
    except RuntimeError:
        raise ckpt.CheckpointError(
            f"train.init_from={str(path)!r}: its weights do not fit this config's model "
            "(another architecture)"
        ) from None
    if log is not None:
        log(f"model initialised from the EMA weights of {meta['path']} (step {meta['step']})")


def _jsonable(obj):
    if isinstance(obj, tuple):
        return [_jsonable(v) for v in obj]
    return obj


def tuplify(obj):
    """JSON lists back to the nested tuples Python's RNG state is made of."""
    if isinstance(obj, list):
        return tuple(tuplify(v) for v in obj)
    return obj
