"""`spine train` killed mid-training (kill -9), then `spine train --resume RUN_DIR`: the run's guard
marks the MLflow run KILLED and the flow run Crashed, and the same run folder and MLflow run go on
from the next epoch, every epoch's metrics logged once, and the run finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import torch
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from typer.testing import CliRunner

from flows.cli import app
from spine_model.core.catalog import RunFolder
from tests.conftest import TINY_TRAIN
from tests.helpers import cli_options

EPOCHS = 4


def test_a_killed_pipeline_resumes_in_its_run_folder_and_mlflow_run(prefect_harness, tiny_data, tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = {**TINY_TRAIN, "epochs": EPOCHS, "model_family": "seed", "compare_after": False}
    args = [
        "train", str(tiny_data), "--workdir", str(tmp_path / "out"), "--tracking-uri", tracking_uri,
        "--run-name", "interrupted", *cli_options(settings),
    ]  # fmt: skip
    run_dir = tmp_path / "out" / "runs" / "interrupted"
    state = RunFolder(run_dir).training_state
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(Path.cwd())}
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    try:
        deadline = time.monotonic() + 600
        while not state.is_file():
            assert process.poll() is None, process.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no training state after 10 minutes"
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    done = int(torch.load(state, weights_only=True)["epoch"])
    assert 1 <= done < EPOCHS

    # Killed outright (kill -9): nothing in the process could end the run; its guard did.
    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs(client.get_experiment_by_name("rsna-lumbar-spine").experiment_id)
    deadline = time.monotonic() + 60
    while client.get_run(run.info.run_id).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED" and run.data.tags["stopped_at_epoch"] == str(done)
    with get_client(sync_client=True) as prefect:  # the flow run next (MLflow comes first)
        while time.monotonic() < deadline:
            parent = prefect.read_flow_run(run.data.tags["prefect.flow_run_id"])
            if parent.state.is_final():
                break
            time.sleep(0.2)
    assert parent.state.is_crashed() and f"spine train --resume {run_dir}" in parent.state.message

    result = CliRunner().invoke(app, ["train", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert str(run_dir) in result.output
    resumed = client.get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["resumed_from_epoch"] == str(done)
    assert resumed.data.tags["serving_model_uri"]
    for key in ("train_loss", "val_loss"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, steps)  # each epoch once
    assert len(client.search_runs(run.info.experiment_id)) == 1  # no second run
    assert torch.load(state, weights_only=True)["epoch"] == EPOCHS


def test_resume_of_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not a run folder of train-pipeline" in result.output and "Traceback" not in result.output
    missing = CliRunner().invoke(app, ["train"])
    assert missing.exit_code == 1 and "DATA_DIR is missing" in missing.output
