"""Two pipeline runs at once on the same data, cache and volume store: both finish, each in its own
run folder and MLflow run, and the store they share is whole (one build at a time, a lock)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from prefect.settings import PREFECT_API_URL

from spine_model.core.catalog import RunFolder, Workspace
from tests.conftest import TINY_TRAIN
from tests.helpers import cli_options

pytestmark = pytest.mark.integration


def test_two_runs_at_once_on_one_store_both_finish(prefect_harness, tiny_data, tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = {**TINY_TRAIN, "epochs": 1, "model_family": "seed", "compare_after": False}
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(Path.cwd())}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flows.cli",
                "train",
                str(tiny_data),
                "--workdir",
                str(tmp_path / "out"),
                "--tracking-uri",
                tracking_uri,
                "--run-name",
                name,
                *cli_options(settings),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
        for name in ("first", "second")
    ]
    outputs = [process.communicate(timeout=900)[0].decode() for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    workspace = Workspace(tmp_path / "out")
    for name in ("first", "second"):
        assert RunFolder(workspace.run(name).root).evaluation_files()["summary"].is_file()
    store = workspace.dataset(tiny_data).volume_store("train", settings["store_size"])
    index = pd.read_parquet(store / "index.parquet")
    assert not index.duplicated(["study_id", "series_id", "slice_index"]).any()
    series = pd.read_csv(tiny_data / "train_series_descriptions.csv")
    assert index.drop_duplicates(["study_id", "series_id"]).shape[0] == len(series)
    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs(client.get_experiment_by_name("rsna-lumbar-spine").experiment_id)
    assert sorted(run.info.run_name for run in runs) == ["first", "second"]
    assert all(run.info.status == "FINISHED" for run in runs)
