"""MLflow, behind one small package: the rest of the library runs with no tracking server at all.

Every call takes an explicit `run_id` (MLflow's fluent active run is thread-local, and Prefect
runs tasks in threads and child flows in other processes). `runs`: runs and experiments;
`models`: the PyTorch model logged into a run; `buffer`: epoch metrics kept through outages;
`registry`: versions and aliases. The names most callers use are here.
"""

from spine_model.tracking.buffer import MetricBuffer
from spine_model.tracking.models import active_run, log_pytorch_model, pinned_requirements
from spine_model.tracking.runs import (
    DEFAULT_EXPERIMENT,
    EXPERIMENT_TAGS,
    MODEL_TRAINING_VIEW,
    answers,
    artifact_location,
    client,
    end_run,
    experiment_id,
    experiment_link,
    log_artifacts,
    log_dataset,
    log_metrics,
    log_params,
    reopen_run,
    resolve_tracking_uri,
    run_link,
    run_status,
    set_tags,
    start_run,
    whole_calls,
)

__all__ = [
    "MetricBuffer",
    "active_run",
    "log_pytorch_model",
    "pinned_requirements",
    "DEFAULT_EXPERIMENT",
    "EXPERIMENT_TAGS",
    "resolve_tracking_uri",
    "artifact_location",
    "client",
    "start_run",
    "experiment_id",
    "end_run",
    "run_status",
    "reopen_run",
    "set_tags",
    "log_params",
    "log_metrics",
    "log_artifacts",
    "log_dataset",
    "whole_calls",
    "MODEL_TRAINING_VIEW",
    "experiment_link",
    "run_link",
    "answers",
]
