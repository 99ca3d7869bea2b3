"""MLflow runs and Model Registry: finished runs as a table, versions, aliases."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from spine_model.compare import METRICS, SETTINGS, VAL_FINGERPRINT, Decision, candidate, decide, servable
from spine_model.tracking import client, resolve_tracking_uri

MODEL_NAME = "spine-net"
LOCALISER_NAME = "spine-localiser"
LOCALISER_TAG = "localiser_model"  # on a classifier run and its versions: models:/spine-localiser/N it carries
CHAMPION, CHALLENGER = "champion", "challenger"


def _record(run) -> dict:
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "experiment_id": run.info.experiment_id,
        **{key: run.data.metrics.get(key) for key in METRICS},
        **{key: run.data.params.get(key) for key in (*SETTINGS, VAL_FINGERPRINT)},
        "serving_model_uri": run.data.tags.get("serving_model_uri"),
    }


def finished_runs(experiment: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """Every FINISHED run of the experiment with its scores, settings and serving model URI."""
    mlflow_client = client(tracking_uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    columns = ["run_id", "run_name", "start_time", "end_time", "experiment_id", *METRICS, *SETTINGS, VAL_FINGERPRINT]
    if found is None:
        return pd.DataFrame(columns=[*columns, "serving_model_uri"])
    runs = mlflow_client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
    return pd.DataFrame([_record(run) for run in runs], columns=[*columns, "serving_model_uri"])


def register_version(run_id: str, model_uri: str, name: str = MODEL_NAME, tracking_uri: str | None = None) -> str:
    """The registered version of a run's model, created on first use (never twice for one run)."""
    import mlflow

    mlflow_client = client(tracking_uri)
    existing = mlflow_client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        return existing[0].version
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    tags = {"run_id": run_id}
    carried = mlflow_client.get_run(run_id).data.tags.get(LOCALISER_TAG)
    if carried:  # the version names the localiser version its serving model carries
        tags[LOCALISER_TAG] = carried
    return mlflow.register_model(model_uri, name, tags=tags).version


def alias_run_id(alias: str, name: str = MODEL_NAME, tracking_uri: str | None = None) -> str | None:
    """The run behind a registered model's alias, or None when the alias (or model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client(tracking_uri).get_model_version_by_alias(name, alias).run_id
    except MlflowException:
        return None


def update_aliases(
    ranked: pd.DataFrame, name: str = MODEL_NAME, tracking_uri: str | None = None, margin: float = 0.0
) -> Decision | None:
    """Register the candidate and the newest servable run; `challenger` -> newest, `champion` ->
    the candidate if it wins: it beats its own prior baseline by more than `margin`, and the
    champion (see compare.decide).

    The candidate is the best run validated on the champion's own studies (the best overall when
    none is, or there is no champion), so that a run which beats the champion where the scores
    compare is promoted even when a run on other studies ranks above it. The decision and both
    scores are written as tags on the candidate's model version. None when no ranked run has a
    serving model.
    """
    ranked = servable(ranked)
    if ranked.empty:
        return None
    mlflow_client = client(tracking_uri)
    champion_id = alias_run_id(CHAMPION, name, tracking_uri)
    champion = None
    if champion_id is not None:
        match = ranked[ranked["run_id"] == champion_id]
        champion = match.iloc[0] if not match.empty else pd.Series(_record(mlflow_client.get_run(champion_id)))
    best = candidate(ranked, champion)
    newest = ranked.sort_values("start_time").iloc[-1]
    best_version = register_version(best["run_id"], best["serving_model_uri"], name, tracking_uri)
    newest_version = register_version(newest["run_id"], newest["serving_model_uri"], name, tracking_uri)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, newest_version)
    decision = decide(best, champion, margin=margin)
    if decision.promote:
        mlflow_client.set_registered_model_alias(name, CHAMPION, best_version)
    for key, value in {
        "champion_decision": decision.describe(),
        "candidate_score": decision.candidate_score,
        "champion_score_before": decision.champion_score,
    }.items():
        if value is not None:
            mlflow_client.set_model_version_tag(name, best_version, key, str(value))
    return decision


LOCALISER_SCORE = "val_loc_distance_share"  # mean distance to the labelled points, share of the image side


def register_localiser(
    run_id: str, model_uri: str, name: str = LOCALISER_NAME, tracking_uri: str | None = None
) -> Decision:
    """Register a localiser run's model; `champion` moves to it when it places the validation points
    closer than the current champion did, on the same validation studies (or when there is none)."""
    mlflow_client = client(tracking_uri)
    version = register_version(run_id, model_uri, name, tracking_uri)

    def scored(any_run_id: str) -> pd.Series:
        run = mlflow_client.get_run(any_run_id)
        return pd.Series(
            {"run_id": any_run_id, LOCALISER_SCORE: run.data.metrics.get(LOCALISER_SCORE, float("inf")),
             VAL_FINGERPRINT: run.data.params.get(VAL_FINGERPRINT)}
        )  # fmt: skip

    champion_id = alias_run_id(CHAMPION, name, tracking_uri)
    decision = decide(scored(run_id), scored(champion_id) if champion_id else None, score=LOCALISER_SCORE)
    if decision.promote:
        mlflow_client.set_registered_model_alias(name, CHAMPION, version)
    mlflow_client.set_model_version_tag(name, version, "champion_decision", decision.describe())
    return decision


def localiser_version_uri(run_id: str, name: str = LOCALISER_NAME, tracking_uri: str | None = None) -> str:
    """models:/NAME/VERSION of a localiser run's registered version."""
    versions = client(tracking_uri).search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        raise ValueError(f"localiser run {run_id} has no registered version of {name!r}")
    return f"models:/{name}/{versions[0].version}"


def download_localiser(uri: str, dest: str | Path, tracking_uri: str | None = None) -> tuple[Path, str, str]:
    """The weights of a registered localiser (models:/NAME@ALIAS or models:/NAME/VERSION), downloaded
    into `dest`; returns (checkpoint path, the localiser's run id, models:/NAME/VERSION)."""
    from mlflow.exceptions import MlflowException

    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if match is None:
        raise ValueError(f"localiser URI {uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, number = match.groups()
    mlflow_client = client(tracking_uri)
    try:
        version = (
            mlflow_client.get_model_version_by_alias(name, alias)
            if alias
            else mlflow_client.get_model_version(name, number)
        )
    except MlflowException as error:
        raise ValueError(
            f"no registered localiser {uri} at {resolve_tracking_uri(tracking_uri)}: train one first "
            f"(localiser='train'), or train without (localiser='off') ({error})"
        ) from None
    Path(dest).mkdir(parents=True, exist_ok=True)
    artifacts = mlflow_client.list_artifacts(version.run_id, "weights")
    logged = [item.path for item in artifacts if item.path.endswith(".pt")]
    if not logged:
        raise ValueError(f"localiser {uri} (run {version.run_id}) logged no weights/*.pt checkpoint")
    path = mlflow_client.download_artifacts(version.run_id, logged[0], str(dest))
    return Path(path), version.run_id, f"models:/{name}/{version.version}"
