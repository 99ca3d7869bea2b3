"""`cross-validate`: K folds by study, each trained as `spine train` trains, scored out of fold,
calibrated, and served as one ensemble.

The data steps run once (ingest, volume store); the folds are K run folders of one CV folder.
Each fold trains in `train_on_gpu` (in turn in this process with dispatch="local", or as K child
flow runs of the gpu pool at once with dispatch="work-pool", as many at a time as the pool's
concurrency limit allows) and logs into its own MLflow run, nested in the CV's parent run; one
localiser serves all folds. Then the out-of-fold predictions are scored (beside the prior and, on
synthetic data, the limit), a temperature per condition group is fitted on them, and the ensemble
of the fold models (probabilities averaged, calibrated, points placed by the localiser) is logged
as the parent run's serving model, which `compare-models` ranks on the out-of-fold score.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.config import CVConfig, TrainRequest
from flows.guard import guarding
from flows.train import (
    _compare_after,
    _dispatch_to_work_pool,
    _prefect_tags,
    _record_end,
    _run_name,
    train_localiser,
    train_on_gpu,
)
from spine_model import tracking
from spine_model.core.catalog import CVFolder, Workspace
from spine_model.evaluation.compare import MODEL_SUMMARY
from spine_model.families import get_family
from spine_model.pipeline.publish import read_model_uris, study_assignment
from spine_model.pipeline.run import PipelineRun, RunData, RunInputs, read_folds
from spine_model.tracking.registry import LOCALISER_TAG
from tasks.cv import log_cv_task, prepare_cv_task, publish_cv_summary_task, summarise_cv_task
from tasks.data import ingest, preflight_task, read_tables_task, validate_task, volume_store
from tasks.registry import localiser_version_task
from tasks.tracking import (
    end_run_task,
    log_lineage_task,
    log_metrics_task,
    log_params_task,
    log_serving_task,
    set_tags_task,
    start_run_task,
)


@flow(name="cross-validate", log_prints=True)
def cross_validate(config: CVConfig = CVConfig()) -> dict[str, float | str]:
    """Train the configuration once per fold, score it out of fold, calibrate it, serve the ensemble.

    With `config.resume` (a CV folder), go on with that interrupted cross-validation instead: the
    folds that finished are kept, the others go on from their last saved epoch.
    """
    if config.resume:
        return _resume(config.resume)
    run_name = _run_name(config)
    cv_dir = str(Workspace(config.workdir).cross_validation(run_name).root)
    tracking_uri = tracking.resolve_tracking_uri(config.tracking_uri)
    preflight_task(config.data_dir, config.workdir, tracking_uri)
    run_id = start_run_task(config.experiment, run_name, _prefect_tags(), tracking_uri)
    pipeline = PipelineRun(config, cv_dir, run_id, tracking_uri, config.localiser_mode())
    with guarding(flow_run.id, {run_id: cv_dir}, tracking_uri, cv_dir) as guard:
        try:
            _prepare(pipeline, guard)
            pipeline.result = _train_folds_and_finish(pipeline)
        except BaseException as error:
            if (stopped := _record_end(pipeline, error)) is not None:
                return stopped  # asked to stop: the flow run ends Cancelled
            raise
    _compare_after(pipeline)
    return pipeline.result


def _prepare(pipeline: PipelineRun, guard) -> None:
    """The data steps once, the fold folders, the parent's params and lineage, a nested run per fold."""
    config, run_id, tracking_uri = pipeline.config, pipeline.run_id, pipeline.tracking_uri
    if pipeline.mode == "reuse":
        raise ValueError("cross-validation trains its own localiser (localiser='train' or 'auto') or none ('off')")
    cache = Workspace(config.workdir).dataset(config.data_dir)
    if config.validate_first:
        log_metrics_task(run_id, validate_task(config.data_dir, config.preprocess_workers), tracking_uri)
    ingested = ingest(config.data_dir, str(cache.root))
    tables = read_tables_task(ingested)
    store = volume_store(
        config.data_dir, "train", str(cache.volume_store("train", config.store_size)), config.store_size,
        config.preprocess_workers, table=tables[0],
    )  # fmt: skip
    localiser_config = config.localiser_config() if pipeline.mode == "train" else None
    data = RunData(config.data_dir, ingested, *tables, store)
    prepared = prepare_cv_task(data, config.train_config(), pipeline.run_dir, config.folds, localiser_config)
    params = {**config.model_dump(), **prepared.facts, "localiser_mode": pipeline.mode}
    log_params_task(run_id, params, tracking_uri)
    log_lineage_task(run_id, config.data_dir, tables[0], *study_assignment(folds=prepared.folds), tracking_uri)
    nested = {**_prefect_tags(), "mlflow.parentRunId": run_id}
    for fold, run in enumerate(prepared.runs):
        fold_run_id = start_run_task(config.experiment, f"{CVFolder(pipeline.run_dir).name}-fold-{fold}",
                                     {**nested, "cv_fold": str(fold)}, tracking_uri)  # fmt: skip
        split = run.record.split
        facts = {"cv_fold": fold, "data_train_studies": len(split.train_study_ids),
                 "data_val_studies": len(split.val_study_ids), MODEL_SUMMARY: params[MODEL_SUMMARY]}  # fmt: skip
        log_params_task(fold_run_id, {**config.train_config().model_dump(), **facts}, tracking_uri)
        guard.watch(fold_run_id, run.folder.root)
        pipeline.fold_run_ids.append(fold_run_id)
    if prepared.localiser is not None:
        pipeline.localiser_run_id = start_run_task(
            config.experiment, f"{CVFolder(pipeline.run_dir).name}-localiser", nested, tracking_uri
        )
        describe = get_family("localiser").describe(localiser_config)
        log_params_task(pipeline.localiser_run_id, {**localiser_config.model_dump(), MODEL_SUMMARY: describe},
                        tracking_uri)  # fmt: skip
        guard.watch(pipeline.localiser_run_id, prepared.localiser.folder.root)
    pipeline.save()


def _resume(cv_dir: str) -> dict[str, float | str]:
    """Go on with an interrupted cross-validation: reopen its runs, keep the folds that finished."""
    pipeline = PipelineRun.load(cv_dir, CVConfig)
    for run_id, _ in pipeline.mlflow_runs():
        if tracking.run_status(run_id, pipeline.tracking_uri) != "FINISHED":
            tracking.reopen_run(run_id, pipeline.tracking_uri)
    get_run_logger().info("resuming cross-validation %s (MLflow run %s)", pipeline.run_dir, pipeline.run_id)
    with guarding(flow_run.id, dict(pipeline.mlflow_runs()), pipeline.tracking_uri, pipeline.run_dir):
        try:
            pipeline.result = _train_folds_and_finish(pipeline, resume=True)
        except BaseException as error:
            if (stopped := _record_end(pipeline, error)) is not None:
                return stopped  # asked to stop: the flow run ends Cancelled
            raise
    _compare_after(pipeline)
    return pipeline.result


def _jobs(pipeline: PipelineRun, resume: bool) -> list[tuple[str, TrainRequest, object, str]]:
    """(label, request, in-process flow, deployment) of every fold (and the localiser) not finished yet."""
    config, folder, uri = pipeline.config, CVFolder(pipeline.run_dir), pipeline.tracking_uri
    runs = [(f"fold-{k}", run_id, folder.fold(k), train_on_gpu, config.gpu_deployment)
            for k, run_id in enumerate(pipeline.fold_run_ids)]  # fmt: skip
    if pipeline.localiser_run_id:
        runs.append(("localiser", pipeline.localiser_run_id, folder.localiser, train_localiser,
                     config.localiser_deployment))  # fmt: skip
    jobs = []
    for label, run_id, run_folder, child, deployment_name in runs:
        if "model_uri" in read_model_uris(run_folder.root):
            continue  # trained, evaluated and logged before a stop: kept
        request = TrainRequest(run_dir=str(run_folder.root), mlflow_run_id=run_id, tracking_uri=uri, resume=resume)
        jobs.append((label, request, child, deployment_name))
    return jobs


def _train_folds_and_finish(pipeline: PipelineRun, resume: bool = False) -> dict[str, float | str]:
    """The folds' (and the localiser's) flow runs, then the out-of-fold summary, the ensemble served by
    the parent run, the Prefect summary and the end of the runs."""
    config, cv_dir, run_id, uri = pipeline.config, pipeline.run_dir, pipeline.run_id, pipeline.tracking_uri
    folder, jobs = CVFolder(cv_dir), _jobs(pipeline, resume)
    children = {label: "in this process" for label, *_ in jobs}
    if config.dispatch == "local":
        for _, request, child, _ in jobs:
            child(request)
            end_run_task(request.mlflow_run_id, "FINISHED", uri)
    elif jobs:
        children = _dispatch_to_work_pool([(label, request, name) for label, request, _, name in jobs], config)
        for _, request, _, _ in jobs:
            end_run_task(request.mlflow_run_id, "FINISHED", uri)
    localiser_checkpoint = None
    if pipeline.localiser_run_id:
        localiser_checkpoint = str(folder.localiser.weights(config.localiser_config().restore_best))
        set_tags_task(run_id, {LOCALISER_TAG: localiser_version_task(pipeline.localiser_run_id, uri)}, uri)
    first = RunInputs.load(folder.fold(0).root)
    summary = summarise_cv_task(cv_dir, first.labels, config.data_dir)
    metrics = summary.metrics()
    log_cv_task(run_id, cv_dir, metrics, uri)
    folds = read_folds(cv_dir)
    members = [str(folder.fold(k).weights(config.restore_best)) for k in range(folds.count)]
    log_serving_task(run_id, first, localiser_checkpoint, uri, members, summary.temperatures, cv_dir)
    publish_cv_summary_task(cv_dir, summary, tracking.run_link(run_id, uri), children)
    end_run_task(run_id, "FINISHED", uri)
    return {**metrics, "mlflow_run_id": run_id, "run_dir": cv_dir}
