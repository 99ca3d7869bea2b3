"""MLflow, behind one small module: the rest of the library runs with no tracking server at all.

Every call takes an explicit `run_id` (MLflow's fluent active run is thread-local, and Prefect
runs tasks in threads and child flows in other processes).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from spine_model import interrupts

DEFAULT_EXPERIMENT = "rsna-lumbar-spine"
# What a logged model needs at load time, pinned to this environment's versions. Given explicitly,
# because MLflow's own inference of them loads the model in a subprocess (about 20 s a model).
MODEL_REQUIREMENTS = (
    "torch", "torchvision", "numpy", "pandas", "pyarrow", "scikit-learn", "pydicom", "pillow", "pydantic", "tqdm",
)  # fmt: skip
# MLflow 3's UI opens an experiment by its kind: model training (runs table and charts), not GenAI.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
_MAX_BATCH = 100  # MLflow caps params and metrics per log_batch call


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The given URI, else MLFLOW_TRACKING_URI, else MLflow 3's default: ./mlflow.db (absolute).

    The absolute sqlite path lets a child flow with another working folder log to the same store.
    """
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def pinned_requirements() -> list[str]:
    """MODEL_REQUIREMENTS as `package==version` of the installed packages (local version labels dropped)."""
    from importlib import metadata

    return [f"{package}=={metadata.version(package).split('+')[0]}" for package in MODEL_REQUIREMENTS]


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
    for start in range(0, len(items), _MAX_BATCH):
        mlflow_client.log_batch(run_id, params=items[start : start + _MAX_BATCH])


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
    for start in range(0, len(items), _MAX_BATCH):
        mlflow_client.log_batch(run_id, metrics=items[start : start + _MAX_BATCH])


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


@contextmanager
def active_run(run_id: str, tracking_uri: str | None = None) -> Iterator[None]:
    """Make `run_id` MLflow's active run in this thread (for log_model calls), then give it back;
    on a sqlite store, a stop signal waits for the end of the block.

    Leaving mlflow.start_run's block marks the run FINISHED; the pipeline ends its run itself, so
    the status goes back to RUNNING here.
    """
    import mlflow

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    with whole_calls(tracking_uri), mlflow.start_run(run_id=run_id):
        yield
    client(tracking_uri).update_run(run_id, status="RUNNING")


def whole_calls(tracking_uri: str | None = None):
    """A block of MLflow's fluent calls that Ctrl-C or SIGTERM does not cut in half, on a local
    sqlite store (see _WholeCalls); an ordinary block for a tracking server."""
    if resolve_tracking_uri(tracking_uri).startswith("sqlite:///"):
        return interrupts.deferred()
    return nullcontext()


def log_pytorch_model(model, example_inputs: Mapping[str, np.ndarray], name: str = "model") -> str:
    """Log `model` into the active run with mlflow.pytorch (torch.export format); returns its URI.

    example_inputs: the model's positional inputs by name, in order (a model family's
    `input_names`), batch first. MLflow 3.14+'s torch.export serialisation of a multi-input model
    needs an explicit TensorSpec signature plus an input example; then
    mlflow.pytorch.load_model(uri)(*inputs) gives the same outputs as the live model.
    """
    import mlflow
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    examples = {key: np.ascontiguousarray(value) for key, value in example_inputs.items()}
    model = model.to("cpu").eval()
    with torch.no_grad():
        example_output = model(*(torch.from_numpy(value) for value in examples.values()))
    signature = ModelSignature(
        inputs=Schema([TensorSpec(value.dtype, (-1, *value.shape[1:]), key) for key, value in examples.items()]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, *example_output.shape[1:]))]),
    )
    info = mlflow.pytorch.log_model(
        model, name=name, signature=signature, input_example=list(examples.values()),
        pip_requirements=pinned_requirements(),
    )  # fmt: skip
    return info.model_uri


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
    from spine_model.preflight import SetupError, check_tracking

    try:
        check_tracking(resolve_tracking_uri(tracking_uri), timeout_s)
    except SetupError:
        return False
    return True


class MetricBuffer:
    """Per-epoch metrics that outlive a tracking server outage.

    Each epoch's metrics are appended to a local JSON-lines file (in the run folder) first, then
    everything pending is sent in one quick attempt; what cannot be sent stays in the file for the
    next epoch, for `flush` at the end of training, and for a resumed run. Training never waits
    more than a few seconds on MLflow, and no metric is lost while the file is kept.
    """

    def __init__(self, run_id: str, tracking_uri: str | None, path: str | Path) -> None:
        self.run_id, self.tracking_uri, self.path = run_id, tracking_uri, Path(path)

    def pending(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def log(self, metrics: Mapping[str, float], step: int) -> bool:
        """Keep one step's metrics, then try to send all pending ones; True when none is left."""
        import time

        stamp = int(time.time() * 1000)
        rows = [
            {"key": k, "value": float(v), "timestamp": stamp, "step": int(step)}
            for k, v in metrics.items()
            if v is not None and np.isfinite(v)
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
            handle.flush()
            os.fsync(handle.fileno())
        return self.flush(quick=True)

    def flush(self, quick: bool = False) -> bool:
        """Send every pending metric; True when all went (the file is then emptied)."""
        import logging

        from mlflow.entities import Metric

        rows = self.pending()
        if not rows:
            return True
        metrics = [Metric(row["key"], row["value"], row["timestamp"], row["step"]) for row in rows]
        sent = 0
        try:
            if quick and not answers(self.tracking_uri):
                raise ConnectionError("no answer from its /health within 3 s")
            mlflow_client = client(self.tracking_uri)
            for start in range(0, len(metrics), _MAX_BATCH):
                mlflow_client.log_batch(self.run_id, metrics=metrics[start : start + _MAX_BATCH])
                sent = min(start + _MAX_BATCH, len(metrics))
        except Exception as error:  # any failure of the server or the network: keep them for later
            self._keep(rows[sent:])
            logging.getLogger(__name__).warning(
                "MLflow at %s did not take %d metric(s) (%s: %s); kept in %s, sent later",
                resolve_tracking_uri(self.tracking_uri), len(rows) - sent, type(error).__name__, str(error)[:200],
                self.path,
            )  # fmt: skip
            return False
        self._keep([])
        return True

    def _keep(self, rows: list[dict]) -> None:
        from spine_model.catalog import atomic_write

        payload = "".join(json.dumps(row) + "\n" for row in rows).encode()
        atomic_write(self.path, lambda handle: handle.write(payload))
