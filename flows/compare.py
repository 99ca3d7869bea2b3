"""`compare-models`: rank an experiment's runs, register the best, move `champion` only on a win."""

from __future__ import annotations

from prefect import flow

from spine_model import tracking
from spine_model.tracking.registry import MODEL_NAME
from tasks.registry import publish_comparison_task, rank_runs_task, update_aliases_task


@flow(name="compare-models", log_prints=True)
def compare_models(
    experiment: str = tracking.DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
    model_name: str = MODEL_NAME,
    update_registry: bool = True,
    champion_margin: float = 0.0,
) -> dict:
    """Rank the experiment's finished runs by validation competition score (lower is better).

    With `update_registry`, the best run's serving model is registered as `model_name`; the alias
    `champion` moves to it only when it beats the current champion on the same validation
    studies, and beats its own prior baseline by more than `champion_margin` (a run that does not
    stays `challenger`, and its version's `champion_decision` tag says why); `challenger` always
    points at the newest run.
    """
    uri = tracking.resolve_tracking_uri(tracking_uri)
    ranked = rank_runs_task(experiment, uri)
    publish_comparison_task(ranked, experiment)
    result: dict = {"ranked": ranked, "decision": None}
    if update_registry and not ranked.empty:
        result["decision"] = update_aliases_task(ranked, model_name, uri, champion_margin)
    return result
