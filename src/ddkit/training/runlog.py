"""The run log of a training run: ``metrics.jsonl`` in the run folder, one JSON record per log
interval, optionally mirrored to TensorBoard, plus the console progress bar and the final loss
curve.

A record holds the step, the mean per-example loss over the interval, the learning rate of the
last step, the mean gradient norm, the EMA decay, the throughput and ``loss_by_t``: the mean loss
in each of :data:`N_BUCKETS` equal ranges of timesteps (``"lo-hi"``, both ends included).  The
first record after a resume carries ``"resumed_from": <step>``: its averages (loss, gradient norm,
throughput) cover only the steps run since then.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .. import viz
from ..paths import append_bytes, atomic_write_bytes
from ..progress import Progress

N_BUCKETS = 10  # loss-by-timestep buckets in the logs
TENSORBOARD_SCALARS = ("loss", "lr", "grad_norm", "images_per_s")


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (none if it does not exist).  A last line that
    is not a whole record (a write cut short by a kill or a full disk) is skipped; any other
    bad line is a ValueError naming the file and the line."""
    return _read_records(Path(path))[0]


def _read_records(path: Path) -> tuple[list[dict], bool]:
    """(records, whether a torn last line was skipped)."""
    if not path.exists():
        return [], False
    lines = path.read_bytes().split(b"\n")
    records, torn = [], False
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as e:
            if all(not rest.strip() for rest in lines[i:]):  # the last line: torn
                torn = True
                break
            raise ValueError(f"{str(path)!r} line {i} is not a JSON record ({e})") from None
        step = rec.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"{str(path)!r} line {i}: 'step' is {step!r}, not an integer")
        records.append(rec)
    return records, torn


class RunLog:
    """Sums the losses of the steps since the last record and writes the records of a run folder.

    Every rank sums (the losses given to :meth:`add` are already gathered over ranks); only the
    rank with ``writes=True`` touches files.
    """

    def __init__(self, folder: str | Path, T: int, *, writes: bool = True):
        self.folder, self.T, self.writes = Path(folder), T, writes
        self.path = self.folder / "metrics.jsonl"
        self.tensorboard = None
        self.resumed_from = None
        self.reset()

    def reset(self) -> None:
        """Start a new interval: sums to zero, the clock from now."""
        self.loss_sum, self.examples, self.grad_norm_sum, self.steps = 0.0, 0, 0.0, 0
        self.bucket_sum = torch.zeros(N_BUCKETS, dtype=torch.float64)
        self.bucket_n = torch.zeros(N_BUCKETS, dtype=torch.float64)
        self.t0 = time.perf_counter()

    def add(self, loss_sum: float, grad_norm: float, t: torch.Tensor, losses: torch.Tensor):
        """One optimizer step: the summed loss of its (global) batch, the gradient norm, and the
        per-example timesteps ``t`` [B] and losses [B] (float64) for the buckets."""
        self.loss_sum += loss_sum
        self.examples += len(t)
        self.grad_norm_sum += grad_norm
        self.steps += 1
        bucket = (t * N_BUCKETS) // self.T
        self.bucket_sum.index_add_(0, bucket, losses)
        self.bucket_n.index_add_(0, bucket, torch.ones_like(losses))

    def start(self, step: int, tensorboard: bool, resumed: bool = False, log=print) -> None:
        """At the start of (or on resuming) a run: drop the records past ``step`` that an
        interrupted run wrote, and a torn last line (saying so), and open the TensorBoard
        writer if asked for and installed.  After a resume the next record is marked
        ``"resumed_from": step``: its averages cover only the steps since the resume."""
        self.resumed_from = step if resumed else None
        if not self.writes:
            return
        if self.path.exists():
            records, torn = _read_records(self.path)
            if torn:
                log(f"note: {self.path} ended in a torn record (an interrupted write); dropped it")
            keep = [r for r in records if r.get("step", 0) <= step]
            atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in keep).encode())
        if tensorboard and self.tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSONL only
                return
            self.tensorboard = SummaryWriter(str(self.folder / "tensorboard"), purge_step=step + 1)

    def record(self, step: int, lr: float, ema_decay: float | None) -> dict:
        """Write the record of the interval ending at ``step`` and start the next one."""
        buckets = {}
        for b in range(N_BUCKETS):
            if self.bucket_n[b] > 0:
                lo, hi = b * self.T // N_BUCKETS, (b + 1) * self.T // N_BUCKETS - 1
                buckets[f"{lo}-{hi}"] = float(self.bucket_sum[b] / self.bucket_n[b])
        dt = time.perf_counter() - self.t0
        rec = {
            "step": step,
            "loss": self.loss_sum / max(self.examples, 1),
            "lr": lr,
            "grad_norm": self.grad_norm_sum / max(self.steps, 1),
            "ema_decay": ema_decay,
            "steps_per_s": self.steps / dt if dt > 0 else None,
            "images_per_s": self.examples / dt if dt > 0 else None,
            "loss_by_t": buckets,
        }
        if self.resumed_from is not None:
            rec["resumed_from"] = self.resumed_from
            self.resumed_from = None
        if self.writes:
            append_bytes(self.path, (json.dumps(rec) + "\n").encode())
            if self.tensorboard is not None:
                for k in TENSORBOARD_SCALARS:
                    if rec[k] is not None:
                        self.tensorboard.add_scalar(f"train/{k}", rec[k], step)
                for k, v in buckets.items():
                    self.tensorboard.add_scalar(f"loss_by_t/{k}", v, step)
        self.reset()
        return rec

    def flush(self) -> None:
        """Flush the TensorBoard writer, if one is open."""
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def save_loss_curve(self) -> None:
        """``loss.png`` in the run folder, from all records (at the end of a run)."""
        records = read_metrics(self.path) if self.writes else []
        if records:
            viz.save_loss_curve(records, self.folder / "loss.png")


def progress_bar(total: int, initial: int, enabled: bool = True):
    """Progress over optimizer steps (rate and ETA: a bar on a terminal, a line every 10 s
    elsewhere), or None if disabled."""
    if not enabled:
        return None
    return Progress(total, "train", initial=initial, delay=0.0)
