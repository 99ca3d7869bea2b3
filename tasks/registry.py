"""Comparison and registry tasks: rank runs, show them in Prefect, move the aliases."""

from __future__ import annotations

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from spine_model.compare import Decision, comparison_table, markdown_table, rank_runs
from spine_model.tracking import registry

RETRIES = {"retries": 3, "retry_delay_seconds": 5}


@task(name="rank-runs", **RETRIES)
def rank_runs_task(experiment: str, tracking_uri: str) -> pd.DataFrame:
    return rank_runs(registry.finished_runs(experiment, tracking_uri))


@task(name="publish-comparison")
def publish_comparison_task(ranked: pd.DataFrame, experiment: str) -> None:
    """The ranking as a Prefect table artifact and a Markdown artifact."""
    table = comparison_table(ranked)
    if table.empty:
        create_markdown_artifact(f"No finished run with a score in `{experiment}` yet.", key="spine-model-comparison")
        return
    create_table_artifact(table.to_dict(orient="records"), key="spine-model-ranking", description=experiment)
    create_markdown_artifact(
        f"# Runs of `{experiment}`, best first (lower score is better)\n\n{markdown_table(table)}",
        key="spine-model-comparison",
    )


@task(name="update-aliases", **RETRIES)
def update_aliases_task(
    ranked: pd.DataFrame, model_name: str, tracking_uri: str, margin: float = 0.0
) -> Decision | None:
    decision = registry.update_aliases(ranked, model_name, tracking_uri, margin)
    message = decision.describe() if decision else "no ranked run has a serving model; registry unchanged"
    get_run_logger().info("%s: %s", model_name, message)
    return decision


@task(name="register-localiser", **RETRIES)
def register_localiser_task(run_id: str, model_uri: str, tracking_uri: str) -> Decision:
    decision = registry.register_localiser(run_id, model_uri, tracking_uri=tracking_uri)
    get_run_logger().info("%s: %s", registry.LOCALISER_NAME, decision.describe())
    return decision


@task(name="fetch-localiser", **RETRIES)
def fetch_localiser_task(uri: str, dest: str, tracking_uri: str) -> tuple[str, str]:
    """A registered localiser's weights into the run folder; returns (checkpoint path, models:/NAME/VERSION)."""
    path, localiser_run_id, version_uri = registry.download_localiser(uri, dest, tracking_uri)
    get_run_logger().info("reusing localiser %s = %s (MLflow run %s)", uri, version_uri, localiser_run_id)
    return str(path), version_uri


@task(name="localiser-version", **RETRIES)
def localiser_version_task(localiser_run_id: str, tracking_uri: str) -> str:
    """models:/spine-localiser/N that the localiser run registered."""
    return registry.localiser_version_uri(localiser_run_id, tracking_uri=tracking_uri)
