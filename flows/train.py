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
import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment, flow_run
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
from prefect.states import Cancelling

from flows.compare import compare_models
from flows.config import PipelineConfig, TrainRequest
from flows.guard import Guard, guarding, mark_stopped
from spine_model import interrupts, tracking
from spine_model.catalog import RunFolder, Workspace, atomic_write, resume_folder
from spine_model.compare import MODEL_SUMMARY
from spine_model.families import get_family
from spine_model.interrupts import is_interrupt
from spine_model.steps import RunInputs, read_metrics, read_model_uris
from spine_model.tracking.registry import LOCALISER_TAG
from tasks.data import ingest, preflight_task, prepare_run_task, read_tables_task, validate_task, volume_store
from tasks.registry import fetch_localiser_task, localiser_version_task, register_localiser_task
from tasks.reporting import publish_summary_task
from tasks.tracking import (
    end_run_task,
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
        train_task(run, request.mlflow_run_id, request.tracking_uri, request.resume)
        metrics = evaluate_task(run)
        log_results_task(request.mlflow_run_id, run, request.tracking_uri)
    return metrics


@flow(name="train-localiser", log_prints=True)
def train_localiser(request: TrainRequest) -> dict[str, float]:
    """Train and evaluate the localiser on this machine's device (its own MLflow run, nested in the
    pipeline's), and register it as spine-localiser."""
    with _child_run(request):
        run = load_run_task(request.run_dir)
        train_task(run, request.mlflow_run_id, request.tracking_uri, request.resume)
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


def _dispatch_to_work_pool(jobs: list[tuple[str, TrainRequest, str]], config: PipelineConfig) -> dict[str, str]:
    """Start every (label, request, deployment) on the work pool at once, wait for all (showing their epochs
    on this flow run), and fail clearly if any fails, is missing or outlasts the timeout. Returns a
    link to each child flow run, by label."""
    watch = TrainingWatch({label: request.run_dir for label, request, _ in jobs})  # before any child writes
    children = []
    for label, request, deployment_name in jobs:
        try:
            children.append(
                run_deployment(
                    deployment_name,
                    parameters={"request": request.model_dump()},
                    timeout=0,
                    flow_run_name=f"{resume_folder(request.run_dir).name}-{label}",
                )  # fmt: skip
            )
        except ObjectNotFound:
            _cancel(children, "another training run of the pipeline failed to start")
            raise RuntimeError(
                f"deployment {deployment_name!r} not found on the Prefect server at "
                f"{PREFECT_API_URL.value() or '(temporary server)'}: register the deployments of prefect.yaml "
                "with `spine stack` (or `prefect deploy` as prefect.yaml's header says), "
                "or train in-process with dispatch='local'"
            ) from None
    try:
        finished = _wait_for(children, config.dispatch_timeout_s, on_poll=watch.poll)
    except BaseException:  # this flow stops (interrupted, cancelled): the GPU runs it started stop too
        _cancel(children, "the pipeline flow run that started it was stopped")
        raise
    watch.poll()  # the last epochs
    failures = [
        f"{run.name} ({run.id}) of deployment {deployment_name}: "
        + (run.state.name if run.state else "no state")
        + (
            ""
            if run.state is not None and run.state.is_final()
            else f", not finished after {config.dispatch_timeout_s:.0f} s"
        )
        for run, (_, _, deployment_name) in zip(finished, jobs, strict=True)
        if run.state is None or not run.state.is_completed()
    ]
    if failures:
        raise RuntimeError(
            f"training flow run(s) did not complete: {'; '.join(failures)}; see their logs in the Prefect UI"
        )
    return {label: _ui_link(run) for run, (label, _, _) in zip(finished, jobs, strict=True)}


def _ui_link(run) -> str:
    """A flow run's page in the Prefect UI (its id where no UI address is known)."""
    base = PREFECT_UI_URL.value()
    return f"[{run.name}]({base.rstrip('/')}/runs/flow-run/{run.id})" if base else f"`{run.name}` ({run.id})"


def _cancel(flow_runs: list, why: str) -> None:
    """Cancel flow runs already started, so that a failed or stopped dispatch leaves nothing running."""
    with get_client(sync_client=True) as client:
        for run in flow_runs:
            client.set_flow_run_state(run.id, Cancelling(message=why))


def _wait_for(flow_runs: list, timeout_s: float, poll_s: float = 5.0, on_poll=None) -> list:
    """The flow runs, read again until all are final or the timeout passes (`on_poll` at each look)."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            current = [client.read_flow_run(run.id) for run in flow_runs]
            if all(run.state is not None and run.state.is_final() for run in current) or time.monotonic() > deadline:
                return current
            if on_poll is not None:
                on_poll()
            time.sleep(poll_s)


def _run_name(config: PipelineConfig) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return config.run_name or f"{stamp}-{flow_run.name or 'local'}"


@dataclass
class PipelineRun:
    """One pipeline run once its run folder is prepared: what the training and the steps after it need."""

    config: PipelineConfig
    run_dir: str
    run_id: str
    tracking_uri: str
    mode: str  # localiser mode: train, reuse or off
    localiser_run_id: str | None = None
    localiser_checkpoint: str | None = None  # a reused localiser's weights
    result: dict | None = field(default=None, repr=False)  # the flow's result, once trained

    def save(self) -> None:
        state = {**asdict(self), "config": self.config.model_dump()}
        state.pop("result")
        payload = json.dumps(state, indent=2).encode()
        atomic_write(RunFolder(self.run_dir).pipeline_state, lambda handle: handle.write(payload))

    @classmethod
    def load(cls, run_dir: str | Path) -> PipelineRun:
        path = RunFolder(run_dir).pipeline_state
        if not path.is_file():
            raise ValueError(f"{run_dir} is not a run folder of train-pipeline: it has no {path.name}")
        saved = json.loads(path.read_text())
        return cls(**{**saved, "config": PipelineConfig(**saved["config"]), "run_dir": str(Path(run_dir).resolve())})


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
    run_id = start_run_task(config.experiment, run_name, _prefect_tags(), tracking_uri)
    mode = config.localiser_mode()
    pipeline = PipelineRun(config, str(run_dir), run_id, tracking_uri, mode)
    with guarding(flow_run.id, {run_id: str(run_dir)}, tracking_uri, run_dir) as guard:
        try:
            _prepare_and_train(pipeline, guard)
        except BaseException as error:
            _record_end(pipeline, error)
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
    prepared = prepare_run_task(
        config.data_dir, ingested, tables, store, config.train_config(), str(run_dir), localiser_config
    )
    # The settings left unset say so: their values are the family's defaults (TrainConfig).
    family_defaults = ", ".join(config.family_defaults) or "none"
    params = {**config.model_dump(), **prepared.facts, "localiser_mode": mode, "family_defaults": family_defaults}
    log_params_task(run_id, params, tracking_uri)

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
    pipeline = PipelineRun.load(run_dir)
    logger = get_run_logger()
    for run_id in (pipeline.run_id, pipeline.localiser_run_id):
        if run_id is not None:
            tracking.reopen_run(run_id, pipeline.tracking_uri)
            set_tags_task(run_id, {"resumed_by_flow_run": flow_run.id}, pipeline.tracking_uri)
    logger.info("resuming run folder %s (MLflow run %s)", pipeline.run_dir, pipeline.run_id)
    with guarding(flow_run.id, dict(_mlflow_runs(pipeline)), pipeline.tracking_uri, pipeline.run_dir):
        try:
            pipeline.result = _train_and_finish(pipeline, load_run_task(pipeline.run_dir), resume=True)
        except BaseException as error:
            _record_end(pipeline, error)
            raise
    _compare_after(pipeline)
    return pipeline.result


def _mlflow_runs(pipeline: PipelineRun) -> list[tuple[str, str]]:
    """(MLflow run id, run folder) of the pipeline's runs: the localiser's first, when it has one."""
    folder = RunFolder(pipeline.run_dir)
    runs = [(pipeline.localiser_run_id, str(folder.localiser.root)), (pipeline.run_id, pipeline.run_dir)]
    return [(run_id, run_dir) for run_id, run_dir in runs if run_id is not None]


def _record_end(pipeline: PipelineRun, error: BaseException) -> None:
    """A run that did not finish: stopped from outside (KILLED, with the epoch reached and how to
    resume, said in the log and on the exception), or failed (FAILED, unless a child that was
    stopped already marked it KILLED). Plain calls, not tasks: they run while the flow fails."""
    if is_interrupt(error):
        for run_id, run_dir in _mlflow_runs(pipeline):
            get_run_logger().warning("%s", mark_stopped(run_id, run_dir, pipeline.tracking_uri, _how(error)))
        interrupts.note_resume(f"spine train --resume {pipeline.run_dir}")
        return
    for run_id, _ in _mlflow_runs(pipeline):
        if tracking.run_status(run_id, pipeline.tracking_uri) != "KILLED":
            end_run_task.fn(run_id, "FAILED", pipeline.tracking_uri)


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
