"""The training step: a run folder's model trained as its record says, in this process or, for
several GPUs, in torchrun's processes (spine_model.pipeline.launcher)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from typing import NoReturn

from spine_model.core.files import atomic_write_csv, atomic_write_text
from spine_model.evaluation.plots import plot_training_curves
from spine_model.pipeline.launcher import launch
from spine_model.pipeline.run import RunInputs
from spine_model.training import distributed
from spine_model.training.distributed import DIVERGED_EXIT, SINGLE, World
from spine_model.training.history import EpochLog, EpochStats, FitResult
from spine_model.training.loop import TrainingDiverged, train_model

log = logging.getLogger(__name__)


def train_run(
    run: RunInputs,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
    resume: bool = False,
) -> dict[str, float]:
    """Train the run folder's model where its config says: in this process, or in `gpus` processes
    under torchrun (each epoch still reaches `on_epoch_end`, from rank 0's epoch log). Returns its
    best epoch and validation loss."""
    if run.record.config.gpus > 1:
        return launch(run.folder.root, run.record.config.gpus, on_epoch_end, resume=resume)
    result = train_step(run, on_epoch_end, progress=progress, resume=resume)
    return {"best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss}


def train_step(
    run: RunInputs,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
    resume: bool = False,
    world: World = SINGLE,
) -> FitResult:
    """Train as the run's record says; writes checkpoints, history, curves and the fit summary.

    `resume`: go on from the last epoch the run folder's training state holds (see `fit`). In one of
    several training processes (`world`), only rank 0 writes.
    """
    folder = run.folder
    epochs = EpochLog(folder.epochs_log)
    if world.main:
        folder.stop_request.unlink(missing_ok=True)  # an earlier request was honoured: this training goes on
        if not resume:
            epochs.clear()

    def report(stats: EpochStats) -> None:
        """One line per epoch in the run folder (fit calls this on rank 0 only): whoever waits for the
        training, a parent flow on another machine or torchrun's launcher, reads it."""
        epochs.append(stats)
        if on_epoch_end is not None:
            on_epoch_end(stats)

    _, result = train_model(
        run.points, run.record.split, run.store, run.record.config, folder.checkpoints, report, progress,
        resume=resume, world=world, should_stop=folder.stop_request.is_file,
    )  # fmt: skip
    if not world.main:
        return result
    history = result.history_frame()
    atomic_write_csv(folder.history, history)
    plot_training_curves(history, folder.curves)
    summary = {"best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss}
    atomic_write_text(folder.fit_summary, json.dumps(summary))
    return result


def main(argv: list[str] | None = None) -> NoReturn:
    """One of torchrun's training processes for a run folder (see spine_model.pipeline.launcher)."""
    parser = argparse.ArgumentParser(description="One of torchrun's training processes for a run folder.")
    parser.add_argument("run_dir", help="run folder written by the pipeline's prepare step")
    parser.add_argument("--resume", action="store_true", help="go on from the run folder's training state")
    args = parser.parse_args(argv)
    world = World.from_env()
    logging.basicConfig(level=logging.INFO if world.main else logging.WARNING, format="%(levelname)s %(message)s")
    distributed.init(world)
    status = 0
    try:
        # Rank 0's train_step writes one line per epoch to the run folder's epoch log, which `launch` reads.
        train_step(RunInputs.load(args.run_dir), progress=False, resume=args.resume, world=world)
    except TrainingDiverged as error:  # every process sees the same summed loss: all stop here together
        log.error("TrainingDiverged: %s", error)
        status = DIVERGED_EXIT
    # Any other failure propagates without the barrier (the others may never reach it); torchrun then
    # stops every process.
    distributed.leave(status)


if __name__ == "__main__":
    main()
