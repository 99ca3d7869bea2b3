"""MLflow tasks: explicit run ids, retries for a tracking server that blinks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from spine_model import tracking
from spine_model.pipeline.publish import log_lineage, log_run_outputs, log_serving_model
from spine_model.pipeline.run import RunInputs

RETRIES = {"retries": 3, "retry_delay_seconds": 5}


@task(name="start-mlflow-run", **RETRIES)
def start_run_task(experiment: str, run_name: str, tags: dict[str, str], tracking_uri: str) -> str:
    return tracking.start_run(experiment, run_name, tags, tracking_uri)


@task(name="log-params", **RETRIES)
def log_params_task(run_id: str, params: dict[str, Any], tracking_uri: str) -> None:
    tracking.log_params(run_id, params, tracking_uri)


@task(name="log-metrics", **RETRIES)
def log_metrics_task(run_id: str, metrics: dict[str, float], tracking_uri: str) -> None:
    tracking.log_metrics(run_id, metrics, tracking_uri=tracking_uri)


@task(name="set-tags", **RETRIES)
def set_tags_task(run_id: str, tags: dict[str, Any], tracking_uri: str) -> None:
    tracking.set_tags(run_id, tags, tracking_uri)


@task(name="log-results", cache_policy=NO_CACHE, **RETRIES)
def log_results_task(run_id: str, run: RunInputs, tracking_uri: str) -> dict[str, str]:
    """Metrics, reports, plots, record, priors, weights and the PyTorch model; returns its URI."""
    return log_run_outputs(run_id, run, tracking_uri)


@task(name="log-serving-model", cache_policy=NO_CACHE, **RETRIES)
def log_serving_task(
    run_id: str,
    run: RunInputs,
    localiser_checkpoint: str | None,
    tracking_uri: str,
    ensemble: list[str] | None = None,
    temperatures: dict[str, float] | None = None,
    record_in: str | None = None,
) -> str:
    """The serving pyfunc of the classifier run (or of an ensemble), carrying the localiser when there
    is one and its calibration; returns its URI."""
    members = [Path(path) for path in ensemble] if ensemble else None
    return log_serving_model(run_id, run, localiser_checkpoint, tracking_uri, members, temperatures, record_in)


@task(name="end-mlflow-run", **RETRIES)
def end_run_task(run_id: str, status: str, tracking_uri: str) -> None:
    tracking.end_run(run_id, status, tracking_uri)


@task(name="log-lineage", cache_policy=NO_CACHE, **RETRIES)
def log_lineage_task(
    run_id: str, data_dir: str, table: pd.DataFrame, assignment: pd.DataFrame, digest: str, tracking_uri: str
) -> None:
    """The run's data and evaluation studies as MLflow dataset inputs."""
    log_lineage(run_id, data_dir, table, assignment, digest, tracking_uri)
