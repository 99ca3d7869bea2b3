"""MLflow runs and Model Registry: finished runs as a table, versions, aliases."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pandas as pd

from spine_model.core.catalog import CHAMPION_ALIAS, LOCALISER_NAME, MODEL_NAME, WEIGHTS_ARTIFACTS
from spine_model.evaluation.compare import (
    METRICS,
    MODEL_SUMMARY,
    SCORE,
    SETTINGS,
    VAL_FINGERPRINT,
    Decision,
    Rebased,
    candidate,
    decide,
    rebase_candidate,
    rebased_champion,
    servable,
)
from spine_model.tracking.runs import client, resolve_tracking_uri, whole_calls

LOCALISER_TAG = "localiser_model"  # on a classifier run and its versions: models:/spine-localiser/N it carries
CHAMPION, CHALLENGER = CHAMPION_ALIAS, "challenger"


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


def finished_runs(experiment: str, tracking_uri: str | None = None, page_size: int = 1000) -> pd.DataFrame:
    """Every FINISHED run of the experiment with its scores, settings and serving model URI (read page
    by page, so an experiment of any size is ranked whole). A cross-validation's folds are parts of
    their parent run, which is ranked instead (a sweep's nested trials are models of their own)."""
    mlflow_client = client(tracking_uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    columns = ["run_id", "run_name", "start_time", "end_time", "experiment_id", *METRICS, *SETTINGS, VAL_FINGERPRINT]
    if found is None:
        return pd.DataFrame(columns=[*columns, "serving_model_uri"])
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs(
            [found.experiment_id], "attributes.status = 'FINISHED'", max_results=page_size, page_token=token
        )
        runs.extend(run for run in page if "cv_fold" not in run.data.tags)
        token = page.token
        if not token:
            break
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
    run = mlflow_client.get_run(run_id)
    with whole_calls(tracking_uri):
        version = mlflow.register_model(model_uri, name, tags=tags).version
    mlflow_client.update_model_version(name, version, description=model_card(run, name, version))
    return version


def model_card(run, name: str, version: str) -> str:
    """A registered version's description (MLflow shows it on the version's page): what the model is,
    what data and evaluation stand behind it, its calibration, and how to call it."""
    params, metrics = run.data.params, run.data.metrics
    folds = params.get("cv_folds")
    if folds:
        evaluated = f"{folds}-fold cross-validation (folds {params.get(VAL_FINGERPRINT, '?')}): out-of-fold score"
        served = f"an ensemble of the {folds} fold models, probabilities averaged"
    else:
        evaluated = f"one validation split ({params.get('data_val_studies', '?')} studies): score"
        served = "one model"
    score, prior, limit = metrics.get("val_competition_score"), metrics.get("val_prior_score"), metrics.get("val_limit")
    figures = f"{evaluated} **{score:.4f}** beside the prior baseline's {prior:.4f}" if score is not None else evaluated
    if limit is not None:
        figures += (
            f" and the limit {limit:.4f} ({100 * metrics['val_share_of_attainable_gain']:.1f} % of the attainable gain)"
        )
    temperatures = {key.removeprefix("temperature_"): v for key, v in metrics.items() if key.startswith("temperature_")}
    calibrated = ", ".join(f"{group} {t:.2f}" for group, t in sorted(temperatures.items())) or "none"
    return "\n".join([
        f"**{name} v{version}**: {params.get(MODEL_SUMMARY, params.get('model_family', '?'))}; {served}.",
        "",
        f"- Data: `{params.get('data_dir', '?')}`, {params.get('data_train_points', '?')} training points.",
        f"- Evaluation: {figures} (competition metric, lower is better).",
        f"- Calibration: temperature per condition group {calibrated}"
        + (" (fitted out of fold)" if folds else " (fitted on the validation studies: its score is optimistic)"),
        f"- Localiser: {run.data.tags.get(LOCALISER_TAG, 'none (the coordinate prior places test-time points)')}.",
        f"- MLflow run `{run.info.run_id}`.",
        "",
        f"Call it: `spine predict DATA --model models:/{name}/{version}`, or `mlflow models serve -m "
        f"models:/{name}/{version}` and POST image references (study_id, series_id, instance_number, "
        "image_path, series_description) to /invocations: 25 rows per study come back.",
    ])  # fmt: skip


def alias_run_id(alias: str, name: str = MODEL_NAME, tracking_uri: str | None = None) -> str | None:
    """The run behind a registered model's alias, or None when the alias (or model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client(tracking_uri).get_model_version_by_alias(name, alias).run_id
    except MlflowException:
        return None


def current_champion(ranked: pd.DataFrame, name: str = MODEL_NAME, tracking_uri: str | None = None) -> pd.Series | None:
    """The run behind the `champion` alias as a ranked row (read from MLflow when it is not ranked, e.g.
    in another experiment), or None when there is no champion yet."""
    champion_id = alias_run_id(CHAMPION, name, tracking_uri)
    if champion_id is None:
        return None
    match = ranked[ranked["run_id"] == champion_id] if not ranked.empty else ranked
    return match.iloc[0] if not match.empty else pd.Series(_record(client(tracking_uri).get_run(champion_id)))


def run_record(run_id: str, tracking_uri: str | None = None) -> dict:
    """The run folder's record (run.json: data folder, settings, study split) that a run logged."""
    with tempfile.TemporaryDirectory() as scratch:
        path = client(tracking_uri).download_artifacts(run_id, "run/run.json", scratch)
        return json.loads(Path(path).read_text())


def rebase_target(
    ranked: pd.DataFrame, name: str = MODEL_NAME, tracking_uri: str | None = None
) -> tuple[pd.Series, pd.Series] | None:
    """(champion, candidate): the champion and the best servable run validated on other studies than
    its own, whose scores only compare once the champion is re-scored on the candidate's studies;
    None when there is no champion or no such run."""
    ranked = servable(ranked)
    champion = current_champion(ranked, name, tracking_uri)
    target = rebase_candidate(ranked, champion)
    return None if target is None else (champion, target)


def update_aliases(
    ranked: pd.DataFrame,
    name: str = MODEL_NAME,
    tracking_uri: str | None = None,
    margin: float = 0.0,
    rebased: Rebased | None = None,
) -> Decision | None:
    """Register the candidate and the newest servable run; `challenger` -> newest, `champion` ->
    the candidate if it wins: it beats its own prior baseline by more than `margin`, and the
    champion (see compare.decide).

    The candidate is the best run validated on the champion's own studies (the best overall when
    none is, or there is no champion), so that a run which beats the champion where the scores
    compare is promoted even when a run on other studies ranks above it. The decision and both
    scores are written as tags on the candidate's model version. None when no ranked run has a
    serving model.

    When no run on the champion's studies wins but a run validated on other studies exists, the
    decision names it and the way forward (`spine compare --rebase`). `rebased`: the champion's score
    on that run's validation studies (see `rebase_target`); that run is then weighed against it.
    """
    ranked = servable(ranked)
    if ranked.empty:
        return None
    mlflow_client = client(tracking_uri)
    champion = current_champion(ranked, name, tracking_uri)
    best = candidate(ranked, champion)
    decision = decide(best, champion, margin=margin)
    target = rebase_candidate(ranked, champion)
    rebasing = False
    if not decision.promote and target is not None:
        rebasing = (
            rebased is not None
            and rebased.champion_run_id == champion["run_id"]
            and rebased.fingerprint == target.get(VAL_FINGERPRINT)
        )
        if rebasing:
            best = target
            decision = decide(best, rebased_champion(champion, rebased), margin=margin)
            decision.reason += f"; {rebased.note()}"
        elif best["run_id"] != target["run_id"]:
            decision.reason += (
                f"; run {target['run_id']} ({float(target[SCORE]):.4f}) was validated on other studies, whose "
                "scores do not compare: `spine compare --rebase` re-scores the champion on them"
            )
    newest = ranked.sort_values("start_time").iloc[-1]
    best_version = register_version(best["run_id"], best["serving_model_uri"], name, tracking_uri)
    newest_version = register_version(newest["run_id"], newest["serving_model_uri"], name, tracking_uri)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, newest_version)
    if decision.promote:
        mlflow_client.set_registered_model_alias(name, CHAMPION, best_version)
    for key, value in {
        "champion_decision": decision.describe(),
        "candidate_score": decision.candidate_score,
        "champion_score_before": decision.champion_score,
        "champion_rebased_on": rebased.fingerprint if rebasing else None,
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
    artifacts = mlflow_client.list_artifacts(version.run_id, WEIGHTS_ARTIFACTS)
    logged = [item.path for item in artifacts if item.path.endswith(".pt")]
    if not logged:
        raise ValueError(f"localiser {uri} (run {version.run_id}) logged no weights/*.pt checkpoint")
    path = mlflow_client.download_artifacts(version.run_id, logged[0], str(dest))
    return Path(path), version.run_id, f"models:/{name}/{version.version}"
