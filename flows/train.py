"""`train_pipeline` (ingest -> volume store -> prepare run -> train -> evaluate -> log) and `train_on_gpu`.

Training and evaluation live in `train_on_gpu`, which runs in-process (dispatch="local") or on a
GPU work pool's worker through the `spine-train-gpu` deployment (dispatch="work-pool"). Parent and
child exchange paths (the run folder and the volume store, which both must see) and the MLflow run
id; within each process, tasks hand each other objects.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment, flow_run
from prefect.settings import PREFECT_API_URL

from flows.compare import compare_models
from flows.config import PipelineConfig, TrainRequest
from spine_model import tracking
from spine_model.catalog import Workspace
from spine_model.steps import read_metrics, read_model_uris
from tasks.data import ingest, prepare_run_task, read_tables_task, volume_store
from tasks.reporting import publish_summary_task
from tasks.tracking import end_run_task, log_params_task, log_results_task, set_tags_task, start_run_task
from tasks.training import evaluate_task, load_run_task, train_task


@flow(name="train-on-gpu", log_prints=True)
def train_on_gpu(request: TrainRequest) -> dict[str, float]:
    """Train and evaluate on this machine's device, logging into the parent's MLflow run."""
    set_tags_task(
        request.mlflow_run_id,
        {"prefect.train_flow_run_id": flow_run.id, "prefect.train_deployment": deployment.name or "in-process"},
        request.tracking_uri,
    )
    run = load_run_task(request.run_dir)
    train_task(run, request.mlflow_run_id, request.tracking_uri)
    metrics = evaluate_task(run)
    log_results_task(request.mlflow_run_id, run, request.tracking_uri)
    return metrics


def _dispatch_to_work_pool(request: TrainRequest, config: PipelineConfig) -> None:
    """Run train_on_gpu through its deployment; fail clearly if it fails or outlasts the timeout."""
    try:
        child = run_deployment(
            config.gpu_deployment,
            parameters={"request": request.model_dump()},
            timeout=config.dispatch_timeout_s,
            flow_run_name=f"{Path(request.run_dir).name}-train",
        )
    except ObjectNotFound:
        raise RuntimeError(
            f"deployment {config.gpu_deployment!r} not found on the Prefect server at "
            f"{PREFECT_API_URL.value() or '(temporary server)'}: register the deployments of prefect.yaml "
            "with `SPINE_PROJECT_DIR=$PWD prefect --no-prompt deploy --all` (`make stack` does), "
            "or train in-process with dispatch='local'"
        ) from None
    state = child.state
    if state is None or not state.is_completed():
        status = state.name if state else "no state"
        if state is not None and not state.is_final():
            status += f", still not finished after {config.dispatch_timeout_s:.0f} s"
        raise RuntimeError(
            f"training flow run {child.name} ({child.id}) of deployment {config.gpu_deployment} "
            f"did not complete ({status}); see its logs in the Prefect UI"
        )


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
    try:
        ingested = ingest(config.data_dir, str(cache.root))
        logger.info("ingest: %s", ingested.summary)
        tables = read_tables_task(ingested)
        store = volume_store(
            config.data_dir, "train", str(cache.volume_store("train", config.store_size)), config.store_size,
            config.preprocess_workers, table=tables[0],
        )  # fmt: skip
        prepared = prepare_run_task(config.data_dir, ingested, tables, store, config.train_config(), str(run_dir))
        log_params_task(run_id, {**config.model_dump(), **prepared.facts}, tracking_uri)

        request = TrainRequest(run_dir=str(run_dir), mlflow_run_id=run_id, tracking_uri=tracking_uri)
        if config.dispatch == "local":
            train_on_gpu(request)
        else:
            _dispatch_to_work_pool(request, config)

        metrics = read_metrics(run_dir)
        publish_summary_task(str(run_dir), tracking.run_link(run_id, tracking_uri), read_model_uris(run_dir))
        end_run_task(run_id, "FINISHED", tracking_uri)
    except BaseException:
        end_run_task.fn(run_id, "FAILED", tracking_uri)  # plain call: works even while the flow fails
        raise
    if config.compare_after:  # after the run is FINISHED, so that it takes part in the ranking
        compare_models(config.experiment, tracking_uri, config.model_name)
    return {**metrics, "mlflow_run_id": run_id, "run_dir": str(run_dir)}
