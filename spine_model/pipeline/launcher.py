"""Training on every GPU of one node: `torchrun`, one process per GPU, and the parent that waits.

`launch` starts `torchrun --standalone --nproc-per-node N -m spine_model.pipeline.train RUN_DIR`
and waits for it, handing rank 0's epochs (its run folder's epoch log) to its caller while training
goes on, so MLflow hears from one process only. What each process does is spine_model.training.
Without CUDA the processes run on the CPU with the gloo backend: how the tests prove it works.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from spine_model.core.catalog import RunFolder
from spine_model.training.distributed import DIVERGED_EXIT
from spine_model.training.history import EpochLog, EpochStats
from spine_model.training.loop import TrainingDiverged

log = logging.getLogger(__name__)

PROCESS_MODULE = "spine_model.pipeline.train"  # what each of torchrun's processes runs (its `main`)


def command(run_dir: str | Path, processes: int, resume: bool = False) -> list[str]:
    """The torchrun command line for a run folder."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return [*args, "-m", PROCESS_MODULE, str(run_dir), *(["--resume"] if resume else [])]


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
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    resume: bool = False,
    poll_s: float = 1.0,
) -> dict[str, float]:
    """Train the run folder's model in `processes` processes; returns its fit summary.

    Rank 0's epochs reach `on_epoch_end` while training goes on. A failure raises with the end of
    the processes' log (`distributed.log` in the run folder); a loss that was not finite raises
    TrainingDiverged, as in one process.
    """
    folder = RunFolder(run_dir)
    log.info("training %s on %s", folder.root, check_devices(processes))
    epochs = EpochLog(folder.epochs_log)
    if not resume:
        epochs.clear()
    seen = len(epochs.read())
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(folder.distributed_log, "ab") as output:
        process = subprocess.Popen(
            command(folder.root, processes, resume), stdout=output, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
        try:
            while True:
                done = process.poll() is not None
                reported = epochs.read()
                for stats in reported[seen:]:
                    if on_epoch_end is not None:
                        on_epoch_end(stats)
                seen = len(reported)
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
