"""The training loop (DDPM Algorithm 1 and its variational-bound / hybrid variants), kept thin:
the loss is :func:`ddkit.losses.training_losses`, the model comes from its config, EMA and
checkpoints are their own modules.  What lives here is the order of operations per step:

    indices -> x0 (+ flips) -> t, weights, noise -> per-example loss -> backward (accumulated,
    DDP-averaged) -> clip -> optimizer step at the warm-up learning rate -> EMA -> logs

All randomness is drawn from seeded generators whose states are checkpointed (data order,
timesteps, noise, flips) plus torch's global RNG for dropout, so that a resumed run continues
bit for bit (on CPU).  Timesteps, noise and flips are drawn for the *global* batch on every rank
and each rank takes its slice, so that N processes compute the same step as one process with the
same global batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import checkpoint as ckpt
from .. import viz
from ..config import Config, config_from_dict, config_to_dict
from ..diffusion.losses import training_losses
from ..diffusion.timestep_sampling import LossSecondMomentSampler, UniformSampler
from ..samplers import get_sampler
from ..trained import make_denoiser
from . import distributed as D
from .ema import EMA

N_BUCKETS = 10  # loss-by-timestep buckets in the logs


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; names the step, the timesteps and the last checkpoint."""


class EpochBatches:
    """Indices of successive batches over a data set of size n: each epoch is a permutation drawn
    from (seed, epoch), so the position (epoch, pos) is the whole state."""

    def __init__(self, n: int, seed: int, epoch: int = 0, pos: int = 0):
        if n < 1:
            raise ValueError("the data set is empty")
        self.n, self.seed, self.epoch, self.pos = n, seed, epoch, pos
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def next(self, size: int) -> torch.Tensor:
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
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos, "n": self.n}


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA device is available; allowed: auto, cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def check_model_fits_data(cfg: Config, shape: tuple[int, ...]) -> None:
    want = cfg.model.input_shape()
    if tuple(shape) != want:
        raise ValueError(
            f"data shape {tuple(shape)} does not fit the model, which expects {want}; set the "
            "model's image_size / in_channels (or dim) or the data's image_size / channels"
        )


class Trainer:
    """Owns the model, its optimizer, EMA and the step counter; see the module docstring."""

    def __init__(self, cfg: Config, *, dataset=None, log=print, init: bool = True):
        from ..data import load_dataset

        self.cfg, self.log = cfg, log
        self.device = pick_device(cfg.train.device)
        self.dist = D.setup(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        tr = cfg.train
        per_rank = tr.batch_size // self.dist.world_size
        if tr.batch_size % (self.dist.world_size * tr.grad_accum):
            raise ValueError(
                f"train.batch_size={tr.batch_size} must be divisible by world size "
                f"{self.dist.world_size} x train.grad_accum={tr.grad_accum}"
            )
        self.micro = per_rank // tr.grad_accum
        self.dataset = dataset if dataset is not None else load_dataset(cfg.data)
        check_model_fits_data(cfg, self.dataset.shape)
        self.schedule = cfg.diffusion.make_schedule()

        torch.manual_seed(tr.seed + self.dist.rank)  # dropout: per-rank global RNG, checkpointed
        self.model = cfg.model.build()
        if tr.init_from and init:
            init_weights(self.model, tr.init_from, log=log if self.dist.is_main else None)
        self.model = self.model.to(self.device)
        self.ddp = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        # the network the loss calls: compiled around DDP (so DDP's buckets split the graph)
        self.net = torch.compile(self.ddp) if tr.compile else self.ddp
        if tr.compile and self.device.type == "cpu" and self.dist.is_main:
            log(
                "note: on a 2-core CPU, train.compile trained ddkit's U-Nets no faster than eager "
                "mode (0.73x to 1.0x, BENCHMARKS.md); it is meant for GPUs"
            )
        o = cfg.optim
        opt_cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
        kw = dict(lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        try:  # one fused kernel for all parameters (CPU and CUDA, torch >= 2.4)
            self.optimizer = opt_cls(self.model.parameters(), fused=True, **kw)
        except (RuntimeError, TypeError):
            self.optimizer = opt_cls(self.model.parameters(), **kw)
        self.ema = EMA(self.model, o.ema_decay, warmup=o.ema_warmup) if self.dist.is_main else None
        self.batches = EpochBatches(len(self.dataset), tr.seed)
        self.gen = torch.Generator().manual_seed(tr.seed + 7_919)  # t, noise, flips
        T = self.schedule.T
        self.t_sampler = (
            LossSecondMomentSampler(T)
            if cfg.diffusion.timestep_sampler == "loss_second_moment"
            else UniformSampler(T)
        )
        self.step = 0
        self.out = Path(tr.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.last_checkpoint: Path | None = None
        self.amp_dtype = self._amp_dtype()
        self._reset_log_window()
        self._tb = None

    # ---- set-up helpers -------------------------------------------------------------------
    def _amp_dtype(self):
        p = self.cfg.train.precision
        if p == "bf16" or (
            p == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        ):
            return torch.bfloat16
        return None

    def _reset_log_window(self):
        self._win = {
            "loss": 0.0,
            "n": 0,
            "grad_norm": 0.0,
            "steps": 0,
            "t0": time.perf_counter(),
            "bucket_sum": torch.zeros(N_BUCKETS, dtype=torch.float64),
            "bucket_n": torch.zeros(N_BUCKETS, dtype=torch.float64),
        }

    def lr_at(self, step: int) -> float:
        """Linear warm-up from 0 over ``warmup_steps`` optimizer steps; then constant, or a
        cosine or linear decay that reaches ``min_lr`` at ``train.max_steps``."""
        return lr_at(self.cfg.optim, self.cfg.train.max_steps, step)

    # ---- one optimizer step ---------------------------------------------------------------
    def train_step(self) -> dict:
        cfg, rank, world = self.cfg, self.dist.rank, self.dist.world_size
        B = cfg.train.batch_size
        idx = self.batches.next(B)
        t, w = self.t_sampler.sample(B, self.gen)
        noise = torch.randn((B, *self.dataset.shape), generator=self.gen)
        flips = torch.rand(B, generator=self.gen) < 0.5 if cfg.data.hflip else None

        per_rank = B // world
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        x0 = self.dataset.get_batch(idx[mine])
        if flips is not None:
            f = flips[mine]
            x0[f] = x0[f].flip(-1)
        x0, t_r, w_r, n_r = (v.to(self.device) for v in (x0, t[mine], w[mine], noise[mine]))

        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(self.step)
        self.model.train()
        losses = []
        for k in range(cfg.train.grad_accum):
            mb = slice(k * self.micro, (k + 1) * self.micro)
            last = k == cfg.train.grad_accum - 1
            # DDP: no gradient all-reduce until the last micro-batch (forward and backward)
            sync = self.ddp.no_sync if (self.dist.enabled and not last) else contextlib.nullcontext
            with sync():
                with torch.autocast(
                    self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
                ):
                    terms = training_losses(
                        self.net,
                        self.schedule,
                        x0[mb],
                        t_r[mb],
                        prediction=cfg.diffusion.prediction,
                        loss_type=cfg.diffusion.loss,
                        variance=cfg.diffusion.variance,
                        noise=n_r[mb],
                    )
                    per_example = terms["loss"].float()
                    loss = (w_r[mb] * per_example).mean() / cfg.train.grad_accum
                loss.backward()
            losses.append(per_example.detach())
        local = torch.cat(losses)
        total = D.all_reduce_sum(local.sum().double().reshape(1), self.dist)
        if not math.isfinite(float(total)):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step + 1}; timesteps in the batch: "
                f"{t.tolist()}; last good checkpoint: {self.last_checkpoint or 'none'}"
            )
        clip = cfg.optim.grad_clip
        gnorm = nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1

        all_losses = local.cpu().double()
        if world > 1 or isinstance(self.t_sampler, LossSecondMomentSampler):
            all_losses = torch.cat(
                [torch.as_tensor(v) for v in D.all_gather_objects(all_losses, self.dist)]
            )
        if isinstance(self.t_sampler, LossSecondMomentSampler):
            self.t_sampler.update(t, all_losses)
        win = self._win
        win["loss"] += float(total)
        win["n"] += B
        win["grad_norm"] += float(gnorm)
        win["steps"] += 1
        bucket = (t * N_BUCKETS) // self.schedule.T
        win["bucket_sum"].index_add_(0, bucket, all_losses)
        win["bucket_n"].index_add_(0, bucket, torch.ones_like(all_losses))
        return {"loss": float(total) / B}

    # ---- the loop -------------------------------------------------------------------------
    def fit(self, until: int | None = None) -> None:
        """Train to ``train.max_steps`` (or stop after step ``until``, as an interruption would:
        no extra checkpoint).  Checkpoints, logs and sample grids at their intervals."""
        tr = self.cfg.train
        end = tr.max_steps if until is None else min(until, tr.max_steps)
        main = self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_bytes(
                self.out / "config.json", json.dumps(config_to_dict(self.cfg), indent=2).encode()
            )
            self._truncate_metrics()
            self._open_tensorboard()
        bar = self._progress(end) if main else None
        try:
            while self.step < end:
                out = self.train_step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{out['loss']:.4f}", refresh=False)
                if self.step % tr.log_every == 0 or self.step == tr.max_steps:
                    self._write_log()
                if tr.sample_every and (
                    self.step % tr.sample_every == 0 or self.step == tr.max_steps
                ):
                    self.save_sample_grids()
                if self.step % tr.ckpt_every == 0 or self.step == tr.max_steps:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            if self._tb is not None:
                self._tb.flush()
        if main and self.step == tr.max_steps:
            records = read_metrics(self.out / "metrics.jsonl")
            if records:
                viz.save_loss_curve(records, self.out / "loss.png")

    def _progress(self, end: int):
        if not self.cfg.train.progress:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True)

    def _open_tensorboard(self):
        if not self.cfg.train.tensorboard or self._tb is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: JSONL only
            return
        self._tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step + 1)

    # ---- logs -------------------------------------------------------------------------------
    def _truncate_metrics(self):
        """On resume, drop records past the checkpoint's step (an interrupted run wrote them)."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        keep = [r for r in read_metrics(path) if r.get("step", 0) <= self.step]
        ckpt.atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode())

    def _write_log(self):
        win = self._win
        bn = win["bucket_n"]  # from the gathered (global) losses: already summed over ranks
        T = self.schedule.T
        buckets = {}
        for b in range(N_BUCKETS):
            if bn[b] > 0:
                lo, hi = b * T // N_BUCKETS, (b + 1) * T // N_BUCKETS - 1
                buckets[f"{lo}-{hi}"] = float(win["bucket_sum"][b] / bn[b])
        dt = time.perf_counter() - win["t0"]
        rec = {
            "step": self.step,
            "loss": win["loss"] / max(win["n"], 1),
            "lr": self.lr_at(self.step - 1),
            "grad_norm": win["grad_norm"] / max(win["steps"], 1),
            "ema_decay": self.ema.current_decay() if self.ema else None,
            "steps_per_s": win["steps"] / dt if dt > 0 else None,
            "images_per_s": win["n"] / dt if dt > 0 else None,
            "loss_by_t": buckets,
        }
        if self.dist.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            if self._tb is not None:
                for k in ("loss", "lr", "grad_norm", "images_per_s"):
                    if rec[k] is not None:
                        self._tb.add_scalar(f"train/{k}", rec[k], self.step)
                for k, v in buckets.items():
                    self._tb.add_scalar(f"loss_by_t/{k}", v, self.step)
        self._reset_log_window()

    # ---- samples ------------------------------------------------------------------------------
    def sample(self, model: nn.Module, num: int, seed: int) -> torch.Tensor:
        """``num`` samples from ``model`` with the configured preview sampler, from a fixed seed."""
        tr = self.cfg.train
        g = torch.Generator().manual_seed(seed)
        x_T = torch.randn((num, *self.dataset.shape), generator=g).to(self.device)
        steps = min(tr.sample_steps or self.schedule.T, self.schedule.T)
        ts = self.schedule.timesteps(steps, "trailing" if steps < self.schedule.T else "leading")
        den = make_denoiser(model, self.cfg, self.schedule, self.dataset)
        model.eval()
        with (
            torch.no_grad(),
            torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
            ),
        ):
            x = get_sampler(tr.sample_sampler)(den, x_T, ts, generator=g)
        return x.float().cpu()

    def save_sample_grids(self):
        if not self.dist.is_main or not self.cfg.train.sample_num:
            return
        folder = self.out / "samples"
        ref = self._reference() if len(self.dataset.shape) == 1 else None
        extra = {"reference": ref} if ref is not None else {}
        for name, model in (("ema", self.ema.averaged_model(self.model)), ("online", self.model)):
            x = self.sample(model, self.cfg.train.sample_num, seed=self.cfg.train.seed)
            viz.save_samples(x, folder / f"step-{self.step:08d}-{name}.png", **extra)

    def _reference(self) -> torch.Tensor:
        n = min(len(self.dataset), 2000)
        return self.dataset.get_batch(torch.arange(n))

    # ---- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        rng = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        states = D.all_gather_objects(rng, self.dist)
        path = self.ckpt_dir / ckpt.checkpoint_name(self.step)
        if self.dist.is_main:
            tensors = ckpt.state_to_tensors("model", self.model.state_dict())
            tensors |= ckpt.state_to_tensors("ema", self.ema.shadow)
            opt_tensors, opt_meta = ckpt.optimizer_to_checkpoint(self.optimizer)
            tensors |= opt_tensors
            tensors["gen/train"] = self.gen.get_state()
            for r, st in enumerate(states):
                tensors[f"rng/torch/{r}"] = st["torch"]
                for d, s in enumerate(st["cuda"]):
                    tensors[f"rng/cuda/{r}/{d}"] = s
            if isinstance(self.t_sampler, LossSecondMomentSampler):
                tensors["tsampler/losses"] = self.t_sampler._losses
                tensors["tsampler/count"] = self.t_sampler._count
            np_state = np.random.get_state()  # noqa: NPY002 (legacy global state, saved as issued)
            meta = {
                "config": config_to_dict(self.cfg),
                "step": self.step,
                "world_size": self.dist.world_size,
                "data_position": self.batches.state_dict(),
                "data_shape": list(self.dataset.shape),
                "optimizer": opt_meta,
                "lr_schedule": {
                    "kind": f"linear_warmup+{self.cfg.optim.lr_schedule}",
                    "lr": self.cfg.optim.lr,
                    "min_lr": self.cfg.optim.min_lr,
                    "warmup_steps": self.cfg.optim.warmup_steps,
                    "decay_end": self.cfg.train.max_steps,
                    "current_lr": self.lr_at(self.step - 1),
                },
                "ema": self.ema.state_dict(),
                "rng_python": _jsonable(random.getstate()),
                "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            }
            ckpt.save_checkpoint(path, tensors, meta)
            ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.train.keep_last)
        D.barrier(self.dist)
        self.last_checkpoint = path
        return path

    def load_state(self, tensors: dict, meta: dict) -> None:
        """Restore everything :meth:`save_checkpoint` wrote (the config must already match)."""
        try:
            self.model.load_state_dict(ckpt.tensors_with_prefix(tensors, "model"))
        except RuntimeError:
            raise ckpt.CheckpointError(
                f"{meta['path']!r}: its weights do not fit the architecture in its config"
            ) from None
        if self.ema is not None:
            self.ema.load_state_dict(meta["ema"], ckpt.tensors_with_prefix(tensors, "ema"))
        self.optimizer.load_state_dict(ckpt.optimizer_from_checkpoint(tensors, meta["optimizer"]))
        self.gen.set_state(tensors["gen/train"])
        pos = meta["data_position"]
        if pos["n"] != len(self.dataset):
            raise ckpt.CheckpointError(
                f"the checkpoint was trained on {pos['n']} examples, the data set has "
                f"{len(self.dataset)}"
            )
        self.batches = EpochBatches(pos["n"], pos["seed"], pos["epoch"], pos["pos"])
        if isinstance(self.t_sampler, LossSecondMomentSampler):
            self.t_sampler._losses.copy_(tensors["tsampler/losses"])
            self.t_sampler._count.copy_(tensors["tsampler/count"])
        r = self.dist.rank
        if meta["world_size"] == self.dist.world_size:
            torch.set_rng_state(tensors[f"rng/torch/{r}"])
            cuda = [v for k, v in sorted(tensors.items()) if k.startswith(f"rng/cuda/{r}/")]
            if cuda and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(cuda)
        else:  # a different number of processes: dropout streams cannot continue exactly
            torch.manual_seed(self.cfg.train.seed + 104_729 * meta["step"] + r)
            self.log(
                f"note: resumed on {self.dist.world_size} processes from a checkpoint of "
                f"{meta['world_size']}; dropout noise is reseeded (not bit-identical)"
            )
        random.setstate(_tuplify(meta["rng_python"]))
        s = meta["rng_numpy"]
        np.random.set_state((s[0], np.asarray(s[1], dtype=np.uint32), *s[2:]))  # noqa: NPY002
        self.step = int(meta["step"])
        self.last_checkpoint = Path(meta["path"])

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, train_overrides: dict | None = None, dataset=None, log=print
    ) -> Trainer:
        """Rebuild a trainer from a checkpoint (a file, or a run folder: its newest) and
        restore its state.  ``train_overrides`` may change [train] keys that do not alter the
        computation (max_steps, intervals, out_dir, progress, tensorboard)."""
        tensors, meta = ckpt.load_checkpoint(path)
        d = meta["config"]
        allowed = set(RESUMABLE_TRAIN_KEYS)
        bad = sorted(set(train_overrides or {}) - allowed)
        if bad:
            raise ValueError(
                f"train.{bad[0]} cannot change on resume; allowed: {', '.join(sorted(allowed))}"
            )
        cfg = config_from_dict(d)
        if train_overrides:
            new_max = train_overrides.get("max_steps", cfg.train.max_steps)
            if cfg.optim.lr_schedule != "constant" and new_max != cfg.train.max_steps:
                raise ValueError(
                    f"train.max_steps={new_max} cannot change on resume with "
                    f"optim.lr_schedule={cfg.optim.lr_schedule!r}: the decay is laid out over "
                    f"max_steps={cfg.train.max_steps}"
                )
            cfg = replace(cfg, train=replace(cfg.train, **train_overrides))
        trainer = cls(cfg, dataset=dataset, log=log, init=False)
        trainer.load_state(tensors, meta)
        return trainer


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


def lr_at(o, max_steps: int, step: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) under :class:`OptimConfig` ``o``."""
    w = o.warmup_steps
    if step < w:
        return o.lr * (step + 1) / w
    if o.lr_schedule == "constant":
        return o.lr
    p = min(1.0, (step - w + 1) / (max_steps - w))  # reaches 1 at the last step
    shape = 0.5 * (1.0 + math.cos(math.pi * p)) if o.lr_schedule == "cosine" else 1.0 - p
    return o.min_lr + (o.lr - o.min_lr) * shape


def init_weights(model: nn.Module, path: str | Path, log=None) -> None:
    """Start ``model`` from the EMA weights of a checkpoint (a file or a run folder: its
    newest) of the same architecture -- fine-tuning, or a new training phase with other
    optimizer settings.  Only the weights are taken: step, optimizer and RNG start fresh."""
    tensors, meta = ckpt.load_checkpoint(path)
    state = {
        **ckpt.tensors_with_prefix(tensors, "model"),
        **ckpt.tensors_with_prefix(tensors, "ema"),
    }
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise ckpt.CheckpointError(
            f"train.init_from={str(path)!r}: its weights do not fit this config's model "
            "(another architecture)"
        ) from None
    if log is not None:
        log(f"model initialised from the EMA weights of {meta['path']} (step {meta['step']})")


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _jsonable(obj):
    if isinstance(obj, tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _tuplify(obj):
    if isinstance(obj, list):
        return tuple(_tuplify(v) for v in obj)
    return obj
