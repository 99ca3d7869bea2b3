"""Comparison and registry tasks: rank runs, show them in Prefect, move the aliases."""

from __future__ import annotations

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from spine_model.data.ingest import load_labels, load_series_descriptions
from spine_model.evaluation.compare import (
    SCORE,
    VAL_FINGERPRINT,
    Decision,
    Rebased,
    comparison_table,
    markdown_table,
    rank_runs,
)
from spine_model.evaluation.metric import competition_score, solution_from_labels
from spine_model.inference.frames import inference_frame, with_every_study
from spine_model.serving.pyfunc import load_serving_model, predict_with_model
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


@task(name="rebase-target", **RETRIES)
def rebase_target_task(ranked: pd.DataFrame, model_name: str, tracking_uri: str) -> dict | None:
    """What `spine compare --rebase` re-scores: the champion, and the best run when it was validated on
    other studies (its data folder and validation studies, from the record it logged); None when the
    scores already compare (or there is no champion)."""
    target = registry.rebase_target(ranked, model_name, tracking_uri)
    if target is None:
        get_run_logger().info("%s: nothing to rebase: no champion, or no run validated on other studies", model_name)
        return None
    champion, best = target
    record = registry.run_record(best["run_id"], tracking_uri)
    get_run_logger().info(
        "%s: re-scoring champion %s (%.4f on its own studies) on the %d validation studies of run %s (%.4f)",
        model_name, champion["run_id"], champion[SCORE], len(record["val_study_ids"]), best["run_id"], best[SCORE],
    )  # fmt: skip
    return {
        "champion_run_id": champion["run_id"],
        "champion_model_uri": champion["serving_model_uri"],
        "fingerprint": best[VAL_FINGERPRINT],
        "data_dir": record["data_dir"],
        "val_study_ids": [int(s) for s in record["val_study_ids"]],
    }


def rebase_inputs(data_dir: str, study_ids: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The studies' images with their labelled points (as a run's validation scores them), and their
    series for the volume store."""
    frame = inference_frame(data_dir, "train", use_coordinates=True)
    series = load_series_descriptions(data_dir, "train")
    return frame[frame["study_id"].isin(study_ids)], series[series["study_id"].isin(study_ids)]


@task(name="rescore-champion", cache_policy=NO_CACHE, **RETRIES)
def rescore_task(target: dict, frame: pd.DataFrame, store_root: str, tracking_uri: str) -> Rebased:
    """The champion's competition score on the target's validation studies (their labels in train.csv)."""
    studies = target["val_study_ids"]
    labels = load_labels(target["data_dir"])
    labels = labels[labels["study_id"].isin(studies)]
    if len(labels) != len(studies):
        missing = sorted(set(studies) - set(labels["study_id"]))
        raise ValueError(
            f"{len(missing)} validation study(ies) of the run are not in {target['data_dir']}/train.csv, e.g. "
            f"{missing[0]}: pass --data with the data folder that run was trained on"
        )
    model = load_serving_model(target["champion_model_uri"], tracking_uri)
    submission, prior = predict_with_model(model, frame, store_root)
    submission = with_every_study(submission, studies, prior)  # a study without images: the prior's rows
    score = competition_score(solution_from_labels(labels), submission)
    get_run_logger().info("champion %s scores %.4f on them", target["champion_run_id"], score)
    return Rebased(target["champion_run_id"], target["fingerprint"], score, len(studies))


@task(name="update-aliases", **RETRIES)
def update_aliases_task(
    ranked: pd.DataFrame, model_name: str, tracking_uri: str, margin: float = 0.0, rebased: Rebased | None = None
) -> Decision | None:
    decision = registry.update_aliases(ranked, model_name, tracking_uri, margin, rebased)
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
