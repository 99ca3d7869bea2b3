"""Training on every GPU of one node: `torchrun`, one process per GPU, DistributedDataParallel.

`launch` starts `torchrun --standalone --nproc-per-node N -m spine_model.distributed RUN_DIR` and
waits for it; each process trains its share of every batch (the global batch stays
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

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
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


# --- the launcher (the Prefect task's side) --------------------------------------------------------


def command(run_dir: str | Path, processes: int, resume: bool = False) -> list[str]:
    """The torchrun command line for a run folder."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return [*args, "-m", "spine_model.distributed", str(run_dir), *(["--resume"] if resume else [])]


def check_devices(processes: int) -> str:
    """What the processes run on; an error when more GPUs are asked for than this machine has."""
    if not torch.cuda.is_available():
        return f"{processes} CPU processes (gloo): no CUDA here"
    count = torch.cuda.device_count()
    if processes > count:
        raise ValueError(f"{processes} GPUs asked for (gpus={processes}), this machine has {count}")
    return f"{processes} GPUs (NCCL)"


def launch(
    run_dir: str | Path,
    processes: int,
    on_epoch_end: Callable | None = None,
    resume: bool = False,
    poll_s: float = 1.0,
) -> dict[str, float]:
    """Train the run folder's model in `processes` processes; returns its fit summary.

    Rank 0's epochs reach `on_epoch_end` (as EpochStats) while training goes on. A failure raises
    with the end of the processes' log (`distributed.log` in the run folder); a loss that was not
    finite raises TrainingDiverged, as in one process.
    """
    from spine_model.catalog import RunFolder
    from spine_model.train import EpochStats, TrainingDiverged

    folder = RunFolder(run_dir)
    log.info("training %s on %s", folder.root, check_devices(processes))
    if not resume:
        folder.epochs_log.unlink(missing_ok=True)
    seen = len(epoch_lines(folder.epochs_log))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(folder.distributed_log, "ab") as output:
        process = subprocess.Popen(
            command(folder.root, processes, resume), stdout=output, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
        try:
            while True:
                done = process.poll() is not None
                lines = epoch_lines(folder.epochs_log)
                for line in lines[seen:]:
                    if on_epoch_end is not None:
                        on_epoch_end(EpochStats(**json.loads(line)))
                seen = len(lines)
                if done:
                    break
                time.sleep(poll_s)
        finally:
            if process.poll() is None:  # the caller stopped (cancelled, interrupted): stop every rank
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
    if process.returncode != 0:
        tail = "\n".join(folder.distributed_log.read_text(errors="replace").splitlines()[-25:])
        if process.returncode == DIVERGED_EXIT or "TrainingDiverged" in tail:
            raise TrainingDiverged(f"a training process stopped on a loss that was not finite:\n{tail}")
        raise RuntimeError(f"torchrun exited with status {process.returncode}; {folder.distributed_log} ends:\n{tail}")
    return json.loads(folder.fit_summary.read_text())


def epoch_lines(path: Path) -> list[str]:
    """The lines of a run folder's epochs.jsonl, complete lines only (the trainer may be writing one)."""
    if not path.is_file():
        return []
    text = path.read_text()
    return [line for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


# --- one training process (torchrun's side) --------------------------------------------------------


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(description="One of torchrun's training processes for a run folder.")
    parser.add_argument("run_dir", help="run folder written by the pipeline's prepare step")
    parser.add_argument("--resume", action="store_true", help="go on from the run folder's state.pt")
    args = parser.parse_args(argv)
    world = World.from_env()
    logging.basicConfig(level=logging.INFO if world.main else logging.WARNING, format="%(levelname)s %(message)s")
    from spine_model.steps import RunInputs, train_step
    from spine_model.train import TrainingDiverged

    init(world)
    status = 0
    try:
        # Rank 0's train_step writes one line per epoch to the run folder's epochs.jsonl, which `launch` reads.
        train_step(RunInputs.load(args.run_dir), progress=False, resume=args.resume, world=world)
    except TrainingDiverged as error:  # every process sees the same summed loss: all stop here together
        log.error("TrainingDiverged: %s", error)
        status = DIVERGED_EXIT
    # Any other failure propagates without the barrier (the others may never reach it); torchrun then
    # stops every process.
    leave(status)


if __name__ == "__main__":
    main()
