"""Cross-validation tasks: the folds prepared, summarised out of fold, shown in the Prefect UI."""

from __future__ import annotations

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from spine_model.core.catalog import CVFolder
from spine_model.core.config import TrainConfig
from spine_model.pipeline.cv import CVSummary, summarise_cv
from spine_model.pipeline.publish import log_cv_outputs
from spine_model.pipeline.run import PreparedCV, RunData, prepare_cv

RETRIES = {"retries": 3, "retry_delay_seconds": 5}


@task(name="prepare-cross-validation", cache_policy=NO_CACHE)
def prepare_cv_task(
    data: RunData, config: TrainConfig, cv_dir: str, folds: int, localiser_config: TrainConfig | None = None
) -> PreparedCV:
    """Folds by study, a run folder each, and the localiser's: what the fold flow runs read."""
    return prepare_cv(data, config, cv_dir, folds, localiser_config)


@task(name="summarise-folds", cache_policy=NO_CACHE)
def summarise_cv_task(cv_dir: str, labels: pd.DataFrame, data_dir: str) -> CVSummary:
    """The out-of-fold score beside the prior (and the limit), the folds' spread, the calibration."""
    summary = summarise_cv(cv_dir, labels, data_dir)
    get_run_logger().info("%s", summary.describe())
    return summary


@task(name="log-cross-validation", cache_policy=NO_CACHE, **RETRIES)
def log_cv_task(run_id: str, cv_dir: str, metrics: dict[str, float], tracking_uri: str) -> None:
    log_cv_outputs(run_id, cv_dir, metrics, tracking_uri)


@task(name="publish-cv-summary")
def publish_cv_summary_task(cv_dir: str, summary: CVSummary, mlflow_link: str, folds: dict[str, str]) -> str:
    """A Markdown artifact: the out-of-fold score, the fold table with a link to each fold's flow run
    (`folds`: label -> link), the per-condition table, where to look next."""
    links = "".join(f"\n- **{label}:** {link}" for label, link in folds.items())
    markdown = (
        f"# Cross-validation `{CVFolder(cv_dir).name}`\n\n{summary.markdown()}\n\n**Fold runs:**{links}\n\n"
        f"**MLflow (the parent run; each fold is nested in it):** {mlflow_link}\n\n**Folder:** `{cv_dir}`\n"
    )
    create_markdown_artifact(markdown, key="spine-cv-summary", description="out-of-fold scores")
    return markdown
