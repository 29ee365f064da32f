"""Training as several processes (DDP under `torchrun`), and the same code as one process without it.

    torchrun --standalone --nproc_per_node=N -m tasks train_seg     (gloo on CPU, nccl with one GPU per process)

Every process draws the same global batch of `train.batch_size` and the same augmentation from identically seeded
generators, and reads and augments only its contiguous share (`Ranks.part`, the loader's `part`). The loss is a
function of sums over the batch that `Ranks.sum` adds up over the processes, so every process computes the global
batch's loss; DDP averages the gradients, which makes each step the one a single process takes on the whole batch
(up to float rounding).
Rank 0 alone validates, writes checkpoints and metrics and talks to the tracker; its metrics reach every process
(`Ranks.from_main`), so all of them stop at the same epoch with the same weights. Batch norm becomes SyncBatchNorm
on CUDA; on CPU (no SyncBatchNorm) each process normalises its own share, so use `norm: instance` there for equality.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from tasks import paths
from tasks.errors import SliceWiseError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process among a stage's training processes: rank 0 of 1 unless torchrun started several (DDP)."""

    rank: int = 0
    world: int = 1
    local_world: int = 1  # processes on this machine, which share its CPU cores

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints and metrics, talks to the tracker and validates."""
        return self.rank == 0

    def check_batch(self, batch_size: int, samples: int) -> None:
        """Every global batch splits evenly over the processes, and no process is left with an empty share."""
        if batch_size % self.world:
            raise SliceWiseError(f"train.batch_size {batch_size} does not split evenly over {self.world} processes; "
                                 "make it a multiple of torchrun's --nproc_per_node", paths.PARAMS)
        if samples < self.world:
            raise SliceWiseError(f"{samples} training samples cannot be shared by {self.world} processes")

    @property
    def part(self) -> tuple[int, int]:
        """(rank, world): which share of each global batch this process reads (loaders.training_loader's `part`)."""
        return self.rank, self.world

    def sum(self, tensor: Tensor) -> Tensor:
        """The sum over every process, differentiable (the gradient is summed the same way)."""
        return _SumOverRanks.apply(tensor) if self.world > 1 else tensor

    def from_main(self, value: Any) -> Any:
        """Rank 0's value on every process (validation metrics, so that every process stops at the same epoch)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model as DDP, which averages the processes' gradients during backward (the model itself in one)."""
        if self.world == 1:
            return model
        has_batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if has_batch_norm and device.type == "cuda":
            # Statistics over the global batch, as one process computes them.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif has_batch_norm and self.rank == 0:
            log.warning("batch norm under DDP on %s: each process normalises its share with its own statistics "
                        "(SyncBatchNorm needs CUDA), so results differ slightly from one process; "
                        "profiles.<name>.model.norm: instance makes them equal", device.type)
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose backward is again an all_reduce(SUM): each process's loss is the global batch's."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def launched_rank() -> int:
    """The rank torchrun gave this process (0 without torchrun), known before the process group exists. RANK alone
    (a cluster shell's environment) is no torchrun process: without WORLD_SIZE > 1 the step trains in one process,
    as training_processes decides, and that process is rank 0 (it once ran untracked with RANK=3 set)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return 0
    return int(os.environ.get("RANK", "0"))


@contextmanager
def training_processes(device: torch.device) -> Iterator[tuple[Ranks, torch.device]]:
    """This process's rank and device; under torchrun it joins the process group for the block and leaves it after.

    gloo on CPU, nccl on CUDA with one GPU per local rank. A group that the caller already set up is used as is.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Ranks(), device
        return
    if device.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise SliceWiseError(f"torchrun started local rank {local_rank} but this machine has "
                                 f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node <= the GPU count")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise SliceWiseError(f"distributed training runs on cpu (gloo) or cuda (nccl), not {device.type}; "
                             "set train.device", paths.PARAMS)
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_WORLD_SIZE", world))), device
    finally:
        if owner:
            dist.destroy_process_group()
