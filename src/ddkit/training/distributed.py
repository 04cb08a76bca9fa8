"""torchrun / DDP: process-group set-up from the environment torchrun provides.

``ddkit train`` run as ``torchrun --nproc_per_node=N -m ddkit.cli train ...`` (or the ``ddkit``
script) finds RANK / WORLD_SIZE / LOCAL_RANK and joins a process group: NCCL on GPUs, gloo on
CPUs.  Rank 0 alone writes files.  Ranks exchange tensors only, never pickled objects.  Without
those variables everything is a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run; the defaults (rank 0 of 1) mean a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one rank that writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def setup(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes (if any); ``device_kind`` is 'cpu' or 'cuda'."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    )
    if device_kind == "cuda":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return info


def teardown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``x`` summed over all ranks in place, and returned (unchanged in a single process)."""
    if info.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_gather_tensor(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The 1-D CPU tensors ``x`` of every rank, concatenated in rank order.  Sizes may differ
    between ranks: they are gathered first, then the tensors padded to the largest.  Plain
    tensor collectives only: nothing a peer sends is unpickled."""
    if not info.enabled:
        return x
    # NCCL moves CUDA tensors only; gloo CPU tensors
    dev = torch.device("cuda", torch.cuda.current_device()) if _nccl() else torch.device("cpu")
    x = x.reshape(-1).to(dev)
    sizes = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(info.world_size)]
    dist.all_gather(sizes, torch.tensor([x.numel()], device=dev))
    longest = max(int(n) for n in sizes)
    padded = torch.zeros(longest, dtype=x.dtype, device=dev)
    padded[: x.numel()] = x
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(n)] for p, n in zip(parts, sizes, strict=True)]).cpu()


def _nccl() -> bool:
    return dist.get_backend() == "nccl"


def barrier(info: DistInfo) -> None:
    """Wait until every rank gets here (returns at once in a single process)."""
    if info.enabled:
        dist.barrier()
