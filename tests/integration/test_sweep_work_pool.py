"""A sweep on a real stack with two gpu workers: two trials at a time, the hopeless one pruned, every
trial a run nested in the sweep's."""

from __future__ import annotations

from itertools import pairwise

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.config import PipelineConfig
from flows.sweep import sweep
from tests.conftest import TINY_TRAIN

pytestmark = pytest.mark.integration
GOOD, BAD = {"lr": 1e-3, "crop_size": 16}, {"lr": 2.0, "crop_size": 16}


def test_a_sweep_runs_two_trials_at_a_time_and_prunes_the_hopeless_one(stack, second_gpu_worker, tiny_data, tmp_path):
    config = PipelineConfig(
        data_dir=str(tiny_data), workdir=str(tmp_path / "out"), tracking_uri=stack.mlflow_url, dispatch="work-pool",
        dispatch_timeout_s=900, model_family="crops", localiser="off", validate_first=False, compare_after=False,
        **{**TINY_TRAIN, "epochs": 4},
    )  # fmt: skip
    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        result = sweep(config, {"lr": [1e-3, 2.0], "crop_size": [16]}, trials=4, parallel=2, name="pool-sweep",
                       first=[GOOD, GOOD, GOOD, BAD])  # fmt: skip
        with get_client(sync_client=True) as client:
            runs = [run for run in client.read_flow_runs(limit=200) if (run.name or "").startswith("pool-sweep-trial-")]
    trials = [run for run in runs if not run.name.endswith("-classifier")]  # each trial's training: a child
    assert sorted((run.name, run.state_name) for run in trials) == [
        ("pool-sweep-trial-0", "Completed"), ("pool-sweep-trial-1", "Completed"),
        ("pool-sweep-trial-2", "Completed"), ("pool-sweep-trial-3", "Cancelled"),
    ], [(run.name, run.state_name) for run in runs]  # fmt: skip
    # The pruned trial's training on the gpu pool ends Cancelled too (asked to stop), not Failed.
    children = {run.name: run.state_name for run in runs if run.name.endswith("-classifier")}
    assert children["pool-sweep-trial-3-classifier"] == "Cancelled", children
    states = {trial["trial"]: trial["state"] for trial in result["trials"]}
    assert states == {0: "complete", 1: "complete", 2: "complete", 3: "pruned"}, result["trials"]
    ordered = sorted(trials, key=lambda run: run.start_time)
    overlapping = sum(later.start_time < earlier.end_time for earlier, later in pairwise(ordered))
    assert overlapping >= 2, [(run.name, run.start_time, run.end_time) for run in ordered]  # two at a time
    assert not any(
        c.start_time < b.end_time and c.start_time < a.end_time
        for a, b, c in zip(ordered, ordered[1:], ordered[2:], strict=False)
    )  # never three: the sweep's `parallel`
    client = mlflow.MlflowClient(stack.mlflow_url)
    parent = client.get_run(result["mlflow_run_id"])
    nested = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(nested) == 4
    assert {run.data.tags["sweep_trial"]: run.data.tags["pruned"] for run in nested}["3"] == "True"
