"""Training and evaluation tasks: per-epoch MLflow metrics and a Prefect progress artifact."""

from __future__ import annotations

import sys

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from spine_model import tracking
from spine_model.steps import evaluate_step, priors_step, train_step
from spine_model.train import EpochStats
from spine_model.workspace import RunRecord


@task(name="train")
def train_task(run_dir: str, mlflow_run_id: str, tracking_uri: str) -> dict[str, float]:
    """Fit the model of run_dir/run.json; every epoch goes to MLflow (step = epoch) and the progress bar."""
    logger = get_run_logger()
    epochs = RunRecord.load(run_dir).config.epochs
    progress_id = create_progress_artifact(0.0, key="spine-training-progress", description=f"training: {epochs} epochs")

    def on_epoch_end(stats: EpochStats) -> None:
        metrics = {k: getattr(stats, k) for k in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr")}
        tracking.log_metrics(mlflow_run_id, {**metrics, "epoch_seconds": stats.seconds}, stats.epoch, tracking_uri)
        update_progress_artifact(progress_id, 100.0 * stats.epoch / epochs)
        logger.info("epoch %d/%d: %s", stats.epoch, epochs, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    # Batch progress bars when a person watches a terminal; worker logs get the per-epoch lines.
    result = train_step(run_dir, on_epoch_end, progress=sys.stderr.isatty())
    return {"best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss}


@task(name="evaluate")
def evaluate_task(run_dir: str) -> dict[str, float]:
    """Score the best checkpoint on the validation split; reports and plots land in run_dir/evaluation."""
    evaluation, _ = evaluate_step(run_dir, progress=False)
    get_run_logger().info("evaluation\n%s", evaluation.describe())
    return evaluation.metrics()


@task(name="fit-priors")
def priors_task(run_dir: str) -> str:
    """Coordinate prior (slice and point per condition x level) and class prior of the training split."""
    return str(priors_step(run_dir))
