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
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment, flow_run
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling

from flows.compare import compare_models
from flows.config import PipelineConfig, TrainRequest
from spine_model import tracking
from spine_model.catalog import Workspace
from spine_model.compare import MODEL_SUMMARY
from spine_model.families import get_family
from spine_model.steps import read_metrics, read_model_uris
from spine_model.tracking.registry import LOCALISER_TAG
from tasks.data import ingest, prepare_run_task, read_tables_task, volume_store
from tasks.registry import fetch_localiser_task, localiser_version_task, register_localiser_task
from tasks.reporting import publish_summary_task
from tasks.tracking import (
    end_run_task,
    log_params_task,
    log_results_task,
    log_serving_task,
    set_tags_task,
    start_run_task,
)
from tasks.training import evaluate_localiser_task, evaluate_task, load_run_task, train_task


@flow(name="train-on-gpu", log_prints=True)
def train_on_gpu(request: TrainRequest) -> dict[str, float]:
    """Train and evaluate the classifier on this machine's device, logging into the parent's MLflow run."""
    _tag_child(request)
    run = load_run_task(request.run_dir)
    train_task(run, request.mlflow_run_id, request.tracking_uri)
    metrics = evaluate_task(run)
    log_results_task(request.mlflow_run_id, run, request.tracking_uri)
    return metrics


@flow(name="train-localiser", log_prints=True)
def train_localiser(request: TrainRequest) -> dict[str, float]:
    """Train and evaluate the localiser on this machine's device (its own MLflow run, nested in the
    pipeline's), and register it as spine-localiser."""
    _tag_child(request)
    run = load_run_task(request.run_dir)
    train_task(run, request.mlflow_run_id, request.tracking_uri)
    metrics = evaluate_localiser_task(run)
    uris = log_results_task(request.mlflow_run_id, run, request.tracking_uri)
    register_localiser_task(request.mlflow_run_id, uris["model_uri"], request.tracking_uri)
    return metrics


def _tag_child(request: TrainRequest) -> None:
    tags = {"prefect.train_flow_run_id": flow_run.id, "prefect.train_deployment": deployment.name or "in-process"}
    set_tags_task(request.mlflow_run_id, tags, request.tracking_uri)


def _dispatch_to_work_pool(jobs: list[tuple[TrainRequest, str]], config: PipelineConfig) -> None:
    """Start every (request, deployment) on the work pool at once, wait for all, and fail clearly if
    any fails, is missing or outlasts the timeout."""
    children = []
    for request, deployment_name in jobs:
        try:
            children.append(
                run_deployment(
                    deployment_name,
                    parameters={"request": request.model_dump()},
                    timeout=0,
                    flow_run_name=f"{Path(request.run_dir).name}-train",
                )  # fmt: skip
            )
        except ObjectNotFound:
            _cancel(children)
            raise RuntimeError(
                f"deployment {deployment_name!r} not found on the Prefect server at "
                f"{PREFECT_API_URL.value() or '(temporary server)'}: register the deployments of prefect.yaml "
                "with `SPINE_PROJECT_DIR=$PWD prefect --no-prompt deploy --all` (`make stack` does), "
                "or train in-process with dispatch='local'"
            ) from None
    finished = _wait_for(children, config.dispatch_timeout_s)
    failures = [
        f"{run.name} ({run.id}) of deployment {deployment_name}: "
        + (run.state.name if run.state else "no state")
        + (
            ""
            if run.state is not None and run.state.is_final()
            else f", not finished after {config.dispatch_timeout_s:.0f} s"
        )
        for run, (_, deployment_name) in zip(finished, jobs, strict=True)
        if run.state is None or not run.state.is_completed()
    ]
    if failures:
        raise RuntimeError(
            f"training flow run(s) did not complete: {'; '.join(failures)}; see their logs in the Prefect UI"
        )


def _cancel(flow_runs: list) -> None:
    """Cancel flow runs already started, so that a failed dispatch leaves nothing running."""
    with get_client(sync_client=True) as client:
        for run in flow_runs:
            client.set_flow_run_state(
                run.id, Cancelling(message="another training run of the pipeline failed to start")
            )


def _wait_for(flow_runs: list, timeout_s: float, poll_s: float = 5.0) -> list:
    """The flow runs, read again until all are final or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            current = [client.read_flow_run(run.id) for run in flow_runs]
            if all(run.state is not None and run.state.is_final() for run in current) or time.monotonic() > deadline:
                return current
            time.sleep(poll_s)


def _run_name(config: PipelineConfig) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return config.run_name or f"{stamp}-{flow_run.name or 'local'}"


@flow(name="train-pipeline", log_prints=True)
def train_pipeline(config: PipelineConfig = PipelineConfig()) -> dict[str, float | str]:
    """Ingest the Kaggle data, build the volume store, split by study, train the model family, evaluate, log."""
    logger = get_run_logger()
    workspace = Workspace(config.workdir)
    cache = workspace.dataset(config.data_dir)
    run_name = _run_name(config)
    run_dir = workspace.run(run_name).root
    tracking_uri = tracking.resolve_tracking_uri(config.tracking_uri)
    prefect_tags = {
        "prefect.flow_run_id": flow_run.id, "prefect.flow_run_name": flow_run.name,
        "prefect.deployment": deployment.name or "none", "prefect.ui_link": flow_run.ui_url or "",
    }  # fmt: skip
    run_id = start_run_task(config.experiment, run_name, prefect_tags, tracking_uri)
    localiser_run_id = None
    mode = config.localiser_mode()
    try:
        ingested = ingest(config.data_dir, str(cache.root))
        logger.info("ingest: %s", ingested.summary)
        tables = read_tables_task(ingested)
        store = volume_store(
            config.data_dir, "train", str(cache.volume_store("train", config.store_size)), config.store_size,
            config.preprocess_workers, table=tables[0],
        )  # fmt: skip
        localiser_config = config.localiser_config() if mode == "train" else None
        prepared = prepare_run_task(
            config.data_dir, ingested, tables, store, config.train_config(), str(run_dir), localiser_config
        )
        params = {**config.model_dump(), **prepared.facts, "localiser_mode": mode}
        log_params_task(run_id, params, tracking_uri)

        localiser_checkpoint = None
        if mode == "reuse":  # before any training: a missing localiser fails the run at once
            localiser_checkpoint, localiser_model = fetch_localiser_task(
                config.localiser_uri, str(prepared.folder.localiser.checkpoints), tracking_uri
            )
            set_tags_task(run_id, {LOCALISER_TAG: localiser_model}, tracking_uri)
        jobs = [(TrainRequest(run_dir=str(run_dir), mlflow_run_id=run_id, tracking_uri=tracking_uri), train_on_gpu)]
        if mode == "train":
            localiser_tags = {**prefect_tags, "mlflow.parentRunId": run_id}
            localiser_run_id = start_run_task(config.experiment, f"{run_name}-localiser", localiser_tags, tracking_uri)
            log_params_task(
                localiser_run_id,
                {
                    **localiser_config.model_dump(),
                    **prepared.facts,
                    MODEL_SUMMARY: get_family("localiser").describe(localiser_config),
                },
                tracking_uri,
            )
            localiser_dir = str(prepared.folder.localiser.root)
            jobs.append(
                (
                    TrainRequest(run_dir=localiser_dir, mlflow_run_id=localiser_run_id, tracking_uri=tracking_uri),
                    train_localiser,
                )
            )
        if config.dispatch == "local":
            for request, child in jobs:
                child(request)
        else:
            deployments = {train_on_gpu: config.gpu_deployment, train_localiser: config.localiser_deployment}
            _dispatch_to_work_pool([(request, deployments[child]) for request, child in jobs], config)

        if mode == "train":
            localiser_checkpoint = str(prepared.folder.localiser.best_checkpoint)
            end_run_task(localiser_run_id, "FINISHED", tracking_uri)
            set_tags_task(run_id, {LOCALISER_TAG: localiser_version_task(localiser_run_id, tracking_uri)}, tracking_uri)
        log_serving_task(run_id, prepared.inputs(), localiser_checkpoint, tracking_uri)

        metrics = read_metrics(run_dir)
        publish_summary_task(
            str(run_dir), tracking.run_link(run_id, tracking_uri), read_model_uris(run_dir),
            str(prepared.folder.localiser.root) if mode == "train" else None,
        )  # fmt: skip
        end_run_task(run_id, "FINISHED", tracking_uri)
    except BaseException:
        for failed in (localiser_run_id, run_id):  # plain calls: they work even while the flow fails
            if failed is not None:
                end_run_task.fn(failed, "FAILED", tracking_uri)
        raise
    if config.compare_after:  # after the run is FINISHED, so that it takes part in the ranking
        compare_models(config.experiment, tracking_uri, config.model_name)
    return {**metrics, "mlflow_run_id": run_id, "run_dir": str(run_dir)}
