"""The trainer: exact resume, learning-rate schedules, init_from, logs, sample grids, DDP."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from ddkit import checkpoint as ckpt
from ddkit.config import config_from_dict
from ddkit.training.runlog import read_metrics
from ddkit.training.trainer import NonFiniteLossError, Trainer


class TinyData:
    """An in-memory data set with the ddkit Dataset interface."""

    def __init__(self, x: torch.Tensor, quantized: bool = False):
        self.x, self.shape, self.quantized, self.name = x, tuple(x.shape[1:]), quantized, "tiny"
        self.labels = None

    def __len__(self):
        return len(self.x)

    def get_batch(self, idx):
        return self.x[idx].clone()


def points(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TinyData(torch.rand(n, 2, generator=g) * 2 - 1)


def images(n=12, seed=0, size=8):
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 256, (n, 1, size, size), generator=g)
    return TinyData(k.float() / 127.5 - 1, quantized=True)


def base_config(tmp_path: Path, **train) -> dict:
    return {
        "model": {"preset": "mlp-2d", "hidden": 32, "depth": 2, "time_dim": 16, "dropout": 0.1},
        "data": {"name": "spiral", "num_samples": 50},
        "diffusion": {"T": 100},
        "optim": {"lr": 1e-3, "warmup_steps": 3, "ema_decay": 0.99},
        "train": {
            "max_steps": 10,
            "batch_size": 8,
            "ckpt_every": 5,
            "log_every": 2,
            "sample_every": 0,
            "progress": False,
            "tensorboard": False,
            "out_dir": str(tmp_path),
            **train,
        },
    }


def image_config(tmp_path: Path, **train) -> dict:
    d = base_config(tmp_path, **train)
    d["model"] = {
        "preset": "ddpm-8",
        "base_channels": 32,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [4],
        "dropout": 0.1,
    }
    d["data"] = {"name": "digits", "hflip": True}
    d["diffusion"] = {"T": 50, "loss": "hybrid", "variance": "learned_range"}
    d["model"]["learn_sigma"] = True
    return d


def state_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    out |= {f"ema.{k}": v.clone() for k, v in trainer.ema.shadow.items()}
    for i, st in trainer.optimizer.state_dict()["state"].items():
        out |= {f"opt.{i}.{k}": torch.as_tensor(v).clone() for k, v in st.items()}
    return out


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# ---- the trainer --------------------------------------------------------------------------------
def test_lr_warmup_is_linear(tmp_path):
    tr = Trainer(config_from_dict(base_config(tmp_path)), dataset=points())
    assert [tr.lr_at(s) for s in range(5)] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 1e-3])


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_lr_decay_matches_closed_form_and_reaches_min_lr(tmp_path, kind):
    d = base_config(tmp_path)
    d["optim"] |= {"lr_schedule": kind, "min_lr": 1e-4}
    tr = Trainer(config_from_dict(d), dataset=points(), log=lambda s: None)
    lrs = [tr.lr_at(s) for s in range(10)]
    assert lrs[:2] == pytest.approx([1e-3 / 3, 2e-3 / 3])  # the warm-up is unchanged
    for s in range(2, 10):  # decay from step 2 (the last warm-up step gives the full lr) to 9
        p = (s - 2) / 7
        shape = 0.5 * (1 + math.cos(math.pi * p)) if kind == "cosine" else 1 - p
        assert lrs[s] == pytest.approx(1e-4 + 9e-4 * shape, rel=1e-12)
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    tr.fit()
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # the last step used min_lr
    logged = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl")}
    assert logged[10] == pytest.approx(1e-4) and logged[4] == pytest.approx(lrs[3])


def test_resume_with_cosine_decay_is_bit_identical_and_keeps_max_steps(tmp_path):
    data = points()
    d = base_config(tmp_path / "full")
    d["optim"] |= {"lr_schedule": "cosine", "min_lr": 1e-5}
    full = Trainer(config_from_dict(d), dataset=data, log=lambda s: None)
    full.fit()
    d["train"]["out_dir"] = str(tmp_path / "cut")
    Trainer(config_from_dict(d), dataset=data).fit(until=7)
    with pytest.raises(ValueError, match="max_steps=20 cannot change on resume"):
        Trainer.from_checkpoint(tmp_path / "cut", train_overrides={"max_steps": 20}, dataset=data)
    resumed = Trainer.from_checkpoint(tmp_path / "cut", dataset=data, log=lambda s: None)
    resumed.fit()
    assert_identical(state_of(full), state_of(resumed))
    _, meta = ckpt.load_checkpoint(tmp_path / "cut")
    assert meta["lr_schedule"]["kind"] == "linear_warmup+cosine"
    assert meta["lr_schedule"]["current_lr"] == pytest.approx(1e-5)


def test_init_from_starts_from_the_ema_weights_only(tmp_path):
    first = Trainer(config_from_dict(base_config(tmp_path / "a", max_steps=4)), dataset=points())
    first.fit()
    ema = {k: v.clone() for k, v in first.ema.shadow.items()}
    d = base_config(tmp_path / "b", max_steps=3, init_from=str(tmp_path / "a"))
    second = Trainer(config_from_dict(d), dataset=points(), log=lambda s: None)
    assert second.step == 0 and not second.optimizer.state  # a fresh phase: step, optimizer
    params = dict(second.model.named_parameters())
    for k, v in ema.items():
        assert torch.equal(params[k].detach(), v), k
        assert torch.equal(second.ema.shadow[k], v), k
    assert any(not torch.equal(p, first.model.state_dict()[k]) for k, p in ema.items())
    second.fit()
    # resuming the second phase needs only its own checkpoint, not the init file
    for f in (tmp_path / "a" / "checkpoints").iterdir():
        f.unlink()
    Trainer.from_checkpoint(tmp_path / "b", train_overrides={"max_steps": 5}, dataset=points())


def test_init_from_missing_or_foreign_checkpoint_is_refused(tmp_path):
    d = base_config(tmp_path / "b", init_from=str(tmp_path / "nothing-here"))
    with pytest.raises(ckpt.CheckpointError, match="nothing-here"):
        Trainer(config_from_dict(d), dataset=points())
    Trainer(config_from_dict(base_config(tmp_path / "a", max_steps=1)), dataset=points()).fit()
    d = base_config(tmp_path / "b", init_from=str(tmp_path / "a"))
    d["model"]["hidden"] = 64
    with pytest.raises(ckpt.CheckpointError, match="do not fit this config's model"):
        Trainer(config_from_dict(d), dataset=points())
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("interrupt_at", [3, 5, 7])
def test_resume_is_bit_identical(tmp_path, interrupt_at):
    """Uninterrupted 10 steps == interrupted at ``interrupt_at`` (checkpoints every 5; 3 and 7
    fall between two checkpoints, 3 before the first), resumed from the newest checkpoint."""
    data = points()
    full = Trainer(
        config_from_dict(base_config(tmp_path / "full")), dataset=data, log=lambda s: None
    )
    full.fit()

    run = tmp_path / "cut"
    cfg = config_from_dict(base_config(run, ckpt_every=5 if interrupt_at != 3 else 2))
    first = Trainer(cfg, dataset=data)
    first.fit(until=interrupt_at)
    resumed = Trainer.from_checkpoint(run / "checkpoints", dataset=data, log=lambda s: None)
    assert resumed.step == (interrupt_at // cfg.train.ckpt_every) * cfg.train.ckpt_every
    resumed.fit()
    assert resumed.step == 10
    assert_identical(state_of(full), state_of(resumed))
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 10  # no duplicated log lines


def test_resume_image_hybrid_grad_accum_flips_is_bit_identical(tmp_path):
    """U-Net with learned variance (hybrid loss), dropout, flips, grad accumulation and the
    importance timestep sampler: resume across the checkpoint is still exact."""
    data = images()
    extra = dict(batch_size=4, grad_accum=2, max_steps=4, ckpt_every=2)
    full_cfg = image_config(tmp_path / "a", **extra)
    full_cfg["diffusion"]["timestep_sampler"] = "loss_second_moment"
    full = Trainer(config_from_dict(full_cfg), dataset=data)
    full.fit()
    cut_cfg = image_config(tmp_path / "b", **extra)
    cut_cfg["diffusion"]["timestep_sampler"] = "loss_second_moment"
    Trainer(config_from_dict(cut_cfg), dataset=data).fit(until=3)
    resumed = Trainer.from_checkpoint(tmp_path / "b", dataset=data)
    resumed.fit()
    assert_identical(state_of(full), state_of(resumed))


@pytest.mark.slow
def test_bf16_autocast_on_cpu_trains_and_resumes_bit_identically(tmp_path):
    """train.precision = "bf16" on CPU (fast where oneDNN has AMX / AVX512-BF16): convolutions run
    in bf16, while weights, gradients, EMA and Adam state stay fp32; a 16x16 U-Net (channels_last
    at its first level on AVX-512 CPUs) resumed across a checkpoint still ends bit-identical."""
    data = images(size=16)
    extra = dict(batch_size=4, max_steps=4, ckpt_every=2, precision="bf16")
    full_cfg = image_config(tmp_path / "a", **extra)
    full_cfg["model"] |= {"image_size": 16, "attention_resolutions": [8]}
    full = Trainer(config_from_dict(full_cfg), dataset=data)
    assert full.amp_dtype == torch.bfloat16
    conv_dtypes = set()
    full.model.conv_in.register_forward_hook(lambda m, a, out: conv_dtypes.add(out.dtype))
    full.fit()
    assert conv_dtypes == {torch.bfloat16}
    state = state_of(full)
    assert all(v.dtype in (torch.float32, torch.int64) or v.ndim == 0 for v in state.values())
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "a" / "metrics.jsonl"))

    cut_cfg = image_config(tmp_path / "b", **extra)
    cut_cfg["model"] |= {"image_size": 16, "attention_resolutions": [8]}
    Trainer(config_from_dict(cut_cfg), dataset=data).fit(until=3)
    resumed = Trainer.from_checkpoint(tmp_path / "b", dataset=data)
    resumed.fit()
    assert_identical(state, state_of(resumed))


@pytest.mark.slow
@pytest.mark.skipif(
    not any(map(shutil.which, ("cc", "gcc", "g++", "clang"))),
    reason="torch.compile on CPU needs a C++ compiler (apt-get install g++)",
)
@pytest.mark.slow
def test_compile_trains_the_same_function_and_saves_plain_weights(tmp_path):
    """train.compile = true: the loss goes through torch.compile(model), with no graph break in
    the U-Net (its CPU-specific Winograd / channels_last / dropout-mask paths step aside while
    compiling); loss and gradients equal the eager model's, and checkpoints hold the plain
    module's keys, so an eager run resumes from them."""
    from torch._dynamo.utils import counters

    from ddkit.diffusion.losses import training_losses

    cfg = image_config(tmp_path / "c", batch_size=4, max_steps=2, ckpt_every=2, compile=True)
    cfg["model"]["dropout"] = 0.0
    tr = Trainer(config_from_dict(cfg), dataset=images())
    assert tr.net is not tr.model
    counters.clear()
    x0 = images(n=4, seed=1).x
    t, noise = torch.tensor([0, 7, 23, 49]), torch.randn_like(x0)
    kw = dict(prediction="eps", loss_type="hybrid", variance="learned_range", noise=noise)
    grads = []
    for net in (tr.net, tr.model):
        tr.model.zero_grad(set_to_none=True)
        loss = training_losses(net, tr.schedule, x0, t, **kw)["loss"]
        loss.mean().backward()
        grads.append(
            [(loss.detach(), None)] + [(p.grad.clone(), n) for n, p in tr.model.named_parameters()]
        )
    assert not counters["graph_break"], dict(counters["graph_break"])
    for (a, name), (b, _) in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    tr.fit()
    resumed = Trainer.from_checkpoint(tmp_path / "c", dataset=images())
    assert resumed.cfg.train.compile and resumed.net is not resumed.model
    assert_identical(
        {k: v for k, v in state_of(tr).items() if k.startswith("model.")},
        {k: v for k, v in state_of(resumed).items() if k.startswith("model.")},
    )


def test_metrics_have_loss_by_timestep_bucket(tmp_path):
    Trainer(config_from_dict(base_config(tmp_path)), dataset=points()).fit()
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [2, 4, 6, 8, 10]
    for r in recs:
        assert math.isfinite(r["loss"]) and r["loss_by_t"]
        lo_hi = [tuple(map(int, k.split("-"))) for k in r["loss_by_t"]]
        assert all(0 <= lo <= hi < 100 for lo, hi in lo_hi)
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_non_finite_loss_names_step_timesteps_and_checkpoint(tmp_path):
    tr = Trainer(config_from_dict(base_config(tmp_path, ckpt_every=2)), dataset=points())
    tr.fit(until=2)
    with torch.no_grad():
        next(tr.model.parameters()).fill_(math.nan)
    with pytest.raises(NonFiniteLossError) as err:
        tr.train_step()
    msg = str(err.value)
    assert "step 3" in msg and "timesteps in the batch: [" in msg
    assert ckpt.checkpoint_name(2) in msg


def test_data_shape_must_fit_model(tmp_path):
    with pytest.raises(ValueError, match=r"data shape \(1, 8, 8\) does not fit"):
        Trainer(config_from_dict(base_config(tmp_path)), dataset=images())


def test_resume_rejects_changes_that_alter_the_run(tmp_path):
    Trainer(config_from_dict(base_config(tmp_path, max_steps=2)), dataset=points()).fit()
    with pytest.raises(ValueError, match="train.batch_size cannot change"):
        Trainer.from_checkpoint(tmp_path, train_overrides={"batch_size": 4}, dataset=points())
    longer = Trainer.from_checkpoint(tmp_path, train_overrides={"max_steps": 4}, dataset=points())
    longer.fit()
    assert longer.step == 4


def test_checkpoint_from_another_architecture_is_refused(tmp_path):
    Trainer(config_from_dict(base_config(tmp_path, max_steps=1)), dataset=points()).fit()
    path = ckpt.latest_checkpoint(tmp_path)
    tensors, meta = ckpt.load_checkpoint(path)
    meta["config"]["model"]["hidden"] = 64  # weights of a 32-wide model under a 64-wide config
    del meta["path"]
    ckpt.save_checkpoint(path, tensors, {k: v for k, v in meta.items() if k != "schema_version"})
    wrong = r"entry 'model/in_proj.weight' is float32 \[32, 2\]; expected float32 \[64, 2\]"
    with pytest.raises(ckpt.CheckpointError, match=wrong):
        Trainer.from_checkpoint(path, dataset=points())
    from ddkit.trained import load_trained

    with pytest.raises(ckpt.CheckpointError, match=wrong):
        load_trained(path)


def test_sample_grids_written_for_ema_and_online(tmp_path):
    cfg = config_from_dict(
        base_config(tmp_path, max_steps=2, sample_every=2, sample_num=16, sample_steps=5)
    )
    Trainer(cfg, dataset=points()).fit()
    names = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert names == ["step-00000002-ema.png", "step-00000002-online.png"]


# ---- torchrun / DDP -----------------------------------------------------------------------------
def _write_toml(path: Path, d: dict) -> Path:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = []
    for section, table in d.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    """torchrun --nproc_per_node=2 (gloo) computes the same steps as one process: timesteps,
    noise and data order are drawn for the global batch on every rank; DDP averages gradients."""
    import subprocess
    import sys

    def run(nproc: int, out: Path):
        d = base_config(out, max_steps=4, ckpt_every=4, batch_size=8)
        d["model"]["dropout"] = 0.0  # dropout streams are per rank by design
        cfg = _write_toml(tmp_path / f"cfg{nproc}.toml", d)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc_per_node={nproc}", "-m", "ddkit.cli", "train", str(cfg)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return ckpt.load_checkpoint(out / "checkpoints")

    one, meta1 = run(1, tmp_path / "one")
    two, meta2 = run(2, tmp_path / "two")
    assert meta1["world_size"] == 1 and meta2["world_size"] == 2
    for k, v in one.items():
        if k.startswith(("model/", "ema/")):
            torch.testing.assert_close(two[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_tensorboard_events_written_when_installed(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard (part of .[test] / .[data])")
    cfg = config_from_dict(base_config(tmp_path, max_steps=2, tensorboard=True))
    Trainer(cfg, dataset=points()).fit()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_progress_shows_steps_rate_and_eta(tmp_path, capsys, monkeypatch):
    """Not on a terminal (as under pytest, in CI or a log file): plain lines, here one per step
    (the interval set to 0 s), with the loss."""
    from functools import partial

    from ddkit.training import runlog

    monkeypatch.setattr(runlog, "Progress", partial(runlog.Progress, every=0.0))
    cfg = config_from_dict(base_config(tmp_path, max_steps=3, progress=True))
    Trainer(cfg, dataset=points()).fit()
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("train: ")]
    assert [x.split()[1] for x in lines[:3]] == ["1/3", "2/3", "3/3"]
    assert all("elapsed, ETA" in x and ", loss " in x for x in lines[:3])


def test_preview_samples_are_those_of_generate(tmp_path):
    """The preview grids go through ``ddkit.trained.generate``: the same samples as sampling the
    step's checkpoint with the same sampler, steps and seed (a stochastic sampler here)."""
    from ddkit.trained import SampleSpec, generate, load_trained

    d = base_config(tmp_path, max_steps=2, sample_steps=5, sample_sampler="ddpm")
    tr = Trainer(config_from_dict(d), dataset=points())
    tr.fit()
    spec = SampleSpec("ddpm", 5, "trailing", clip_x0="off")  # points are not quantized
    for weights, model in (("ema", tr.ema.averaged_model(tr.model)), ("online", tr.model)):
        got = tr.sample(model, 16, seed=3, weights=weights)
        want = generate(load_trained(tmp_path, weights), spec, 16, seed=3, batch_size=16)
        assert torch.equal(got, want), weights
    ema = load_trained(tmp_path)
    bf16 = generate(ema, spec, 16, seed=3, autocast=torch.bfloat16)
    assert torch.isfinite(bf16).all() and not torch.equal(bf16, generate(ema, spec, 16, seed=3))
