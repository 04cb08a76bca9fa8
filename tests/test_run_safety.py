"""Run folders under faults and misuse, through the command line: a resume writes only where it
is told, a folder is locked for a run's lifetime, another run's files are never clobbered, a
full disk costs nothing but the step in flight, a torn log line does not block a resume, and
the processes of a distributed run exchange tensors only."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_run import MLP_TOML

from ddkit import checkpoint as ckpt
from ddkit.cli import main
from ddkit.training import distributed as D
from ddkit.training import runfolder, state
from ddkit.training.runlog import read_metrics


def _train(cwd: Path, out: Path, *extra: str) -> int:
    cfg = cwd / "run.toml"
    cfg.write_text(MLP_TOML)
    sets = [
        f'train.out_dir="{out}"',
        "train.ckpt_every=1",
        "train.keep_last=5",
        "train.log_every=1",
    ]
    return main(["train", str(cfg), *[a for s in sets for a in ("--set", s)], *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != runfolder.LOCK_NAME
    }


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished two-step run with a checkpoint after each step."""
    root = tmp_path_factory.mktemp("run")
    assert _train(root, root / "a", "--set", "train.max_steps=2") == 0
    return root / "a"


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(runfolder.LOCK_NAME))
    return to


# ---- a resume writes only into the folder it is given ------------------------------------------
def test_resuming_a_copied_run_leaves_the_original_untouched(run, tmp_path, capsys):
    before = _snapshot(run)
    copy = _copy(run, tmp_path / "copy")
    assert main(["train", "--resume", str(copy), "--set", "train.max_steps=3"]) == 0
    assert _snapshot(run) == before
    assert [p.name for p in ckpt.list_checkpoints(copy / "checkpoints")][
        -1
    ] == "ckpt-00000003.safetensors"
    assert read_metrics(copy / "metrics.jsonl")[-1]["step"] == 3


def test_a_received_checkpoint_naming_another_folder_cannot_write_there(run, tmp_path, capsys):
    victim = _copy(run, tmp_path / "victim")
    before = _snapshot(victim)
    # a checkpoint whose stored config points at the victim, received as a run of its own
    received = _copy(run, tmp_path / "received")
    path = ckpt.latest_checkpoint(received)
    tensors, meta = ckpt.load_checkpoint(path)
    meta["config"]["train"]["out_dir"] = str(victim)
    meta["config"]["train"]["keep_last"] = 1
    ckpt.save_checkpoint(path, tensors, {k: v for k, v in meta.items() if k != "path"})
    assert main(["train", "--resume", str(received), "--set", "train.max_steps=3"]) == 0
    assert _snapshot(victim) == before
    assert (received / "checkpoints" / "ckpt-00000003.safetensors").is_file()


def test_a_loose_checkpoint_file_needs_a_folder_to_write_into(run, tmp_path, capsys):
    loose = tmp_path / "ckpt.safetensors"
    shutil.copy(ckpt.latest_checkpoint(run), loose)
    assert main(["train", "--resume", str(loose), "--set", "train.max_steps=3"]) == 2
    assert "train.out_dir" in _error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]
    out = tmp_path / "new"
    argv = ["train", "--resume", str(loose), "--set", f'train.out_dir="{out}"']
    assert main([*argv, "--set", "train.max_steps=3"]) == 0
    assert (out / "checkpoints" / "ckpt-00000003.safetensors").is_file()


# ---- one trainer per folder --------------------------------------------------------------------
def test_a_second_trainer_in_a_locked_folder_exits_2_naming_the_holder(run, tmp_path, capsys):
    folder = _copy(run, tmp_path / "busy")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from ddkit.training.runfolder import RunFolderLock; "
            f"RunFolderLock({str(folder)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(folder)
        assert main(["train", "--resume", str(folder), "--set", "train.max_steps=3"]) == 2
        err = _error(capsys)
        assert "in use by another trainer" in err and f"pid {holder.pid}" in err
        assert _train(tmp_path, folder, "--overwrite") == 2
        assert f"pid {holder.pid}" in _error(capsys)
        assert _snapshot(folder) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder died: the kernel dropped its lock, so no stale lock blocks the folder
    assert main(["train", "--resume", str(folder), "--set", "train.max_steps=3"]) == 0


def test_the_lock_is_held_while_training_and_released_after(tmp_path, monkeypatch, capsys):
    seen = []
    real = runfolder.RunFolderLock.release

    def release(self):
        if self.fd is not None:  # while held, another process's probe sees the folder busy
            probe = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "from ddkit.training import runfolder; "
                    f"runfolder.check_unlocked({str(self.path.parent)!r})",
                ],
                capture_output=True,
                text=True,
            )
            seen.append("in use by another trainer" in probe.stderr)
        real(self)

    monkeypatch.setattr(runfolder.RunFolderLock, "release", release)
    assert _train(tmp_path, tmp_path / "r") == 0
    assert seen == [True]
    runfolder.check_unlocked(tmp_path / "r")  # released: no error


# ---- another run's files -----------------------------------------------------------------------
def test_a_new_run_in_a_folder_holding_another_refuses_and_changes_nothing(run, tmp_path, capsys):
    folder = _copy(run, tmp_path / "taken")
    before = _snapshot(folder)
    run_id = ckpt.read_metadata(folder)["run_id"]
    assert _train(tmp_path, folder) == 2
    err = _error(capsys)
    assert f"holds run {run_id} at step 2" in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(folder) == before


def test_a_folder_with_only_a_log_counts_as_taken(tmp_path, capsys):
    folder = tmp_path / "log-only"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    assert _train(tmp_path, folder) == 2
    assert "holds the files of a ddkit run without a checkpoint" in _error(capsys)
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.jsonl"]


def test_overwrite_replaces_only_the_old_runs_files(run, tmp_path, capsys):
    folder = _copy(run, tmp_path / "again")
    (folder / "notes.txt").write_text("mine")
    old_id = ckpt.read_metadata(folder)["run_id"]
    assert _train(tmp_path, folder, "--overwrite") == 0
    assert (folder / "notes.txt").read_text() == "mine"
    names = [p.name for p in ckpt.list_checkpoints(folder / "checkpoints")]
    assert names == ["ckpt-00000001.safetensors"]  # the old step-2 checkpoint is gone
    assert ckpt.read_metadata(folder)["run_id"] != old_id
    assert [r["step"] for r in read_metrics(folder / "metrics.jsonl")] == [1]


def test_resuming_into_a_folder_of_another_run_is_refused(run, tmp_path, capsys):
    other = tmp_path / "other"
    assert _train(tmp_path, other) == 0
    before = _snapshot(other)
    argv = ["train", "--resume", str(run), "--set", f'train.out_dir="{other}"']
    assert main([*argv, "--set", "train.max_steps=3"]) == 2
    assert "not the run of the checkpoint" in _error(capsys)
    assert _snapshot(other) == before


# ---- a full disk -------------------------------------------------------------------------------
def test_disk_full_while_checkpointing_exits_1_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, capsys
):
    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up while the step-2 checkpoint is being written
        if ".ckpt-00000002.safetensors." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    folder = tmp_path / "full"
    assert _train(tmp_path, folder, "--set", "train.max_steps=2") == 1
    err = _error(capsys)
    assert "no space left" in err and "ckpt-00000002.safetensors" in err and "MiB free" in err
    names = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert names == ["ckpt-00000001.safetensors"]  # the partial file went, the last one stayed
    tensors, meta = ckpt.load_checkpoint(folder / "checkpoints" / names[0])  # hash checks out
    assert meta["step"] == 1
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(["train", "--resume", str(folder), "--set", "train.max_steps=2"]) == 0


def test_temporaries_of_killed_writes_are_removed_at_the_next_start(run, tmp_path, capsys):
    folder = _copy(run, tmp_path / "killed")
    orphans = [
        folder / "checkpoints" / ".ckpt-00000003.safetensors.k2j4h1x8.tmp",
        folder / ".metrics.jsonl.a8d7c2_q.tmp",
        folder / ".config.json.00ff12ab.tmp",
    ]
    keep = [folder / n for n in (".my-editor.tmp", ".step-notes.tmp", ".config.json.bak.tmp")]
    for p in [*orphans, *keep]:
        p.write_bytes(b"partial")
    assert main(["train", "--resume", str(folder), "--set", "train.max_steps=3"]) == 0
    assert "removed 3 temporary files" in capsys.readouterr().out
    assert not any(p.exists() for p in orphans) and all(p.exists() for p in keep)


# ---- the run log -------------------------------------------------------------------------------
def test_a_torn_last_log_line_is_dropped_with_a_note_and_the_resume_is_marked(
    run, tmp_path, capsys
):
    folder = _copy(run, tmp_path / "torn")
    log = folder / "metrics.jsonl"
    with open(log, "a") as f:
        f.write('{"step": 3, "loss": 0.5, "lr"')  # the write a kill cut short
    assert read_metrics(log)[-1]["step"] == 2
    assert main(["train", "--resume", str(folder), "--set", "train.max_steps=4"]) == 0
    out = capsys.readouterr().out
    assert "torn record" in out and str(log) in out
    records = read_metrics(log)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # the first averages after the resume cover only steps run since then, and say so
    assert records[2]["resumed_from"] == 2 and "resumed_from" not in records[3]
    assert all(line.strip() for line in log.read_text().splitlines())


def test_a_bad_log_line_before_the_end_names_the_file_and_line(run, tmp_path, capsys):
    folder = _copy(run, tmp_path / "bad-log")
    log = folder / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl' line 2 is not a JSON record"):
        read_metrics(log)
    assert main(["train", "--resume", str(folder), "--set", "train.max_steps=3"]) == 2
    assert "line 2" in _error(capsys)


# ---- integrity and non-finite samples ---------------------------------------------------------
def test_a_flipped_bit_in_the_weights_is_refused(run, tmp_path, capsys):
    folder = _copy(run, tmp_path / "flip")
    path = ckpt.latest_checkpoint(folder)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    assert (
        main(["sample", str(path), "--steps", "3", "--num", "4", "--out", str(tmp_path / "o")]) == 2
    )
    assert "integrity hash" in _error(capsys)
    assert not (tmp_path / "o").exists()


def test_weights_that_give_non_finite_samples_exit_1(run, tmp_path, capsys):
    folder = _copy(run, tmp_path / "nan")
    path = ckpt.latest_checkpoint(folder)
    tensors, meta = ckpt.load_checkpoint(path)
    for k in tensors:
        if k.startswith(("model/", "ema/")) and tensors[k].is_floating_point():
            tensors[k] = torch.full_like(tensors[k], 1e30)
    ckpt.save_checkpoint(path, tensors, {k: v for k, v in meta.items() if k != "path"})
    out = tmp_path / "o"
    assert main(["sample", str(path), "--steps", "3", "--num", "4", "--out", str(out)]) == 1
    assert "NaN or infinite" in _error(capsys)
    assert not (out / "samples.npz").exists()


# ---- distributed: tensors only -----------------------------------------------------------------
def _gather_worker(rank: int, init: str, results: str) -> None:
    def refuse(*a, **k):
        raise AssertionError("a pickled-object collective was used")

    dist.all_gather_object = dist.broadcast_object_list = refuse
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    info = D.DistInfo(rank, 2, rank)
    torch.manual_seed(100 + rank)
    gathered = D.all_gather_tensor(torch.arange(rank + 2, dtype=torch.float64) + 10 * rank, info)
    states = state.gather_torch_rng(info)
    torch.save(
        {
            "gathered": gathered,
            "states": [s["torch"] for s in states],
            "mine": torch.get_rng_state(),
        },
        f"{results}-{rank}.pt",
    )
    dist.destroy_process_group()


def test_ranks_exchange_losses_and_rng_states_as_tensors(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_gather_worker, args=(init, str(tmp_path / "r")), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"r-{r}.pt") for r in (0, 1))
    # ranks of different sizes: 2 and 3 values, concatenated in rank order on every rank
    want = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0], dtype=torch.float64)
    assert torch.equal(r0["gathered"], want) and torch.equal(r1["gathered"], want)
    for r in (r0, r1):
        assert torch.equal(r["states"][0], r0["mine"]) and torch.equal(r["states"][1], r1["mine"])
    assert not torch.equal(r0["mine"], r1["mine"])


def test_no_pickled_object_collective_is_left_in_the_package():
    src = Path(__file__).resolve().parents[1] / "src" / "ddkit"
    for path in src.rglob("*.py"):
        text = path.read_text()
        for name in (
            "all_gather_object",
            "broadcast_object_list",
            "gather_object",
            "scatter_object",
        ):
            assert name not in text, f"{path.name} uses {name}"


def test_killed_run_left_lock_file_is_not_a_lock(tmp_path):
    folder = tmp_path / "stale"
    folder.mkdir()
    (folder / runfolder.LOCK_NAME).write_text("pid 1 on elsewhere since 2000-01-01 00:00:00\n")
    runfolder.check_unlocked(folder)  # a lock file nobody holds does not block


def test_overwrite_is_refused_on_a_resume(run, tmp_path, capsys):
    folder = _copy(run, tmp_path / "ow")
    before = _snapshot(folder)
    assert main(["train", "--resume", str(folder), "--overwrite"]) == 2
    assert "--overwrite is for a new run" in _error(capsys)
    assert _snapshot(folder) == before


# ---- links, interrupted claims, unreadable checkpoints, old checkpoints ------------------------
def test_a_run_whose_checkpoints_folder_is_a_link_is_refused(run, tmp_path, capsys):
    victim = _copy(run, tmp_path / "victim")
    before = _snapshot(victim)
    received = _copy(run, tmp_path / "received")
    shutil.rmtree(received / "checkpoints")
    (received / "checkpoints").symlink_to(victim / "checkpoints")
    assert main(["train", "--resume", str(received), "--set", "train.max_steps=3"]) == 2
    assert "is a symbolic link" in _error(capsys)
    assert _snapshot(victim) == before
    assert _train(tmp_path, received, "--overwrite") == 2  # nor deleted through it
    assert _snapshot(victim) == before


def test_a_log_that_is_a_dangling_link_is_refused(tmp_path, capsys):
    folder = tmp_path / "dangling"
    folder.mkdir()
    (folder / "metrics.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    assert _train(tmp_path, folder) == 2
    assert "is a symbolic link" in _error(capsys)
    assert not (tmp_path / "elsewhere.jsonl").exists()


def test_a_resume_killed_before_its_first_checkpoint_can_be_retried(run, tmp_path, capsys):
    new = tmp_path / "new"
    argv = ["train", "--resume", str(run), "--set", f'train.out_dir="{new}"']
    assert main([*argv, "--set", "train.max_steps=4", "--set", "train.ckpt_every=100"]) == 0
    for p in (new / "checkpoints").iterdir():  # as if killed before any checkpoint was saved
        p.unlink()
    assert runfolder.held_run(new)[1] is None  # the folder knows its run by run.json alone
    assert main([*argv, "--set", "train.max_steps=3"]) == 0


def test_an_unreadable_newest_checkpoint_does_not_hide_the_run(run, tmp_path, capsys):
    folder = _copy(run, tmp_path / "torn-ckpt")
    newest = ckpt.latest_checkpoint(folder)
    newest.write_bytes(newest.read_bytes()[:100])  # a torn copy
    previous = folder / "checkpoints" / "ckpt-00000001.safetensors"
    assert runfolder.held_run(folder) == (ckpt.read_metadata(previous)["run_id"], 1)
    assert main(["train", "--resume", str(previous), "--set", "train.max_steps=3"]) == 0


def _as_schema_1(path: Path) -> None:
    """Rewrite a checkpoint as the first schema wrote it: no run ID, no hashes."""
    from safetensors.torch import save

    tensors, meta = ckpt.load_checkpoint(path)
    for k in ("path", "run_id", *ckpt.HASH_KEYS):
        meta.pop(k, None)
    meta["schema_version"] = 1
    path.write_bytes(save(tensors, metadata={"ddkit": json.dumps(meta)}))


def test_schema_1_checkpoints_resume_in_their_folder_but_not_in_another_runs(run, tmp_path, capsys):
    old = _copy(run, tmp_path / "old")
    for p in ckpt.list_checkpoints(old / "checkpoints"):
        _as_schema_1(p)
    (old / runfolder.RUN_RECORD).unlink()
    other = _copy(run, tmp_path / "other")
    before = _snapshot(other)
    argv = ["train", "--resume", str(old), "--set", "train.max_steps=3"]
    assert main([*argv, "--set", f'train.out_dir="{other}"']) == 2
    assert "not the run of the checkpoint" in _error(capsys)
    assert _snapshot(other) == before
    assert main(argv) == 0  # in its own folder
    assert main(["train", "--resume", str(old), "--set", "train.max_steps=4"]) == 0  # and again


def test_optimizer_options_come_from_the_config_not_the_checkpoint(run, tmp_path):
    from ddkit.training.trainer import Trainer

    folder = _copy(run, tmp_path / "flags")
    path = ckpt.latest_checkpoint(folder)
    tensors, meta = ckpt.load_checkpoint(path)
    group = meta["optimizer"]["param_groups"][0]
    group |= {"maximize": True, "capturable": True, "differentiable": True, "lr": 0.5}
    ckpt.save_checkpoint(path, tensors, meta)
    trainer = Trainer.from_checkpoint(folder, train_overrides={"max_steps": 3}, log=print)
    loaded = trainer.optimizer.param_groups[0]
    assert loaded["maximize"] is False and loaded["capturable"] is False
    assert loaded["differentiable"] is False and loaded["lr"] == 0.5
    trainer.fit()
    assert trainer.step == 3


def test_a_resume_gets_the_up_front_checks_of_a_new_run(run, tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("")
    argv = ["train", "--resume", str(run), "--set", f'train.out_dir="{target}"']
    assert main([*argv, "--set", "train.max_steps=3"]) == 2
    assert "train.out_dir" in _error(capsys)


def test_fit_twice_continues_its_own_run(tmp_path):
    from ddkit.config import load_config
    from ddkit.training.trainer import Trainer

    (tmp_path / "run.toml").write_text(MLP_TOML)
    sets = [f'train.out_dir="{tmp_path / "r"}"', "train.max_steps=4", "train.ckpt_every=1"]
    trainer = Trainer(load_config([tmp_path / "run.toml"], sets), log=lambda s: None)
    trainer.fit(until=2)
    trainer.fit()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "r" / "checkpoints")][-1] == (
        "ckpt-00000004.safetensors"
    )


def test_a_log_record_without_an_integer_step_names_its_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": null}\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"line 2: 'step' is None"):
        read_metrics(log)


def test_eval_bpd_defaults_to_an_ode_grid_the_schedule_allows(run, tmp_path, capsys):
    """T = 25 here: the default of 100 Heun intervals becomes T - 1 = 24 instead of an error."""
    out = tmp_path / "e"
    argv = ["eval", str(run), "--bpd", "--bpd-num", "4", "--ode-num", "2", "--probes", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    ode = [r for r in json.loads((out / "eval.json").read_text())["bpd"] if r["method"] == "ode"]
    assert "Heun on 24 " in ode[0]["detail"]


def test_a_folder_with_someone_elses_config_json_is_refused_even_with_overwrite(tmp_path, capsys):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.json").write_text('{"name": "my web app"}')
    for extra in ((), ("--overwrite",)):
        assert _train(tmp_path, folder, *extra) == 2
        assert "not a ddkit run's config.json" in _error(capsys)
    assert (folder / "config.json").read_text() == '{"name": "my web app"}'
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
