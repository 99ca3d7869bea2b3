"""Cross-validation fanned out over the gpu pool of a real stack with two gpu workers: folds train at
the same time, nested MLflow runs land, and a fold that fails fails the parent with its message and
cancels its siblings."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.config import CVConfig, TrainRequest
from flows.cv import cross_validate
from flows.dispatch import Job, run_on_pool
from spine_model.core.catalog import CVFolder, RunRecord
from tests.conftest import TINY_TRAIN

pytestmark = pytest.mark.integration
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dispatched_cv(stack, second_gpu_worker, tiny_data, module_tmp):
    config = CVConfig(
        data_dir=str(tiny_data), workdir=str(module_tmp.mktemp("cv-pool") / "out"), tracking_uri=stack.mlflow_url,
        dispatch="work-pool", dispatch_timeout_s=900, model_family="crops", folds=2, localiser="off",
        validate_first=False, compare_after=False, **{**TINY_TRAIN, "epochs": 3},
    )  # fmt: skip
    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        result = cross_validate(config)
        with get_client(sync_client=True) as client:
            (parent,) = [
                run for run in client.read_flow_runs() if run.name and run.state and run.state.is_completed()
                and run.flow_id == client.read_flow_by_name("cross-validate").id
            ]  # fmt: skip
            of_parent = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id]))
            children = client.read_flow_runs(flow_run_filter=of_parent)
    return config, result, [child for child in children if child.deployment_id is not None]


def test_the_folds_train_at_the_same_time_on_two_gpu_workers(dispatched_cv):
    _, _, children = dispatched_cv
    assert len(children) == 2 and all(child.state.is_completed() for child in children)
    first, second = sorted(children, key=lambda child: child.start_time)
    assert second.start_time < first.end_time, "the folds ran one after the other"


def test_each_fold_logged_into_a_run_nested_in_the_parent(dispatched_cv):
    config, result, _ = dispatched_cv
    client = mlflow.MlflowClient(config.tracking_uri)
    parent = client.get_run(result["mlflow_run_id"])
    nested = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(run.data.tags["cv_fold"] for run in nested) == ["0", "1"]
    assert all(run.info.status == "FINISHED" and "val_competition_score" in run.data.metrics for run in nested)
    assert "oof_competition_score" in parent.data.metrics and parent.info.status == "FINISHED"


def test_a_fold_that_fails_fails_the_dispatch_with_its_message_and_cancels_the_others(stack, dispatched_cv):
    config, result, _ = dispatched_cv
    cv = CVFolder(result["run_dir"])
    slow = cv.root / "slow-fold"  # fold 0 again, with epochs enough to be still training when its sibling fails
    shutil.copytree(cv.fold(0).root, slow, ignore=shutil.ignore_patterns("checkpoints", "evaluation"))
    record = RunRecord.load(slow)
    dataclasses.replace(record, config=record.config.model_copy(update={"epochs": 200})).save(slow)
    runs = [
        (f"slow-{os.getpid()}", str(slow)), (f"broken-{os.getpid()}", str(cv.root / "no-such-fold")),
    ]  # fmt: skip
    jobs = [
        Job(
            label,
            config.gpu_deployment,
            {
                "request": TrainRequest(
                    run_dir=run_dir, mlflow_run_id=result["mlflow_run_id"], tracking_uri=config.tracking_uri
                ).model_dump()
            },
            label,
        )  # fmt: skip
        for label, run_dir in runs
    ]
    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        with pytest.raises(RuntimeError, match=rf"broken-{os.getpid()}.*Failed.*cancelled: slow-{os.getpid()}"):
            run_on_pool(jobs, timeout_s=600)
        deadline = time.monotonic() + 120
        while True:
            with get_client(sync_client=True) as client:
                (slow_run,) = [run for run in client.read_flow_runs() if run.name == f"slow-{os.getpid()}"]
            if slow_run.state.is_cancelled() or time.monotonic() > deadline:
                break
            time.sleep(2)
    assert slow_run.state.is_cancelled(), slow_run.state
