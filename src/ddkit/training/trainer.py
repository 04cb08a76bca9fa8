"""The training loop (DDPM Algorithm 1 and its variational-bound / hybrid variants), kept thin:
the loss is :func:`ddkit.diffusion.losses.training_losses`, the model comes from its config; the
EMA (:mod:`.ema`), optimizer and learning-rate schedule (:mod:`.optim`), data order and RNG
streams (:mod:`.state`), run log (:mod:`.runlog`) and preview sampling
(:func:`ddkit.trained.generate`) live elsewhere.  What lives here is the order of operations
per step:

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
import uuid
from functools import partial
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint as ckpt
from .. import viz
from ..config import Config, config_to_dict
from ..diffusion.losses import training_losses
from ..diffusion.timestep_sampling import LossSecondMomentSampler, UniformSampler
from ..paths import atomic_write_bytes
from ..trained import SampleSpec, Trained, generate
from . import distributed as D
from . import runfolder, state
from .device import autocast_dtype, pick_device
from .ema import EMA
from .labels import class_names, drop_labels
from .optim import lr_at, lr_schedule_meta, make_optimizer
from .runlog import RunLog, progress_bar
from .state import EpochBatches
from .validate import check_resume, optimizer_groups, resume_config


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; names the step, the timesteps and the last checkpoint."""


def check_model_fits_data(cfg: Config, shape: tuple[int, ...]) -> None:
    """ValueError unless examples of ``shape`` are what ``cfg``'s model takes."""
    want = cfg.model.input_shape()
    if tuple(shape) != want:
        raise ValueError(
            f"data shape {tuple(shape)} does not fit the model, which expects {want}; set the "
            "model's image_size / in_channels (or dim) or the data's image_size / channels"
        )


class Trainer:
    """Owns the model, its optimizer, EMA and the step counter; see the module docstring."""

    def __init__(
        self, cfg: Config, *, dataset=None, log=print, init: bool = True, overwrite: bool = False
    ):
        """A new run of ``cfg`` (``init=False``: a resume, see :meth:`from_checkpoint`) on
        ``dataset`` (any tensor, array or torch Dataset: :func:`ddkit.data.as_dataset`) or else
        ``cfg.data``.  A new run refuses a folder holding another run unless ``overwrite``."""
        from ..data import as_dataset, load_dataset

        self.cfg, self.log, self.overwrite = cfg, log, overwrite
        self.out = Path(cfg.train.out_dir)
        self.run_id, self.resumed_from, self.claimed = uuid.uuid4().hex, None, False
        self.device = pick_device(cfg.train.device)
        self.dist = D.setup(self.device.type)
        if init and self.dist.is_main:
            runfolder.check_new_run(self.out, overwrite)
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
        self.dataset = as_dataset(dataset) if dataset is not None else load_dataset(cfg.data)
        check_model_fits_data(cfg, self.dataset.shape)
        self.class_names = class_names(cfg.model.num_classes, self.dataset)
        self.schedule = cfg.diffusion.make_schedule()

        torch.manual_seed(tr.seed + self.dist.rank)  # dropout: per-rank global RNG, checkpointed
        self.model = cfg.model.build()
        if tr.init_from and init:
            state.init_weights(self.model, tr.init_from, log=log if self.dist.is_main else None)
        self.model = self.model.to(self.device)
        self.ddp = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        # the network the loss calls: compiled around DDP (so DDP's buckets split the graph)
        self.net = torch.compile(self.ddp) if tr.compile else self.ddp
        if tr.compile and self.device.type == "cpu" and self.dist.is_main:
            log(
                "note: train.compile is meant for GPUs; on CPU it trains ddkit's U-Nets no "
                "faster than eager mode (BENCHMARKS.md)"
            )
        o = cfg.optim
        self.optimizer = make_optimizer(self.model, o)
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
        self.ckpt_dir = self.out / "checkpoints"
        self.last_checkpoint: Path | None = None
        self.amp_dtype = autocast_dtype(tr.precision, self.device)
        self.runlog = RunLog(self.out, T, writes=self.dist.is_main)

    def lr_at(self, step: int) -> float:
        """Linear warm-up from 0 over ``warmup_steps`` optimizer steps; then constant, or a
        cosine or linear decay that reaches ``min_lr`` at ``train.max_steps``."""
        return lr_at(self.cfg.optim, self.cfg.train.max_steps, step)

    # ---- one optimizer step ---------------------------------------------------------------
    def train_step(self) -> dict:
        """One optimizer step on the next global batch; returns {"loss": its mean loss}."""
        cfg, rank, world = self.cfg, self.dist.rank, self.dist.world_size
        B = cfg.train.batch_size
        idx = self.batches.next(B)
        t, w = self.t_sampler.sample(B, self.gen)
        noise = torch.randn((B, *self.dataset.shape), generator=self.gen)
        flips = torch.rand(B, generator=self.gen) < 0.5 if cfg.data.hflip else None
        y = None  # class labels, some dropped to the null label (classifier-free guidance)
        if self.class_names is not None:
            m = cfg.model
            y = drop_labels(self.dataset.labels[idx], m.p_uncond, m.num_classes, self.gen)

        per_rank = B // world
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        x0 = self.dataset.get_batch(idx[mine])
        if flips is not None:
            f = flips[mine]
            x0[f] = x0[f].flip(-1)
        x0, t_r, w_r, n_r = (v.to(self.device) for v in (x0, t[mine], w[mine], noise[mine]))
        y_r = y[mine].to(self.device) if y is not None else None

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
                    net = self.net if y_r is None else partial(self.net, y=y_r[mb])
                    terms = training_losses(
                        net,
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

        all_losses = D.all_gather_tensor(local.cpu().double(), self.dist)
        if isinstance(self.t_sampler, LossSecondMomentSampler):
            self.t_sampler.update(t, all_losses)
        self.runlog.add(float(total), float(gnorm), t, all_losses)
        return {"loss": float(total) / B}

    # ---- the loop -------------------------------------------------------------------------
    def fit(self, until: int | None = None) -> None:
        """Train to ``train.max_steps`` (or stop after step ``until``, as an interruption would:
        no extra checkpoint).  Checkpoints, logs and sample grids at their intervals."""
        tr = self.cfg.train
        end = tr.max_steps if until is None else min(until, tr.max_steps)
        main = self.dist.is_main
        lock = runfolder.RunFolderLock(self.out)
        if main:
            lock.acquire()
        try:
            if main:
                self._claim_folder()
            self._fit(end)
            if self.step == tr.max_steps:
                self.runlog.save_loss_curve()
        finally:
            lock.release()

    def _claim_folder(self) -> None:
        """With the lock held: check the folder again (another process may have started a run
        there since this trainer was built), clear what ``overwrite`` or a killed write left,
        and write the run's ID and config."""
        if self.resumed_from is None and not self.claimed:
            runfolder.check_new_run(self.out, self.overwrite, locked=True)
            if self.overwrite and (gone := runfolder.remove_run_files(self.out)):
                self.log(f"--overwrite: removed {gone} files of the previous run in {self.out}")
        else:  # a resume, or this trainer's own run again (a second fit())
            runfolder.check_resume(self.out, self.run_id, self.step, locked=True)
        if gone := runfolder.remove_orphan_temporaries(self.out):
            self.log(f"removed {gone} temporary files left by an interrupted write in {self.out}")
        runfolder.write_run_record(self.out, self.run_id)
        atomic_write_bytes(
            self.out / "config.json", json.dumps(config_to_dict(self.cfg), indent=2).encode()
        )
        self.claimed = True

    def _fit(self, end: int) -> None:
        tr, main = self.cfg.train, self.dist.is_main
        self.runlog.start(
            self.step, tr.tensorboard, resumed=self.resumed_from is not None, log=self.log
        )
        bar = progress_bar(end, self.step, tr.progress) if main else None
        try:
            while self.step < end:
                out = self.train_step()
                if bar is not None:
                    bar.update(1, loss=f"{out['loss']:.4f}")
                if self.step % tr.log_every == 0 or self.step == tr.max_steps:
                    ema_decay = self.ema.current_decay() if self.ema else None
                    self.runlog.record(self.step, self.lr_at(self.step - 1), ema_decay)
                if tr.sample_every and (
                    self.step % tr.sample_every == 0 or self.step == tr.max_steps
                ):
                    self.save_sample_grids()
                if self.step % tr.ckpt_every == 0 or self.step == tr.max_steps:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            self.runlog.flush()

    # ---- samples ------------------------------------------------------------------------------
    def sample(
        self, model: nn.Module, num: int, seed: int, weights: str = "online"
    ) -> torch.Tensor:
        """``num`` samples from ``model`` with the configured preview sampler, through
        :func:`ddkit.trained.generate`: what ``ddkit sample`` gives for the same sampler,
        steps, spacing and seed (in one batch, under the training precision); x0 is clipped
        for quantized data."""
        tr, T = self.cfg.train, self.schedule.T
        steps = min(tr.sample_steps or T, T)
        quantized = getattr(self.dataset, "quantized", len(self.dataset.shape) == 3)
        spec = SampleSpec(
            tr.sample_sampler,
            steps,
            "trailing" if steps < T else "leading",
            clip_x0="on" if quantized else "off",
        )
        model.eval()
        trained = Trained(model, self.cfg, self.schedule, self.step, str(self.out), weights)
        return generate(
            trained,
            spec,
            num,
            seed=seed,
            batch_size=num,
            device=self.device,
            autocast=self.amp_dtype,
            progress=f"preview grid ({weights} weights)" if tr.progress else None,
        )

    def save_sample_grids(self) -> None:
        """``samples/step-<step>-{ema,online}.png`` in the run folder (main process only)."""
        if not self.dist.is_main or not self.cfg.train.sample_num:
            return
        folder = self.out / "samples"
        ref = self._reference() if len(self.dataset.shape) == 1 else None
        extra = {"reference": ref} if ref is not None else {}
        for name, model in (("ema", self.ema.averaged_model(self.model)), ("online", self.model)):
            x = self.sample(model, self.cfg.train.sample_num, self.cfg.train.seed, name)
            path = folder / f"step-{self.step:08d}-{name}.png"
            C = self.cfg.model.num_classes
            if C and x.ndim == 4:  # generate's default labels: the classes in turn, a row each
                rows, per_row = viz.class_grid(x, torch.arange(len(x)) * C // len(x), C, len(x))
                viz.save_image_grid(rows, path, nrow=per_row)
            else:
                viz.save_samples(x, path, **extra)

    def _reference(self) -> torch.Tensor:
        return self.dataset.get_batch(torch.arange(min(len(self.dataset), 2000)))

    # ---- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Save everything a bit-exact resume needs (all ranks' RNG states gathered) and prune
        old checkpoints; returns the checkpoint's path."""
        states = state.gather_torch_rng(self.dist)
        path = self.ckpt_dir / ckpt.checkpoint_name(self.step)
        if self.dist.is_main:
            tensors = ckpt.state_to_tensors("model", self.model.state_dict())
            tensors |= ckpt.state_to_tensors("ema", self.ema.shadow)
            opt_tensors, opt_meta = ckpt.optimizer_to_checkpoint(self.optimizer)
            tensors |= opt_tensors
            tensors["gen/train"] = self.gen.get_state()
            tensors |= state.rng_tensors(states)
            tensors |= ckpt.state_to_tensors("tsampler", self.t_sampler.state_dict())
            o, max_steps = self.cfg.optim, self.cfg.train.max_steps
            meta = {
                "config": config_to_dict(self.cfg),
                "step": self.step,
                "run_id": self.run_id,
                "world_size": self.dist.world_size,
                "data_position": self.batches.state_dict(),
                "data_shape": list(self.dataset.shape),
                "class_names": self.class_names,
                "optimizer": opt_meta,
                "lr_schedule": lr_schedule_meta(o, max_steps, self.step),
                "ema": self.ema.state_dict(),
                **state.host_rng_meta(),
            }
            ckpt.save_checkpoint(path, tensors, meta)
            ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.train.keep_last)
        D.barrier(self.dist)
        self.last_checkpoint = path
        return path

    def load_state(self, tensors: dict, meta: dict) -> None:
        """Restore everything :meth:`save_checkpoint` wrote (the config must already match),
        once every entry is checked for form (:func:`.validate.check_resume`)."""
        check_resume(meta, tensors, self)
        self.model.load_state_dict(ckpt.tensors_with_prefix(tensors, "model"))
        if self.ema is not None:
            self.ema.load_state_dict(meta["ema"], ckpt.tensors_with_prefix(tensors, "ema"))
        groups = optimizer_groups(meta, self.optimizer)
        optim_meta = {"param_groups": groups, "scalars": {}}
        self.optimizer.load_state_dict(ckpt.optimizer_from_checkpoint(tensors, optim_meta))
        self.gen.set_state(tensors["gen/train"])
        pos = meta["data_position"]
        self.batches = EpochBatches(pos["n"], pos["seed"], pos["epoch"], pos["pos"])
        self.t_sampler.load_state_dict(ckpt.tensors_with_prefix(tensors, "tsampler"))
        r = self.dist.rank
        if meta["world_size"] == self.dist.world_size:
            state.restore_torch_rng(tensors, r)
        else:  # a different number of processes: dropout streams cannot continue exactly
            torch.manual_seed(self.cfg.train.seed + 104_729 * meta["step"] + r)
            self.log(
                f"note: resumed on {self.dist.world_size} processes from a checkpoint of "
                f"{meta['world_size']}; dropout noise is reseeded (not bit-identical)"
            )
        state.restore_host_rng(meta)
        self.step = int(meta["step"])
        self.run_id = ckpt.run_id_of(meta)
        self.resumed_from = (self.run_id, self.step)
        self.last_checkpoint = Path(meta["path"])

    @classmethod
    def from_checkpoint(
        cls, path, *, train_overrides: dict | None = None, dataset=None, log=print, check=None
    ) -> Trainer:
        """Rebuild a trainer from a checkpoint (a file, or a run folder: its newest) and
        restore its state.  ``train_overrides`` may change [train] keys that do not alter the
        computation (max_steps, intervals, out_dir, progress, tensorboard); ``check(cfg)``, if
        given, vets the resulting config before anything is built.  The run writes into
        ``train_overrides["out_dir"]`` if given, else into the run folder the checkpoint lies
        in -- never into the ``out_dir`` recorded inside it (:func:`.validate.resume_config`)."""
        tensors, meta = ckpt.load_checkpoint(path)
        cfg = resume_config(meta, train_overrides or {})
        if check is not None:
            check(cfg)
        runfolder.check_resume(Path(cfg.train.out_dir), ckpt.run_id_of(meta), meta["step"])
        trainer = cls(cfg, dataset=dataset, log=log, init=False)
        trainer.load_state(tensors, meta)
        return trainer
