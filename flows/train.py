"""`train_pipeline` (ingest -> volume store -> prepare run -> train -> evaluate -> log), `train_on_gpu`
and `train_localiser`.

The classifier trains in `train_on_gpu`, the localiser (stage 1, when one is trained) in
`train_localiser`: in-process one after the other (dispatch="local"), or at the same time on GPU
work pool workers through the `spine-train-gpu` and `spine-localiser-gpu` deployments
(dispatch="work-pool"); the parent waits for both and then logs the serving model, which carries
the localiser. Parent and children exchange paths (the run folder and the volume store, which all
must see) and MLflow run ids; within each process, tasks hand each other objects.
"""

from __future__ import annotations

import datetime as dt
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelled, State

from flows.compare import compare_models
from flows.config import PipelineConfig, TrainRequest
from flows.dispatch import Job, run_on_pool
from flows.guard import Guard, guarding, mark_stopped
from spine_model import tracking
from spine_model.core import interrupts
from spine_model.core.catalog import RunFolder, Workspace, resume_command, resume_folder
from spine_model.core.interrupts import is_interrupt
from spine_model.evaluation.compare import MODEL_SUMMARY
from spine_model.families import get_family
from spine_model.pipeline.evaluate import read_metrics
from spine_model.pipeline.publish import read_model_uris, study_assignment
from spine_model.pipeline.run import PipelineRun, RunData, RunInputs
from spine_model.tracking.registry import LOCALISER_TAG
from tasks.data import ingest, preflight_task, prepare_run_task, read_tables_task, validate_task, volume_store
from tasks.registry import fetch_localiser_task, localiser_version_task, register_localiser_task
from tasks.reporting import publish_summary_task
from tasks.tracking import (
    end_run_task,
    log_lineage_task,
    log_metrics_task,
    log_params_task,
    log_results_task,
    log_serving_task,
    set_tags_task,
    start_run_task,
)
from tasks.training import TrainingWatch, evaluate_localiser_task, evaluate_task, load_run_task, train_task


@flow(name="train-on-gpu", log_prints=True)
def train_on_gpu(request: TrainRequest) -> dict[str, float]:
    """Train and evaluate the classifier on this machine's device, logging into the parent's MLflow run."""
    with _child_run(request):
        run = load_run_task(request.run_dir)
        if (stopped := _train(request, run)) is not None:
            return stopped  # asked to stop: the flow run ends Cancelled
        metrics = evaluate_task(run)
        log_results_task(request.mlflow_run_id, run, request.tracking_uri)
    return metrics


@flow(name="train-localiser", log_prints=True)
def train_localiser(request: TrainRequest) -> dict[str, float]:
    """Train and evaluate the localiser on this machine's device (its own MLflow run, nested in the
    pipeline's), and register it as spine-localiser."""
    with _child_run(request):
        run = load_run_task(request.run_dir)
        if (stopped := _train(request, run)) is not None:
            return stopped  # asked to stop: the flow run ends Cancelled
        metrics = evaluate_localiser_task(run)
        uris = log_results_task(request.mlflow_run_id, run, request.tracking_uri)
        register_localiser_task(request.mlflow_run_id, uris["model_uri"], request.tracking_uri)
    return metrics


@contextmanager
def _child_run(request: TrainRequest) -> Iterator[None]:
    """Tag the MLflow run with this flow run; on a worker, guard this process (flows/guard.py); when
    stopped from outside, mark the MLflow run KILLED with the epoch reached."""
    tags = {"prefect.train_flow_run_id": flow_run.id, "prefect.train_deployment": deployment.name or "in-process"}
    set_tags_task(request.mlflow_run_id, tags, request.tracking_uri)
    runs = {request.mlflow_run_id: request.run_dir}
    with guarding(flow_run.id, runs, request.tracking_uri, request.run_dir):
        try:
            yield
        except BaseException as error:
            if is_interrupt(error):
                line = mark_stopped(request.mlflow_run_id, request.run_dir, request.tracking_uri, _how(error))
                get_run_logger().warning("%s", line)
            raise


STOP_REQUESTED = "asked to stop: its STOP file"


def _train(request: TrainRequest, run: RunInputs) -> State | None:
    """Train the request's run folder (a failure raises). Asked to stop (a sweep pruned it, or a
    person): its MLflow run KILLED with the epoch reached; returns the Cancelled state, with why,
    that the child flow run ends in."""
    trained = train_task(run, request.mlflow_run_id, request.tracking_uri, request.resume, return_state=True)
    if not trained.is_cancelled():
        trained.result()
        return None
    line = mark_stopped(request.mlflow_run_id, request.run_dir, request.tracking_uri, STOP_REQUESTED)
    get_run_logger().info("%s (%s)", line, trained.message)
    return Cancelled(message=line)


def _stop_requests(pipeline: PipelineRun) -> list[tuple[str, str]]:
    """(MLflow run id, run folder) of the pipeline's runs whose folder holds a STOP file."""
    runs = pipeline.mlflow_runs()
    return [(run_id, run_dir) for run_id, run_dir in runs if RunFolder(run_dir).stop_request.is_file()]


def _cancelled(pipeline: PipelineRun) -> State:
    """A pipeline run stopped on request: the MLflow runs asked to stop KILLED with the epoch reached
    (the others still running too: their pipeline stopped), the flow run Cancelled with why;
    `--resume` goes on with it."""
    asked = _stop_requests(pipeline)
    for run_id, run_dir in pipeline.mlflow_runs():
        if (run_id, run_dir) not in asked:
            mark_stopped(run_id, run_dir, pipeline.tracking_uri, "its pipeline was asked to stop")
    lines = [mark_stopped(run_id, run_dir, pipeline.tracking_uri, STOP_REQUESTED) for run_id, run_dir in asked]
    for line in lines:
        get_run_logger().info("%s", line)
    return Cancelled(message="; ".join(lines))


def _dispatch_to_work_pool(jobs: list[tuple[str, TrainRequest, str]], config: PipelineConfig) -> dict[str, str]:
    """Start every (label, request, deployment) on the work pool at once and wait for all, showing their
    epochs on this flow run (see flows/dispatch.py). Returns a link to each child flow run, by label."""
    watch = TrainingWatch({label: request.run_dir for label, request, _ in jobs})  # before any child writes
    runs = [
        Job(label, deployment_name, {"request": request.model_dump()}, f"{resume_folder(request.run_dir).name}-{label}")
        for label, request, deployment_name in jobs
    ]
    return run_on_pool(runs, config.dispatch_timeout_s, on_poll=watch.poll)


def _run_name(config: PipelineConfig) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return config.run_name or f"{stamp}-{flow_run.name or 'local'}"


@flow(name="train-pipeline", log_prints=True)
def train_pipeline(config: PipelineConfig = PipelineConfig()) -> dict[str, float | str]:
    """Ingest the Kaggle data, build the volume store, split by study, train the model family, evaluate, log.

    With `config.resume` (a run folder), go on with that interrupted run instead: its training from
    the last saved epoch, in its own MLflow run(s), then everything after training.
    """
    if config.resume:
        return _resume(config.resume)
    run_name = _run_name(config)
    run_dir = Workspace(config.workdir).run(run_name).root
    tracking_uri = tracking.resolve_tracking_uri(config.tracking_uri)
    preflight_task(config.data_dir, config.workdir, tracking_uri)
    nested = {"mlflow.parentRunId": config.parent_run_id} if config.parent_run_id else {}
    run_id = start_run_task(config.experiment, run_name, {**_prefect_tags(), **nested}, tracking_uri)
    mode = config.localiser_mode()
    pipeline = PipelineRun(config, str(run_dir), run_id, tracking_uri, mode)
    with guarding(flow_run.id, {run_id: str(run_dir)}, tracking_uri, run_dir) as guard:
        try:
            _prepare_and_train(pipeline, guard)
        except BaseException as error:
            if (stopped := _record_end(pipeline, error)) is not None:
                return stopped  # asked to stop: the flow run ends Cancelled
            raise
    _compare_after(pipeline)
    return pipeline.result


def _prepare_and_train(pipeline: PipelineRun, guard: Guard) -> None:
    """Everything of a new pipeline run after its MLflow run exists: data, run folder, training."""
    config, run_id, tracking_uri, mode = pipeline.config, pipeline.run_id, pipeline.tracking_uri, pipeline.mode
    logger = get_run_logger()
    workspace = Workspace(config.workdir)
    cache = workspace.dataset(config.data_dir)
    run_dir, run_name = Path(pipeline.run_dir), Path(pipeline.run_dir).name
    if config.validate_first:
        log_metrics_task(run_id, validate_task(config.data_dir, config.preprocess_workers), tracking_uri)
    ingested = ingest(config.data_dir, str(cache.root))
    logger.info("ingest: %s", ingested.summary)
    tables = read_tables_task(ingested)
    store = volume_store(
        config.data_dir, "train", str(cache.volume_store("train", config.store_size)), config.store_size,
        config.preprocess_workers, table=tables[0],
    )  # fmt: skip
    localiser_config = config.localiser_config() if mode == "train" else None
    data = RunData(config.data_dir, ingested, *tables, store)
    prepared = prepare_run_task(data, config.train_config(), str(run_dir), localiser_config)
    # The settings left unset say so: their values are the family's defaults (TrainConfig).
    family_defaults = ", ".join(config.family_defaults) or "none"
    params = {**config.model_dump(), **prepared.facts, "localiser_mode": mode, "family_defaults": family_defaults}
    log_params_task(run_id, params, tracking_uri)
    log_lineage_task(run_id, config.data_dir, tables[0], *study_assignment(split=prepared.record.split), tracking_uri)

    if mode == "reuse":  # before any training: a missing localiser fails the run at once
        pipeline.localiser_checkpoint, localiser_model = fetch_localiser_task(
            config.localiser_uri, str(prepared.folder.localiser.checkpoints), tracking_uri
        )
        set_tags_task(run_id, {LOCALISER_TAG: localiser_model}, tracking_uri)
    if mode == "train":
        localiser_tags = {**_prefect_tags(), "mlflow.parentRunId": run_id}
        pipeline.localiser_run_id = start_run_task(
            config.experiment, f"{run_name}-localiser", localiser_tags, tracking_uri
        )
        guard.watch(pipeline.localiser_run_id, prepared.folder.localiser.root)
        log_params_task(
            pipeline.localiser_run_id,
            {
                **localiser_config.model_dump(),
                **prepared.facts,
                MODEL_SUMMARY: get_family("localiser").describe(localiser_config),
            },
            tracking_uri,
        )
    pipeline.save()
    pipeline.result = _train_and_finish(pipeline, prepared.inputs(), resume=False)


def _resume(run_dir: str) -> dict[str, float | str]:
    """Go on with an interrupted pipeline run: reopen its MLflow run(s), train from the last saved
    epoch, then everything after training, as the run would have."""
    pipeline = PipelineRun.load(run_dir, PipelineConfig)
    logger = get_run_logger()
    for run_id in (pipeline.run_id, pipeline.localiser_run_id):
        if run_id is not None:
            tracking.reopen_run(run_id, pipeline.tracking_uri)
            set_tags_task(run_id, {"resumed_by_flow_run": flow_run.id}, pipeline.tracking_uri)
    logger.info("resuming run folder %s (MLflow run %s)", pipeline.run_dir, pipeline.run_id)
    with guarding(flow_run.id, dict(pipeline.mlflow_runs()), pipeline.tracking_uri, pipeline.run_dir):
        try:
            pipeline.result = _train_and_finish(pipeline, load_run_task(pipeline.run_dir), resume=True)
        except BaseException as error:
            if (stopped := _record_end(pipeline, error)) is not None:
                return stopped  # asked to stop: the flow run ends Cancelled
            raise
    _compare_after(pipeline)
    return pipeline.result


def _record_end(pipeline: PipelineRun, error: BaseException) -> State | None:
    """A run that did not finish: asked to stop (a STOP file in a run folder: its MLflow runs KILLED
    with the epoch reached; returns the Cancelled state the flow ends in), stopped from outside
    (KILLED, with the epoch reached and how to resume, said in the log and on the exception), or
    failed (FAILED, unless a child that was stopped already marked it KILLED). None: the flow
    re-raises. Plain calls, not tasks: they run while the flow fails."""
    if is_interrupt(error):
        for run_id, run_dir in pipeline.mlflow_runs():
            get_run_logger().warning("%s", mark_stopped(run_id, run_dir, pipeline.tracking_uri, _how(error)))
        interrupts.note_resume(resume_command(pipeline.run_dir))
        return None
    if _stop_requests(pipeline):
        return _cancelled(pipeline)
    for run_id, _ in pipeline.mlflow_runs():
        if tracking.run_status(run_id, pipeline.tracking_uri) != "KILLED":
            end_run_task.fn(run_id, "FAILED", pipeline.tracking_uri)
    return None


def _how(error: BaseException) -> str:
    """How a run was stopped from outside, in a few words."""
    signum = getattr(error, "signum", None) or getattr(error, "signal", None)  # ours, or Prefect's TerminationSignal
    return f"{signal.Signals(signum).name} received" if signum else type(error).__name__


def _prefect_tags() -> dict[str, str]:
    return {
        "prefect.flow_run_id": flow_run.id, "prefect.flow_run_name": flow_run.name,
        "prefect.deployment": deployment.name or "none", "prefect.ui_link": flow_run.ui_url or "",
    }  # fmt: skip


def _train_and_finish(pipeline: PipelineRun, inputs: RunInputs, resume: bool) -> dict[str, float | str]:
    """The training flow runs (and the localiser's), then the serving model, the summary, the end of
    the MLflow run and the comparison."""
    config, run_dir, run_id, tracking_uri = pipeline.config, pipeline.run_dir, pipeline.run_id, pipeline.tracking_uri
    folder = RunFolder(run_dir)
    # (label, request, in-process flow, deployment) of each training job
    request = TrainRequest(run_dir=run_dir, mlflow_run_id=run_id, tracking_uri=tracking_uri, resume=resume)
    jobs = [("classifier", request, train_on_gpu, config.gpu_deployment)]
    if pipeline.mode == "train":
        request = TrainRequest(
            run_dir=str(folder.localiser.root), mlflow_run_id=pipeline.localiser_run_id, tracking_uri=tracking_uri,
            resume=resume,
        )  # fmt: skip
        jobs.append(("localiser", request, train_localiser, config.localiser_deployment))
    children = {}
    if config.dispatch == "local":
        for _, request, child, _ in jobs:
            child(request)
    else:
        children = _dispatch_to_work_pool([(label, request, name) for label, request, _, name in jobs], config)

    localiser_checkpoint = pipeline.localiser_checkpoint
    if pipeline.mode == "train":
        localiser_checkpoint = str(folder.localiser.weights(config.localiser_config().restore_best))
        end_run_task(pipeline.localiser_run_id, "FINISHED", tracking_uri)
        version = localiser_version_task(pipeline.localiser_run_id, tracking_uri)
        set_tags_task(run_id, {LOCALISER_TAG: version}, tracking_uri)
    log_serving_task(run_id, inputs, localiser_checkpoint, tracking_uri)

    metrics = read_metrics(run_dir)
    publish_summary_task(
        run_dir, tracking.run_link(run_id, tracking_uri), read_model_uris(run_dir),
        str(folder.localiser.root) if pipeline.mode == "train" else None, children,
    )  # fmt: skip
    end_run_task(run_id, "FINISHED", tracking_uri)
    return {**metrics, "mlflow_run_id": run_id, "run_dir": run_dir}


def _compare_after(pipeline: PipelineRun) -> None:
    """After the run is FINISHED (so that it takes part in the ranking), outside the run's own try."""
    if pipeline.config.compare_after:
        config = pipeline.config
        margin = config.champion_margin
        compare_models(config.experiment, pipeline.tracking_uri, config.model_name, champion_margin=margin)
