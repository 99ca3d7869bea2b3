"""`ensemble`: several cross-validations (other configurations, same data) served as one model.

The fold models of every cross-validation are averaged in probability space; the ensemble's
out-of-fold predictions are the mean of the runs' (each out of fold, so the mean is too), scored
beside the prior (and the limit), calibrated as one cross-validation is, and the ensemble is logged
as an MLflow run of its own whose serving model `compare-models` ranks like any run.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger

from flows.compare import compare_models
from flows.config import CVConfig
from flows.train import _prefect_tags, _run_name
from spine_model import tracking
from spine_model.core.catalog import CVFolder, Workspace
from spine_model.core.files import atomic_write_text
from spine_model.evaluation.compare import MODEL_SUMMARY, VAL_FINGERPRINT
from spine_model.pipeline.cv import ensemble_predictions, summarise
from spine_model.pipeline.publish import log_cv_outputs, log_lineage, log_serving_model, study_assignment
from spine_model.pipeline.run import PipelineRun, RunInputs, read_folds
from tasks.tracking import end_run_task, log_params_task, start_run_task


@flow(name="ensemble", log_prints=True)
def ensemble(
    cv_dirs: list[str], run_name: str | None = None, workdir: str | None = None, compare_after: bool = True
) -> dict[str, float | str]:
    """Serve the fold models of several cross-validations (`spine cv` run folders) as one model."""
    if len(cv_dirs) < 1:
        raise ValueError("name at least one cross-validation folder")
    runs = [PipelineRun.load(cv_dir, CVConfig) for cv_dir in cv_dirs]
    first = runs[0]
    config, uri = first.config, first.tracking_uri
    name = run_name or f"ensemble-{_run_name(config.model_copy(update={'run_name': None}))}"
    folder = Workspace(workdir or config.workdir).cross_validation(name)
    predictions, fingerprint = ensemble_predictions([run.run_dir for run in runs])
    folds = read_folds(first.run_dir)
    atomic_write_text(folder.folds, json.dumps({**folds.to_dict(), "fingerprint": fingerprint}, indent=2))
    members = [
        str(CVFolder(run.run_dir).fold(k).weights(run.config.restore_best))
        for run in runs
        for k in range(read_folds(run.run_dir).count)
    ]
    atomic_write_text(folder.root / "ensemble.json", json.dumps({"of": cv_dirs, "members": members}, indent=2))
    inputs = RunInputs.load(CVFolder(first.run_dir).fold(0).root)
    run_id = start_run_task(config.experiment, name, _prefect_tags(), uri)
    summaries = [tracking.client(uri).get_run(run.run_id).data.params.get(MODEL_SUMMARY, "?") for run in runs]
    params = {
        MODEL_SUMMARY: f"ensemble of {len(runs)} cross-validation(s): " + "; ".join(summaries),
        "model_family": "ensemble", "data_dir": config.data_dir, "cv_folds": folds.count,
        "ensemble_members": len(members), "ensemble_of": [run.run_id for run in runs], VAL_FINGERPRINT: fingerprint,
    }  # fmt: skip
    log_params_task(run_id, params, uri)
    log_lineage(run_id, config.data_dir, inputs.points, *study_assignment(folds=folds), uri)
    summary = summarise(predictions, inputs.labels, config.data_dir, fingerprint, folder)
    get_run_logger().info("%s", summary.describe())
    log_cv_outputs(run_id, folder.root, summary.metrics(), uri)
    localiser = CVFolder(first.run_dir).localiser
    checkpoint = localiser.best_checkpoint if localiser.best_checkpoint.is_file() else None
    log_serving_model(run_id, inputs, checkpoint, uri, [Path(m) for m in members], summary.temperatures, folder.root)
    end_run_task(run_id, "FINISHED", uri)
    if compare_after:
        compare_models(config.experiment, uri, config.model_name, champion_margin=config.champion_margin)
    return {**summary.metrics(), "mlflow_run_id": run_id, "run_dir": str(folder.root)}
