"""`train_pipeline` (ingest -> split -> preprocess -> train -> evaluate -> log) and `train_on_gpu`.

Training and evaluation live in `train_on_gpu`, which runs in-process (dispatch="local") or on a
GPU work pool's worker through the `spine-train-gpu` deployment (dispatch="work-pool"). Parent and
child exchange paths (the run folder, which both must see) and the MLflow run id, never
in-memory results.
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
from spine_model.steps import data_facts, read_metrics, read_model_uris
from spine_model.workspace import RunRecord, Workspace
from tasks.data import index_slices, ingest, preprocess_task, split
from tasks.reporting import publish_summary_task
from tasks.tracking import end_run_task, log_params_task, log_results_task, set_tags_task, start_run_task
from tasks.training import evaluate_task, priors_task, train_task


@flow(name="train-on-gpu", log_prints=True)
def train_on_gpu(request: TrainRequest) -> dict[str, float]:
    """Train and evaluate on this machine's device, logging into the parent's MLflow run."""
    set_tags_task(
        request.mlflow_run_id,
        {"prefect.train_flow_run_id": flow_run.id, "prefect.train_deployment": deployment.name or "in-process"},
        request.tracking_uri,
    )
    train_task(request.run_dir, request.mlflow_run_id, request.tracking_uri)
    metrics = evaluate_task(request.run_dir)
    log_results_task(request.mlflow_run_id, request.run_dir, request.tracking_uri)
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
    """Ingest the Kaggle data, split by study, preprocess, train SpineNet, evaluate, log to MLflow."""
    logger = get_run_logger()
    workspace = Workspace(config.workdir)
    run_name = _run_name(config)
    run_dir = workspace.run_dir(run_name)
    tracking_uri = tracking.resolve_tracking_uri(config.tracking_uri)
    prefect_tags = {
        "prefect.flow_run_id": flow_run.id, "prefect.flow_run_name": flow_run.name,
        "prefect.deployment": deployment.name or "none", "prefect.ui_link": flow_run.ui_url or "",
    }  # fmt: skip
    run_id = start_run_task(config.experiment, run_name, prefect_tags, tracking_uri)
    try:
        ingested = ingest(config.data_dir, str(workspace.dataset_dir(config.data_dir)))
        logger.info("ingest: %s", ingested.summary)
        study_split = split(ingested.table_path, config.val_fraction, config.split_seed, str(run_dir / "split.json"))
        prepared = preprocess_task(
            config.data_dir, ingested.table_path, str(workspace.image_store_root(config.data_dir, config.image_size)),
            config.image_size, str(run_dir / "train_ready.parquet"), config.preprocess_workers,
        )  # fmt: skip
        slices_path = index_slices(
            config.data_dir, ingested.table_path, str(workspace.dataset_dir(config.data_dir) / "train_slices.parquet"),
            config.preprocess_workers,
        )  # fmt: skip
        RunRecord(
            str(Path(config.data_dir).resolve()), prepared.table_path, ingested.labels_path, prepared.store_root,
            slices_path, config.train_config(), study_split,
        ).save(run_dir)  # fmt: skip
        priors_task(str(run_dir))
        log_params_task(run_id, {**config.model_dump(), **data_facts(ingested, prepared, study_split)}, tracking_uri)

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
