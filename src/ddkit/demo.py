"""``ddkit demo``: train on bundled data and sample, in a few minutes on two CPU cores.

Two runs, each a normal ``ddkit train`` run (config, checkpoints, metrics, sample grids):

* ``spiral``: the 2-D spiral of Sohl-Dickstein et al. (2015) with the time-conditioned MLP;
* ``digits``: scikit-learn's 8x8 digits with the small U-Net, class-conditional (one row of
  samples per digit).

Each run ends with 1000-step DDPM samples (``samples.png``) and a forward/reverse trajectory
figure (``trajectory.png``, the layout of Sohl-Dickstein et al.'s Fig. 1).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from . import viz
from .config import config_from_dict, config_to_dict
from .diffusion.process import q_sample
from .generation import SampleSpec, check_labels
from .resources import check_output_folder
from .samplers import sample_ddpm
from .trained import load_trained
from .training import runfolder
from .training.trainer import Trainer

DEMOS = {
    "spiral": {
        "model": {"preset": "mlp-2d", "hidden": 128, "depth": 3},
        "data": {"name": "spiral", "num_samples": 20000},
        "optim": {"lr": 1e-3, "warmup_steps": 100, "ema_decay": 0.995, "grad_clip": 1.0},
        "train": {"max_steps": 3000, "batch_size": 256, "sample_every": 1000, "sample_num": 2000},
    },
    "digits": {
        "model": {"preset": "ddpm-8", "num_res_blocks": 1, "dropout": 0.0, "num_classes": 10},
        "data": {"name": "digits"},
        "optim": {
            "lr": 2e-3,
            "warmup_steps": 100,
            "lr_schedule": "cosine",
            "min_lr": 1e-5,
            "ema_decay": 0.995,
            "grad_clip": 1.0,
        },
        "train": {"max_steps": 600, "batch_size": 64, "sample_every": 300, "sample_num": 64},
    },
}


def demo_config(name: str, out: Path, steps_scale: float = 1.0, progress: bool = True):
    """The config of demo ``name`` writing to ``out/<name>``, its steps scaled by
    ``steps_scale``."""
    d = {k: dict(v) for k, v in DEMOS[name].items()}
    tr = d["train"]
    tr["max_steps"] = max(1, math.ceil(tr["max_steps"] * steps_scale))
    tr["sample_every"] = max(1, math.ceil(tr["sample_every"] * steps_scale))
    o = d["optim"]  # the warm-up shrinks with the run, leaving steps for the decay
    o["warmup_steps"] = min(math.ceil(o["warmup_steps"] * steps_scale), tr["max_steps"] - 1)
    tr.update(
        out_dir=str(out / name),
        ckpt_every=tr["max_steps"],
        keep_last=1,
        log_every=max(1, tr["max_steps"] // 50),
        sample_sampler="ddim",
        sample_steps=25,
        progress=progress,
        tensorboard=False,
    )
    return config_from_dict(d)


def trajectory(trained, x0: torch.Tensor, num: int, seed: int = 0):
    """Forward frames q(x_t | x_0) and reverse frames of a DDPM-1000 chain at the same t."""
    schedule = trained.schedule
    T = schedule.T
    marks = [0, T // 4, T // 2, T - 1]
    g = torch.Generator().manual_seed(seed)
    forward = [("t = 0 (data)", x0[:num])]
    for t in marks[1:]:
        tt = torch.full((num,), t, dtype=torch.long)
        forward.append(
            (
                f"t = {t + 1}",
                q_sample(schedule, x0[:num], tt, torch.randn(x0[:num].shape, generator=g)),
            )
        )
    snaps = {}

    def keep(i, t, x, x0_hat):
        if t in marks[1:]:
            snaps[t] = x.clone()

    x_T = torch.randn((num, *trained.data_shape), generator=g)
    labels = check_labels(trained, SampleSpec(), num, None)  # a class-conditional model's classes
    den = trained.denoiser(labels=labels)
    with torch.no_grad():
        x = sample_ddpm(den, x_T, schedule.timesteps(T, "leading"), generator=g, callback=keep)
    reverse = [(f"t = {t + 1}", snaps[t]) for t in reversed(marks[1:])] + [("t = 0 (sample)", x)]
    return forward, reverse, x


MAX_SCALE = 1000.0


def _previous_demo(cfg) -> bool:
    """Whether the run folder of ``cfg`` holds an earlier run of the same demo (same model and
    data), which a new demo run replaces.  ValueError if it holds any other run or is locked;
    False if it holds none."""
    folder = Path(cfg.train.out_dir)
    runfolder.check_entries(folder)
    runfolder.check_unlocked(folder)
    held = runfolder.held_run(folder)
    if held is None:
        return False
    saved = runfolder.read_json(folder / "config.json")
    mine = config_to_dict(cfg)
    if not isinstance(saved, dict) or any(saved.get(k) != mine[k] for k in ("model", "data")):
        raise ValueError(
            f"--out: {runfolder.describe(folder, held)}, which is not a ddkit demo run; "
            "choose another --out"
        )
    return True


def run_demo(out: str | Path, steps_scale: float = 1.0, progress: bool = True, log=None) -> dict:
    """Train both demos and write their pictures; returns {name: wall seconds}.  ValueError,
    with nothing written, when ``steps_scale`` is not a finite number in (0, ``MAX_SCALE``] or
    ``out`` (or a run folder in it) cannot be a folder."""
    scale_ok = isinstance(steps_scale, (int, float)) and not isinstance(steps_scale, bool)
    if not scale_ok or not math.isfinite(steps_scale) or not 0 < steps_scale <= MAX_SCALE:
        raise ValueError(f"--scale {steps_scale!r} must be a finite number in (0, {MAX_SCALE:g}]")
    out = check_output_folder(out, "--out")
    replace = {}
    for name in DEMOS:
        check_output_folder(out / name, "--out")
        replace[name] = _previous_demo(demo_config(name, out, steps_scale, progress))
    if log is None:

        def log(msg):
            print(msg, flush=True)

    times = {}
    for name in DEMOS:
        t0 = time.perf_counter()
        cfg = demo_config(name, out, steps_scale, progress)
        tr = cfg.train
        log(f"[demo] {name}: {tr.max_steps} steps, batch {tr.batch_size} -> {tr.out_dir}")
        replace[name] = _previous_demo(cfg)  # again: the first demo took minutes
        if replace[name]:
            log(f"[demo] {name}: replacing the previous demo run in {tr.out_dir}")
        trainer = Trainer(cfg, log=log, overwrite=replace[name])
        trainer.fit()
        trained = load_trained(trainer.last_checkpoint)
        num = 2000 if name == "spiral" else 40  # digits: 4 of each class
        data = trainer.dataset.get_batch(torch.arange(min(len(trainer.dataset), num)))
        forward, reverse, x = trajectory(trained, data, min(num, len(data)))
        run = Path(cfg.train.out_dir)
        if data.ndim == 2:
            viz.save_samples(x, run / "samples.png", reference=data)
        else:  # one row per class
            labels = check_labels(trained, SampleSpec(), len(x), None)
            rows, per_row = viz.class_grid(x, labels, trained.num_classes, len(x))
            viz.save_image_grid(rows, run / "samples.png", nrow=per_row)
        viz.save_trajectory(forward, reverse, run / "trajectory.png")
        times[name] = time.perf_counter() - t0
        pictures = ", ".join(str(run / f) for f in ("samples.png", "trajectory.png", "loss.png"))
        log(f"[demo] {name}: done in {times[name]:.0f} s; see {pictures}")
    return times
