"""Checkpoint files, EMA and the data order: atomic writes, file modes, round trips, pruning,
clear errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from ddkit import checkpoint as ckpt
from ddkit.paths import atomic_write_bytes
from ddkit.training.ema import EMA
from ddkit.training.state import EpochBatches


# ---- EMA ----------------------------------------------------------------------------------------
def test_ema_matches_closed_form_with_warmup():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9, warmup=True)
    s = {k: v.clone() for k, v in ema.shadow.items()}
    for k in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        d = min(0.9, (1 + k) / (10 + k))
        assert ema.current_decay() == pytest.approx(d)
        ema.update(model)
        for n, p in model.named_parameters():
            s[n] = d * s[n] + (1 - d) * p.detach()
            torch.testing.assert_close(ema.shadow[n], s[n], rtol=1e-6, atol=1e-6)


def test_ema_averages_parameters_only_and_leaves_buffers():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.5, warmup=False)
    assert set(ema.shadow) == {n for n, _ in model.named_parameters()}
    model.train()
    model(torch.randn(16, 4))  # changes the running statistics (buffers)
    with torch.no_grad():
        model[0].weight.add_(2.0)
    ema.update(model)
    avg = ema.averaged_model(model)
    for (n, b), (_, b_ema) in zip(model.named_buffers(), avg.named_buffers(), strict=True):
        assert torch.equal(b, b_ema), f"buffer {n} was averaged or not copied"
    torch.testing.assert_close(avg[0].weight, model[0].weight - 1.0)


# ---- checkpoints --------------------------------------------------------------------------------
def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "c.bin"
    atomic_write_bytes(path, b"old")

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["c.bin"]  # no temporary left behind


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_mode_open_would(tmp_path, umask):
    """Atomic writes go through mkstemp (0600); the file ends with what open() gives under the
    process's umask, so a shared run folder stays readable to the group."""
    old = os.umask(umask)
    try:
        path = tmp_path / "c.bin"
        atomic_write_bytes(path, b"data")
        with open(tmp_path / "plain.bin", "wb") as f:
            f.write(b"data")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain.bin").stat().st_mode & 0o777
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_checkpoint_round_trip_prune_and_errors(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(
            tmp_path / ckpt.checkpoint_name(step),
            {"a": torch.ones(2) * step},
            {"step": step, "config": {}},
        )
    ckpt.prune_checkpoints(tmp_path, 2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        ckpt.checkpoint_name(3),
        ckpt.checkpoint_name(4),
    ]
    tensors, meta = ckpt.load_checkpoint(tmp_path)  # a folder: its newest
    assert meta["step"] == 4 and torch.equal(tensors["a"], torch.full((2,), 4.0))
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ckpt.CheckpointError, match="not a ddkit checkpoint"):
        ckpt.load_checkpoint(bad)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nope.safetensors")
    old = tmp_path / "old.safetensors"
    from safetensors.torch import save

    old.write_bytes(
        save({"a": torch.ones(1)}, metadata={"ddkit": json.dumps({"schema_version": 0})})
    )
    with pytest.raises(ckpt.CheckpointError, match="schema version 0"):
        ckpt.load_checkpoint(old)


def test_epoch_batches_cover_each_epoch_once():
    b = EpochBatches(10, seed=3)
    first = torch.cat([b.next(4), b.next(4), b.next(2)])
    assert sorted(first.tolist()) == list(range(10)) and b.epoch == 1 and b.pos == 0
    resumed = EpochBatches(10, 3, epoch=1, pos=0)
    assert torch.equal(resumed.next(7), b.next(7))
