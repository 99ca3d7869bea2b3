"""`sweep` in this process: the space checked before any trial, trials as nested MLflow runs, a
hopeless trial pruned, the study kept so that a stopped sweep resumes without repeating a trial."""

from __future__ import annotations

import mlflow
import optuna
import pytest
from prefect.client.orchestration import get_client

from flows.config import PipelineConfig
from flows.sweep import sweep
from flows.train import train_pipeline
from spine_model.core.catalog import RunFolder
from spine_model.pipeline.sweep import SpaceError, read_space
from spine_model.training.history import EpochLog
from tests.conftest import TINY_TRAIN

SPACE = {"lr": [1e-3, 2.0], "crop_size": [16]}
GOOD, BAD = {"lr": 1e-3, "crop_size": 16}, {"lr": 2.0, "crop_size": 16}


def _config(root) -> PipelineConfig:
    return PipelineConfig(
        data_dir="unused", workdir=str(root / "out"), tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        model_family="crops", localiser="off", validate_first=False, compare_after=False,
        **{**TINY_TRAIN, "epochs": 4},
    )  # fmt: skip


def test_a_space_with_an_unknown_setting_or_a_refused_value_is_refused_naming_it(tmp_path):
    config = _config(tmp_path)
    with pytest.raises(SpaceError, match="unknown setting 'learning_rate'"):
        read_space({"learning_rate": [0.1]}, config)
    with pytest.raises(SpaceError, match="'crop_slices' = 4 is refused.*odd"):
        read_space({"crop_slices": [3, 4]}, config)
    with pytest.raises(SpaceError, match="'lr': a log-scale range needs low > 0"):
        read_space({"lr": {"low": 0, "high": 1, "log": True}}, config)
    with pytest.raises(SpaceError, match="empty"):
        read_space({}, config)
    space = read_space({"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "epochs": {"low": 1, "high": 3}}, config)
    assert space[0].log and not space[0].integer and space[1].integer


@pytest.fixture(scope="module")
def swept(prefect_harness, tiny_data, module_tmp):
    root = module_tmp.mktemp("sweep")
    config = _config(root).model_copy(update={"data_dir": str(tiny_data)})
    # Two good trials first, then the bad one: the median of the good ones' losses prunes it.
    result = sweep(config, SPACE, trials=3, name="s", first=[GOOD, GOOD, BAD])
    return config, result, root


def test_each_trial_is_a_nested_run_and_the_hopeless_one_is_pruned(swept):
    config, result, root = swept
    states = [trial["state"] for trial in result["trials"]]
    assert states == ["complete", "complete", "pruned"], result["trials"]
    pruned = result["trials"][2]
    assert pruned["epochs"] < 4  # stopped early: its GPU freed for the next trial
    client = mlflow.MlflowClient(config.tracking_uri)
    parent = client.get_run(result["mlflow_run_id"])
    nested = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(nested) == 3
    by_trial = {run.data.tags["sweep_trial"]: run for run in nested}
    assert by_trial["2"].data.tags["pruned"] == "True" and by_trial["2"].info.status == "KILLED"
    assert by_trial["0"].data.params["lr"] == "0.001" and "val_loss" in by_trial["0"].data.metrics
    assert parent.data.params["best_lr"] == "0.001" and parent.data.metrics["best_score"] == result["best_score"]
    assert "plots/scores.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}


def test_a_stopped_sweep_resumes_without_repeating_a_finished_trial(swept):
    config, result, root = swept
    storage = f"sqlite:///{root / 'out' / 'sweeps.db'}"
    study = optuna.load_study(study_name="s", storage=storage)
    study.set_user_attr("trials", 4)  # as if it had been a sweep of 4 ...
    study.enqueue_trial(GOOD)
    study.ask()  # ... stopped while its fourth trial trained
    resumed = sweep(PipelineConfig(), resume="s", storage=storage)
    states = [trial["state"] for trial in resumed["trials"]]
    assert states == ["complete", "complete", "pruned", "fail", "complete"], resumed["trials"]
    client = mlflow.MlflowClient(config.tracking_uri)
    nested = client.search_runs(
        [client.get_run(result["mlflow_run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{result['mlflow_run_id']}'",
    )
    assert sorted(run.data.tags.get("sweep_trial") for run in nested) == ["0", "1", "2", "4"]  # none repeated


def test_a_pruned_trial_ends_cancelled_saying_why_and_resumes_to_its_last_epoch(swept):
    config, result, root = swept
    client = mlflow.MlflowClient(config.tracking_uri)
    (run,) = [
        run
        for run in client.search_runs(
            [client.get_run(result["mlflow_run_id"]).info.experiment_id],
            f"tags.mlflow.parentRunId = '{result['mlflow_run_id']}' and tags.sweep_trial = '2'",
        )
    ]
    with get_client(sync_client=True) as prefect:
        state = prefect.read_flow_run(run.data.tags["prefect.flow_run_id"]).state
    # Cancelled, not Failed: nothing went wrong; the message says where it stopped and how to go on.
    assert state.is_cancelled() and "asked to stop: its STOP file" in state.message, state
    stopped_at = int(run.data.tags["stopped_at_epoch"])
    assert 1 <= stopped_at < 4 and "--resume" in state.message

    run_dir = RunFolder(root / "out" / "runs" / "s-trial-2")
    train_pipeline(PipelineConfig(resume=str(run_dir.root)))  # the stop request was honoured: it goes on
    assert not run_dir.stop_request.exists()
    assert [stats.epoch for stats in EpochLog(run_dir.epochs_log).read()] == [1, 2, 3, 4]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
