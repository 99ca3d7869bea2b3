"""`compare-models`: rank an experiment's runs, register the best, move `champion` only on a win."""

from __future__ import annotations

from prefect import flow

from spine_model import tracking
from spine_model.core.catalog import DEFAULT_WORKDIR, MODEL_NAME, Workspace
from spine_model.evaluation.compare import Rebased
from tasks.data import volume_store
from tasks.predict import store_size_task
from tasks.registry import (
    publish_comparison_task,
    rank_runs_task,
    rebase_inputs,
    rebase_target_task,
    rescore_task,
    update_aliases_task,
)


@flow(name="compare-models", log_prints=True)
def compare_models(
    experiment: str = tracking.DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
    model_name: str = MODEL_NAME,
    update_registry: bool = True,
    champion_margin: float = 0.0,
    rebase: bool = False,
    data_dir: str | None = None,
    workdir: str = str(DEFAULT_WORKDIR),
) -> dict:
    """Rank the experiment's finished runs by validation competition score (lower is better).

    With `update_registry`, the best run's serving model is registered as `model_name`; the alias
    `champion` moves to it only when it beats the current champion on the same validation
    studies, and beats its own prior baseline by more than `champion_margin` (a run that does not
    stays `challenger`, and its version's `champion_decision` tag says why); `challenger` always
    points at the newest run.

    `rebase`: when the best run was validated on other studies than the champion (new data, another
    `split_seed`), re-score the champion on that run's validation studies (their labelled points,
    from `data_dir`, by default the folder that run trained on; volume store under `workdir`) and
    decide on that score. The champion may have trained on some of those studies, which favours it:
    a promotion on a rebase is, if anything, conservative.
    """
    uri = tracking.resolve_tracking_uri(tracking_uri)
    ranked = rank_runs_task(experiment, uri)
    publish_comparison_task(ranked, experiment)
    result: dict = {"ranked": ranked, "decision": None, "rebased": None}
    if update_registry and not ranked.empty:
        if rebase:
            result["rebased"] = _rescore_champion(ranked, model_name, uri, data_dir, workdir)
        result["decision"] = update_aliases_task(ranked, model_name, uri, champion_margin, result["rebased"])
    return result


def _rescore_champion(ranked, model_name: str, uri: str, data_dir: str | None, workdir: str) -> Rebased | None:
    """The champion's score on the best run's validation studies, when they are not the champion's."""
    target = rebase_target_task(ranked, model_name, uri)
    if target is None:
        return None
    if data_dir is not None:
        target["data_dir"] = str(data_dir)
    frame, series = rebase_inputs(target["data_dir"], target["val_study_ids"])
    size = store_size_task(target["champion_model_uri"], uri)
    store_root = Workspace(workdir).dataset(target["data_dir"]).volume_store("train", size)
    store = volume_store(target["data_dir"], "train", str(store_root), size, table=series)
    return rescore_task(target, frame, str(store.root), uri)
