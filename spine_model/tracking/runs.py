"""MLflow runs and experiments by explicit id: created, tagged, logged to and ended, on a tracking
server or a local sqlite store (whose schema is created once, under a lock, and whose writes a
stop signal never cuts in half)."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from spine_model.core import interrupts
from spine_model.core.http import health_problem

DEFAULT_EXPERIMENT = "rsna-lumbar-spine"

# MLflow 3's UI opens an experiment by its kind: model training (runs table and charts), not GenAI.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}

MAX_BATCH = 100  # MLflow caps params and metrics per log_batch call


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The given URI, else MLFLOW_TRACKING_URI, else MLflow 3's default: ./mlflow.db (absolute).

    The absolute sqlite path lets a child flow with another working folder log to the same store.
    """
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def artifact_location(tracking_uri: str | None = None) -> str | None:
    """Where a new experiment keeps its artifacts: beside a local sqlite store (`mlartifacts/` next to
    the .db file), so that every process logging to that store, whatever its working folder, writes
    them to one place; None (the server's own choice) for a tracking server."""
    uri = resolve_tracking_uri(tracking_uri)
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


_READY_STORES: set[str] = set()  # sqlite stores this process has opened (their schema exists)


def client(tracking_uri: str | None = None):
    """An MlflowClient for the URI. A local sqlite store is opened first under a file lock beside it:
    MLflow creates and migrates the schema of a new store on first use, and two processes doing that
    at once crash ("table ... already exists"): a scheduled run and a UI run, or folds started together
    on a new workdir."""
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    if not uri.startswith("sqlite:///"):
        return mlflow.MlflowClient(tracking_uri=uri)
    if uri not in _READY_STORES:
        from filelock import FileLock

        database = Path(uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{database}.lock", timeout=600), interrupts.deferred():
            mlflow_client = mlflow.MlflowClient(tracking_uri=uri)
            mlflow_client.search_experiments(max_results=1)  # the tracking store: schema created or migrated
            mlflow_client.search_registered_models(max_results=1)  # the registry's store over the same file
        _READY_STORES.add(uri)
    return _WholeCalls(mlflow.MlflowClient(tracking_uri=uri))


class _WholeCalls:
    """An MlflowClient over a local sqlite store whose calls are never cut in half by Ctrl-C or
    SIGTERM (see interrupts.deferred): a write cut between its statements leaves the file locked,
    and the stopped run could then not be marked KILLED ("database is locked")."""

    def __init__(self, mlflow_client) -> None:
        self._client = mlflow_client

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def whole(*args, **kwargs):
            with interrupts.deferred():
                return attribute(*args, **kwargs)

        return whole


def start_run(
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    tracking_uri: str | None = None,
) -> str:
    """Create a run in `experiment` (created if missing); returns the run id."""
    mlflow_client = client(tracking_uri)
    run = mlflow_client.create_run(experiment_id(experiment, tracking_uri), run_name=run_name, tags=dict(tags or {}))
    return run.info.run_id


def experiment_id(experiment: str, tracking_uri: str | None = None) -> str:
    """The experiment's id, created when missing (by whichever of several processes gets there first)."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow_client.create_experiment(
            experiment, artifact_location=artifact_location(tracking_uri), tags=EXPERIMENT_TAGS
        )
    except MlflowException:  # created by another process since the look-up
        found = mlflow_client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


def end_run(run_id: str, status: str = "FINISHED", tracking_uri: str | None = None) -> None:
    client(tracking_uri).set_terminated(run_id, status=status)


def run_status(run_id: str, tracking_uri: str | None = None) -> str:
    """RUNNING, FINISHED, FAILED, KILLED or SCHEDULED."""
    return client(tracking_uri).get_run(run_id).info.status


def reopen_run(run_id: str, tracking_uri: str | None = None) -> None:
    """Mark an ended (e.g. FAILED) run RUNNING again, so that a resumed training logs into it."""
    client(tracking_uri).update_run(run_id, status="RUNNING")


def set_tags(run_id: str, tags: Mapping[str, Any], tracking_uri: str | None = None) -> None:
    mlflow_client = client(tracking_uri)
    for key, value in tags.items():
        if value is not None:
            mlflow_client.set_tag(run_id, key, str(value))


def log_params(run_id: str, params: Mapping[str, Any], tracking_uri: str | None = None) -> None:
    """Log params in batches; lists and dicts become JSON strings."""
    from mlflow.entities import Param

    items = [
        Param(key, json.dumps(value) if isinstance(value, list | tuple | dict) else str(value))
        for key, value in params.items()
    ]
    mlflow_client = client(tracking_uri)
    for start in range(0, len(items), MAX_BATCH):
        mlflow_client.log_batch(run_id, params=items[start : start + MAX_BATCH])


def log_metrics(
    run_id: str, metrics: Mapping[str, float], step: int | None = None, tracking_uri: str | None = None
) -> None:
    """Log finite numeric metrics in batches (non-finite values are refused by MLflow stores)."""
    import time

    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    items = [
        Metric(key, float(value), timestamp, step or 0)
        for key, value in metrics.items()
        if value is not None and np.isfinite(value)
    ]
    mlflow_client = client(tracking_uri)
    for start in range(0, len(items), MAX_BATCH):
        mlflow_client.log_batch(run_id, metrics=items[start : start + MAX_BATCH])


def log_artifacts(
    run_id: str,
    paths: Mapping[str, Path] | list[Path],
    artifact_path: str | None = None,
    tracking_uri: str | None = None,
) -> None:
    """Log files (a folder logs recursively) under `artifact_path`."""
    mlflow_client = client(tracking_uri)
    for path in paths.values() if isinstance(paths, Mapping) else paths:
        path = Path(path)
        if path.is_dir():
            mlflow_client.log_artifacts(
                run_id, str(path), artifact_path=f"{artifact_path}/{path.name}" if artifact_path else path.name
            )
        else:
            mlflow_client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def whole_calls(tracking_uri: str | None = None):
    """A block of MLflow's fluent calls that Ctrl-C or SIGTERM does not cut in half, on a local
    sqlite store (see _WholeCalls); an ordinary block for a tracking server."""
    if resolve_tracking_uri(tracking_uri).startswith("sqlite:///"):
        return interrupts.deferred()
    return nullcontext()


# MLflow 3's UI opens an experiment in its GenAI view unless the address asks for the model-training
# one (the `mlflow.experimentKind` tag is not read while the UI's GenAI / Model training switch is
# shown); the run's "Model metrics" tab charts every logged metric against its step (the epoch).
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def experiment_link(experiment_id: str, tracking_uri: str) -> str:
    """An experiment's runs table in MLflow's model-training view."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}?{MODEL_TRAINING_VIEW}"


def run_link(run_id: str, tracking_uri: str | None = None) -> str:
    """Where a person opens the run: a URL for a server, else the `mlflow ui` command to start one."""
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        experiment_id = client(uri).get_run(run_id).info.experiment_id
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics?{MODEL_TRAINING_VIEW}"
    return f"run `mlflow ui --backend-store-uri {uri}` and open run {run_id}"


def answers(tracking_uri: str | None, timeout_s: float = 3.0) -> bool:
    """The tracking server answers its /health within `timeout_s` (a local store always does).
    Checked before a send that training waits on: MLflow's own client retries for minutes."""
    uri = resolve_tracking_uri(tracking_uri)
    return not uri.startswith(("http://", "https://")) or health_problem(uri.rstrip("/") + "/health", timeout_s) is None


def log_dataset(
    run_id: str, frame, name: str, source: str, digest: str, context: str, tracking_uri: str | None = None
) -> None:
    """The data a run used, as an MLflow dataset input (its lineage): `frame`'s schema and profile, a
    name, where it came from (`source`), a `digest` that changes when the data does, and the role it
    played (`context`: training, validation, ...)."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest[:36])
    entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
    client(tracking_uri).log_inputs(run_id, datasets=[entry])
