"""The process-group primitives of training on every GPU of one node (one process per GPU,
DistributedDataParallel); spine_model.pipeline.launcher starts the processes with torchrun.

Each process trains its share of every batch (the global batch stays
`config.batch_size`, so a run takes the same optimiser steps on any number of GPUs), gradients are
averaged by DDP, BatchNorm statistics are synchronised (SyncBatchNorm, on GPUs), and the per-epoch
sums behind the losses and accuracies are added up across processes, so every process sees the
same figures and takes the same learning-rate decisions. Rank 0 alone writes checkpoints, the
training state, the run folder's history and one line per epoch in `epochs.jsonl`, which
`launch` reads while it waits and hands to its caller (the Prefect task logs them to MLflow), so
MLflow hears from one process only. Resume works as in one process: every rank loads state.pt.

Without CUDA the processes run on the CPU with the gloo backend: how the tests prove all this.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

log = logging.getLogger(__name__)

DIVERGED_EXIT = 3  # a process's exit status when its loss was not finite (TrainingDiverged)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (torchrun's RANK, LOCAL_RANK, WORLD_SIZE)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """The process that writes files and reports epochs."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> World:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


SINGLE = World()


def init(world: World) -> None:
    """Join the process group: NCCL with one GPU per process when CUDA is present, else gloo on the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def leave(status: int = 0) -> NoReturn:
    """End this training process: leave the process group in step with the others (a barrier, then
    destroy it), flush the output, and exit with `status` without the interpreter's teardown.

    Why not a plain return: DDP's reducer stays alive through the hooks it put on the model's
    parameters, and destroying it with gloo's threads during interpreter finalisation aborts one
    process now and then ("terminate called without an active exception", SIGABRT) after all its
    work is done and written. Exiting here skips that teardown; the files are already closed.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_across(*tensors: torch.Tensor) -> None:
    """Add each tensor up over the processes, in place (nothing in one process)."""
    if active():
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def batch_loss(loss_sum: torch.Tensor, weight_sum: torch.Tensor) -> torch.Tensor:
    """The weighted mean loss to backpropagate. Across processes, scaled by the global weight so that
    DDP's mean of the gradients is the gradient of the whole batch's weighted mean, as in one process."""
    if not active():
        # A batch without labelled targets has loss_sum 0: a zero gradient, not 0 / 0.
        return loss_sum / weight_sum.clamp_min(1e-12)
    total = weight_sum.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return loss_sum * dist.get_world_size() / total.clamp_min(1e-12)


class ShardSampler(Sampler[int]):
    """Every `size`-th item from `rank` on, in order, none repeated: each item is evaluated once overall."""

    def __init__(self, n: int, world: World) -> None:
        self.indices = list(range(world.rank, n, world.size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
