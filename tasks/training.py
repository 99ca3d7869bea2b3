"""Training and evaluation tasks: per-epoch MLflow metrics and a Prefect progress artifact."""

from __future__ import annotations

import base64
import sys

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run
from prefect.states import Cancelled, State

from spine_model import tracking
from spine_model.core.catalog import RunFolder, RunRecord
from spine_model.pipeline.evaluate import evaluate_localiser_step, evaluate_step
from spine_model.pipeline.run import RunInputs, role_of
from spine_model.pipeline.train import train_run
from spine_model.training.checkpoints import saved_epoch
from spine_model.training.history import EpochLog, EpochStats
from spine_model.training.loop import TrainingStopped
from tasks.retry import unless_bad_data


@task(name="load-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def load_run_task(run_dir: str) -> RunInputs:
    """The run folder's record, points, labels and volume store, read once for this flow run."""
    return RunInputs.load(run_dir)


@task(name="train", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10, retry_condition_fn=unless_bad_data)
def train_task(run: RunInputs, mlflow_run_id: str, tracking_uri: str, resume: bool = False) -> dict[str, float] | State:
    """Fit the run's model; every epoch goes to MLflow (step = epoch) and the progress bar.

    A retry of this task (or `resume`) goes on from the last epoch the run folder saved, in the
    same MLflow run, and says so (log line and the run's `resumed_from_epoch` tag). Training asked
    to stop (its run folder's STOP file: a sweep pruning it, or a person) ends the task Cancelled
    with the reason, not Failed: nothing went wrong, and the checkpoints are kept.
    """
    logger = get_run_logger()
    config = run.record.config
    epochs = config.epochs
    resume = resume or (task_run.run_count or 1) > 1
    done = saved_epoch(run.folder.checkpoints) if resume else 0
    if resume:
        logger.info("resuming %s from epoch %d of %d (MLflow run %s)", run.folder.root, done, epochs, mlflow_run_id)
        tracking.set_tags(mlflow_run_id, {"resumed_from_epoch": done}, tracking_uri)
    progress_id = create_progress_artifact(
        100.0 * done / epochs, key=role_of(config).progress_key,
        description=f"training {config.model_family}: {epochs} epochs",
    )  # fmt: skip

    # Metrics go through a file in the run folder: an unreachable tracking server delays them, never
    # loses them nor stops training (see MetricBuffer); they are sent as soon as it answers again.
    buffer = tracking.MetricBuffer(mlflow_run_id, tracking_uri, run.folder.pending_metrics)

    def on_epoch_end(stats: EpochStats) -> None:
        metrics = {k: getattr(stats, k) for k in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr")}
        buffer.log({**metrics, "epoch_seconds": stats.seconds}, stats.epoch)
        update_progress_artifact(progress_id, 100.0 * stats.epoch / epochs)
        logger.info("epoch %d/%d: %s", stats.epoch, epochs, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    if config.gpus > 1:  # torchrun, one process per GPU; rank 0's epochs come back to on_epoch_end
        tracking.set_tags(mlflow_run_id, {"training_processes": config.gpus}, tracking_uri)
    # Batch progress bars when a person watches a terminal; worker logs get the per-epoch lines.
    try:
        summary = train_run(run, on_epoch_end, progress=sys.stderr.isatty(), resume=resume)
    except TrainingStopped as stop:
        flush_metrics_task(buffer)
        return Cancelled(message=str(stop))
    flush_metrics_task(buffer)
    return {"best_epoch": summary["best_epoch"], "best_val_loss": summary["best_val_loss"]}


class TrainingWatch:
    """What a flow that dispatched training to other machines shows while it waits: one progress
    artifact per run folder (epochs done, the last validation loss), read from its epochs.jsonl, and
    a log line per epoch. Shared run folders are what both sides see (see README)."""

    def __init__(self, run_dirs: dict[str, str]) -> None:  # label -> run folder
        self.runs = []
        for label, run_dir in run_dirs.items():
            config = RunRecord.load(run_dir).config
            folder = RunFolder(run_dir)
            # A resumed run's folder already holds its earlier epochs: they were shown (and sent to
            # MLflow) by the run that trained them, so the watch starts after them.
            earlier = EpochLog(folder.epochs_log).read()
            done = earlier[-1].epoch if earlier else 0
            waiting = f"{label}: waiting for its GPU flow run" + (f" (resumes after epoch {done})" if done else "")
            artifact = create_progress_artifact(
                100.0 * done / config.epochs, key=role_of(config).progress_key, description=waiting
            )
            self.runs.append({"label": label, "folder": folder, "epochs": config.epochs,
                              "artifact": artifact, "seen": len(earlier)})  # fmt: skip

    def poll(self) -> None:
        for run in self.runs:
            reported = EpochLog(run["folder"].epochs_log).read()
            if len(reported) < run["seen"]:  # started afresh: the trainer removed the old epochs
                run["seen"] = 0
            if len(reported) == run["seen"]:
                continue
            for stats in reported[run["seen"] :]:
                get_run_logger().info(
                    "%s: epoch %d/%d, train loss %.4g, validation loss %.4g",
                    run["label"], stats.epoch, run["epochs"], stats.train_loss, stats.val_loss,
                )  # fmt: skip
            run["seen"] = len(reported)
            done = f"{run['label']}: epoch {stats.epoch}/{run['epochs']}, validation loss {stats.val_loss:.4f}"
            update_progress_artifact(run["artifact"], 100.0 * stats.epoch / run["epochs"], description=done)


@task(name="send-pending-metrics", cache_policy=NO_CACHE, retries=10, retry_delay_seconds=30)
def flush_metrics_task(buffer: tracking.MetricBuffer) -> None:
    """Every epoch metric MLflow has not taken yet, retried for about five minutes; then the task
    fails, and the metrics stay in the run folder for `spine train --resume`."""
    if not buffer.flush():
        raise RuntimeError(f"MLflow still does not answer: {len(buffer.pending())} metric(s) kept in {buffer.path}")


@task(name="evaluate-localiser", cache_policy=NO_CACHE)
def evaluate_localiser_task(run: RunInputs) -> dict[str, float]:
    """The localiser's points against the labelled ones (and the coordinate prior's) on the validation
    studies: a Markdown artifact with the table and pictures of a few studies."""
    evaluation, paths = evaluate_localiser_step(run, progress=False)
    get_run_logger().info("localiser evaluation\n%s", evaluation.describe())
    picture = base64.b64encode(paths["examples_png"].read_bytes()).decode()
    create_markdown_artifact(
        f"# Localiser `{run.folder.root.parent.name}`\n\nValidation studies: distance from the labelled points "
        f"(pixels, share of the image side) and slice error, beside the coordinate prior's.\n\n"
        f"{evaluation.markdown()}\n\nLabelled points (green circles) and the localiser's (red crosses), "
        f"`{paths['examples_png']}`:\n\n![localiser examples](data:image/png;base64,{picture})\n",
        key="spine-localiser-evaluation",
        description="localiser points on validation studies",
    )
    return evaluation.metrics()


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(run: RunInputs) -> dict[str, float]:
    """Score the best checkpoint on the validation split; reports and plots land in the run's evaluation/."""
    evaluation, _ = evaluate_step(run, progress=False)
    get_run_logger().info("evaluation\n%s", evaluation.describe())
    return evaluation.metrics()
