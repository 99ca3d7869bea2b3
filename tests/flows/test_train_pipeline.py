"""The default (local dispatch) pipeline under the Prefect test harness, with a real MLflow store, per family."""

from __future__ import annotations

import shutil
import uuid

import mlflow
import numpy as np
import pandas as pd
import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from flows.config import PipelineConfig
from flows.train import train_pipeline
from spine_model.catalog import RunFolder
from spine_model.constants import SEVERITY_COLUMNS
from spine_model.inference import Predictor, inference_frame
from spine_model.steps import RunInputs
from tasks.data import ingest, volume_store
from tests.conftest import FAMILIES, TINY_TRAIN
from tests.helpers import assert_complete_mlflow_run


@pytest.fixture(scope="module", params=FAMILIES)
def local_run(request, prefect_harness, tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"local_run_{request.param}")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    config = PipelineConfig(
        data_dir=str(tiny_data), workdir=str(root / "out"), tracking_uri=tracking_uri, model_family=request.param,
        **TINY_TRAIN,
    )  # fmt: skip
    result = train_pipeline(config)
    return config, result


def test_pipeline_logs_a_complete_mlflow_run(local_run):
    config, result = local_run
    assert_complete_mlflow_run(config.tracking_uri, result["mlflow_run_id"], config, result["run_dir"])
    run = mlflow.MlflowClient(config.tracking_uri).get_run(result["mlflow_run_id"])
    assert run.data.tags["prefect.train_deployment"] == "in-process"
    experiment = mlflow.MlflowClient(config.tracking_uri).get_experiment(run.info.experiment_id)
    assert experiment.name == "rsna-lumbar-spine"


def test_checkpoint_and_serving_model_reproduce_the_validation_predictions(local_run, tiny_data):
    """The pyfunc, decoding DICOM itself, and the checkpoint give the evaluation's own study predictions."""
    config, result = local_run
    folder = RunFolder(result["run_dir"])
    evaluated = pd.read_csv(folder.evaluation_files()["submission"])
    run = RunInputs.load(folder.root)
    frame = inference_frame(tiny_data, "train", use_coordinates=True)
    frame = frame[frame["study_id"].isin(run.record.split.val_study_ids)]

    mlflow.set_tracking_uri(config.tracking_uri)
    serving = mlflow.pyfunc.load_model(
        mlflow.MlflowClient().get_run(result["mlflow_run_id"]).data.tags["serving_model_uri"]
    )
    from_pyfunc = serving.predict(frame)
    from_checkpoint = Predictor.load(folder.best_checkpoint, folder.priors, device="cpu").predict(frame, run.store)
    for predicted in (from_pyfunc, from_checkpoint):
        assert predicted["row_id"].tolist() == evaluated["row_id"].tolist()
        np.testing.assert_allclose(predicted[list(SEVERITY_COLUMNS)], evaluated[list(SEVERITY_COLUMNS)], atol=1e-5)


def test_prefect_shows_summary_and_progress_artifacts(local_run):
    with get_client(sync_client=True) as client:
        by_key = {artifact.key: artifact for artifact in client.read_latest_artifacts()}
    summary = by_key["spine-training-summary"]
    assert "competition score" in summary.data and "prior baseline" in summary.data
    assert "spinal_canal_stenosis" in summary.data and "mlflow ui --backend-store-uri" in summary.data
    progress = by_key["spine-training-progress"]
    assert progress.type == "progress" and float(progress.data) == 100.0


def test_ingest_is_cached_until_a_csv_or_an_output_changes(prefect_harness, tiny_copy, tmp_path):
    out_dir = tmp_path / "cache"

    @flow
    def ingest_twice(data_dir: str) -> list[str]:
        return [ingest(data_dir, str(out_dir), return_state=True).name for _ in range(2)]

    # A unique data folder, so no earlier test's cache entry applies.
    data_dir = tmp_path / f"data-{uuid.uuid4().hex[:8]}"
    shutil.copytree(tiny_copy, data_dir)
    assert ingest_twice(str(data_dir)) == ["Completed", "Cached"]
    (data_dir / "train.csv").touch()  # same content: still cached
    assert ingest_twice(str(data_dir)) == ["Cached", "Cached"]
    coords = (data_dir / "train_label_coordinates.csv").read_text().splitlines()
    (data_dir / "train_label_coordinates.csv").write_text("\n".join(coords[:-1]) + "\n")
    assert ingest_twice(str(data_dir)) == ["Completed", "Cached"]
    (out_dir / "train_long.parquet").unlink()  # a lost output is rebuilt, not trusted from cache
    assert ingest_twice(str(data_dir)) == ["Completed", "Cached"]
    assert (out_dir / "train_long.parquet").is_file()


def test_volume_store_is_cached_until_a_dicom_or_the_index_changes(prefect_harness, tiny_copy, tmp_path):
    store_root = str(tmp_path / "store")

    @flow
    def store_twice(data_dir: str) -> list[tuple[str, int]]:
        states = [volume_store(data_dir, "test", store_root, 32, 1, return_state=True) for _ in range(2)]
        return [(state.name, state.result().written) for state in states]

    data_dir = tmp_path / f"data-{uuid.uuid4().hex[:8]}"
    shutil.copytree(tiny_copy, data_dir)
    n_series = len(pd.read_csv(data_dir / "test_series_descriptions.csv"))
    assert store_twice(str(data_dir)) == [("Completed", n_series), ("Cached", n_series)]
    dicom = next((data_dir / "test_images").rglob("*.dcm"))
    dicom.write_bytes(dicom.read_bytes())  # rewritten: a new modification time
    assert store_twice(str(data_dir)) == [("Completed", 1), ("Cached", 1)]  # only its series is redone
    (tmp_path / "store" / "index.parquet").unlink()
    assert store_twice(str(data_dir))[0] == ("Completed", 0)


def test_failed_dispatch_fails_the_parent_and_marks_the_run_failed(prefect_harness, tiny_data, tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = PipelineConfig(
        data_dir=str(tiny_data), workdir=str(tmp_path / "out"), tracking_uri=tracking_uri,
        dispatch="work-pool", gpu_deployment="train-on-gpu/does-not-exist", dispatch_timeout_s=30, **TINY_TRAIN,
    )  # fmt: skip
    with pytest.raises(Exception, match="does-not-exist"):
        train_pipeline(config)
    runs = mlflow.MlflowClient(tracking_uri).search_runs(
        [mlflow.MlflowClient(tracking_uri).get_experiment_by_name("rsna-lumbar-spine").experiment_id]
    )
    assert [r.info.status for r in runs] == ["FAILED"]


def test_cli_evaluate_reproduces_the_runs_score(local_run):
    from typer.testing import CliRunner

    from flows.cli import app

    config, result = local_run
    output = CliRunner().invoke(app, ["evaluate", result["run_dir"]])
    assert output.exit_code == 0, output.output
    assert f"competition score {result['val_competition_score']:.4f}" in output.output
    assert "prior baseline" in output.output
