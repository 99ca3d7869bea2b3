"""The default (local dispatch) pipeline under the Prefect test harness, with a real MLflow store, per family."""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from flows.config import PipelineConfig
from flows.train import train_pipeline
from spine_model.core.catalog import RunFolder, Workspace
from spine_model.core.constants import SEVERITY_COLUMNS
from spine_model.inference.frames import inference_frame
from spine_model.inference.predictor import Predictor
from spine_model.pipeline.run import RunInputs
from tasks.data import ingest, volume_store
from tests.conftest import FAMILIES, TINY_TRAIN
from tests.helpers import assert_complete_mlflow_run


@pytest.fixture(scope="module", params=FAMILIES)
def local_run(request, prefect_harness, tiny_data, module_tmp):
    root = module_tmp.mktemp(f"local_run_{request.param}")
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
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the model-training view
    # Artifacts beside the sqlite store, not in whatever folder a process happens to run in.
    store_dir = Path(config.tracking_uri.removeprefix("sqlite:///")).parent
    assert experiment.artifact_location == (store_dir / "mlartifacts").as_uri()
    assert (store_dir / "mlartifacts").is_dir()


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
    # Models-from-code: the serving model is our code file, nothing unpickled when it loads.
    assert serving.metadata.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "python_model.pkl" not in str(serving.metadata.flavors["python_function"])
    from_pyfunc = serving.predict(frame)
    from_checkpoint = Predictor.load(folder.best_checkpoint, folder.priors, device="cpu").predict(frame, run.store)
    # The served model applies the temperatures fitted on the validation studies; the checkpoint alone does not.
    calibrated = pd.read_csv(folder.evaluation_files()["calibrated_submission"])
    for predicted, expected in ((from_pyfunc, calibrated), (from_checkpoint, evaluated)):
        assert predicted["row_id"].tolist() == expected["row_id"].tolist()
        np.testing.assert_allclose(predicted[list(SEVERITY_COLUMNS)], expected[list(SEVERITY_COLUMNS)], atol=1e-5)
    assert (
        serving.metadata.metadata["temperatures"]
        == json.loads(folder.evaluation_files()["calibration"].read_text())["temperatures"]
    )


def test_crops_train_a_localiser_beside_and_the_serving_model_carries_it(local_run, tiny_data, caplog):
    config, result = local_run
    client = mlflow.MlflowClient(config.tracking_uri)
    parent = client.get_run(result["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    if config.model_family == "seed":  # 'auto' trains no localiser for seed
        assert parent.data.params["localiser_mode"] == "off" and not children
        assert parent.data.tags["localiser"] == "no"
        return
    assert parent.data.params["localiser_mode"] == "train" and parent.data.tags["localiser"] == "yes"
    assert len(children) == 1
    localiser = children[0]
    assert localiser.info.status == "FINISHED" and localiser.data.params["model_family"] == "localiser"
    assert {"val_loc_distance_share", "val_prior_loc_distance_share", "val_loc_slice_error"} <= set(
        localiser.data.metrics
    )
    assert [m.step for m in client.get_metric_history(localiser.info.run_id, "train_loss")] == [1, 2]
    artifacts = {item.path for item in client.list_artifacts(localiser.info.run_id, "plots")}
    assert "plots/localiser_examples.png" in artifacts
    version = client.get_model_version_by_alias("spine-localiser", "champion")
    assert version.run_id == localiser.info.run_id
    # The classifier's run and its registered version name the localiser version they carry.
    carried = f"models:/spine-localiser/{version.version}"
    assert parent.data.tags["localiser_model"] == carried
    classifier = client.search_model_versions(f"name = 'spine-net' and run_id = '{parent.info.run_id}'")
    assert [v.tags["localiser_model"] for v in classifier] == [carried]

    mlflow.set_tracking_uri(config.tracking_uri)
    serving = mlflow.pyfunc.load_model(parent.data.tags["serving_model_uri"])
    frame = inference_frame(tiny_data, "test")
    with caplog.at_level(logging.INFO, logger="spine_model.inference.predictor"):
        submission = serving.predict(frame)
    assert len(submission) == 25 * frame["study_id"].nunique()
    assert any("points from localiser" in message for message in caplog.messages)


def test_a_registered_localiser_is_reused_and_a_missing_one_is_a_clear_error(local_run):
    config, result = local_run
    reuse = config.model_copy(
        update={"model_family": "seed", "localiser": "reuse", "run_name": f"reuse-{config.model_family}",
                "compare_after": False, "epochs": 1}
    )  # fmt: skip
    if config.model_family == "seed":  # this run's store holds no localiser
        with pytest.raises(Exception, match="no registered localiser"):
            train_pipeline(reuse)
        # Found out before any training: no checkpoint was written.
        assert not Workspace(config.workdir).run(reuse.run_name).last_checkpoint.exists()
        return
    second = train_pipeline(reuse)  # the crops run registered one
    run = mlflow.MlflowClient(config.tracking_uri).get_run(second["mlflow_run_id"])
    assert run.data.params["localiser_mode"] == "reuse" and run.data.tags["localiser"] == "yes"
    champion = mlflow.MlflowClient(config.tracking_uri).get_model_version_by_alias("spine-localiser", "champion")
    assert run.data.tags["localiser_model"] == f"models:/spine-localiser/{champion.version}"
    assert RunFolder(second["run_dir"]).localiser.best_checkpoint.is_file()


def _artifacts_of(flow_run_id: str) -> dict:
    """The artifacts of one pipeline run and of the flow runs it started, by key (newest first)."""
    with get_client(sync_client=True) as client:
        runs = {str(flow_run_id)}
        for child in client.read_flow_runs():
            if child.parent_task_run_id and str(client.read_task_run(child.parent_task_run_id).flow_run_id) in runs:
                runs.add(str(child.id))
        by_key = {}
        for artifact in sorted(client.read_artifacts(), key=lambda a: a.created, reverse=True):
            if str(artifact.flow_run_id) in runs:
                by_key.setdefault(artifact.key, artifact)
    return by_key


def test_prefect_shows_summary_and_progress_artifacts(local_run):
    config, result = local_run
    run = mlflow.MlflowClient(config.tracking_uri).get_run(result["mlflow_run_id"])
    by_key = _artifacts_of(run.data.tags["prefect.flow_run_id"])
    summary = by_key["spine-training-summary"]
    assert "competition score" in summary.data and "prior baseline" in summary.data
    assert "spinal_canal_stenosis" in summary.data and "mlflow ui --backend-store-uri" in summary.data
    progress = by_key["spine-training-progress"]
    assert progress.type == "progress" and float(progress.data) == 100.0
    if config.model_family == "crops":  # the localiser trained beside it: its table and pictures
        localiser = by_key["spine-localiser-evaluation"]
        assert "val" in localiser.data and "data:image/png;base64," in localiser.data
        assert "spinal_canal_stenosis" in localiser.data and "prior" in localiser.data
        assert "## Localiser (validation studies)" in summary.data


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


def test_failed_dispatch_fails_the_parent_and_marks_the_runs_failed(prefect_harness, tiny_data, tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = PipelineConfig(
        data_dir=str(tiny_data), workdir=str(tmp_path / "out"), tracking_uri=tracking_uri, model_family="crops",
        dispatch="work-pool", gpu_deployment="train-on-gpu/does-not-exist", dispatch_timeout_s=30, **TINY_TRAIN,
    )  # fmt: skip
    with pytest.raises(Exception, match="does-not-exist"):
        train_pipeline(config)
    runs = mlflow.MlflowClient(tracking_uri).search_runs(
        [mlflow.MlflowClient(tracking_uri).get_experiment_by_name("rsna-lumbar-spine").experiment_id]
    )
    assert sorted(r.info.run_name.endswith("-localiser") for r in runs) == [
        False,
        True,
    ]  # the pipeline's and its localiser's
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]


def test_cli_evaluate_reproduces_the_runs_score(local_run):
    from typer.testing import CliRunner

    from flows.cli import app

    config, result = local_run
    output = CliRunner().invoke(app, ["evaluate", result["run_dir"]])
    assert output.exit_code == 0, output.output
    assert f"competition score {result['val_competition_score']:.4f}" in output.output
    assert "prior baseline" in output.output


def test_a_tracking_server_that_does_not_answer_fails_the_run_before_any_image_is_read(
    prefect_harness, tiny_data, tmp_path
):
    from flows.stack import free_port
    from spine_model.pipeline.preflight import SetupError

    config = PipelineConfig(
        data_dir=str(tiny_data), workdir=str(tmp_path / "out"), tracking_uri=f"http://127.0.0.1:{free_port()}",
        **TINY_TRAIN,
    )  # fmt: skip
    with pytest.raises(SetupError, match="does not answer"):
        train_pipeline(config)
    assert not list((tmp_path / "out").rglob("index.parquet"))  # no volume store: no image was decoded
    assert not (tmp_path / "out" / "runs").exists()


def test_the_pipeline_trains_in_two_processes_when_two_gpus_are_asked_for(prefect_harness, tiny_data, tmp_path):
    """gpus=2 without CUDA: torchrun starts 2 CPU processes (gloo); MLflow hears rank 0's epochs once."""
    config = PipelineConfig(
        data_dir=str(tiny_data), workdir=str(tmp_path / "out"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        model_family="crops", localiser="off", compare_after=False, **{**TINY_TRAIN, "gpus": 2},
    )  # fmt: skip
    result = train_pipeline(config)
    assert_complete_mlflow_run(config.tracking_uri, result["mlflow_run_id"], config, result["run_dir"])
    run = mlflow.MlflowClient(config.tracking_uri).get_run(result["mlflow_run_id"])
    assert run.data.tags["training_processes"] == "2" and run.data.params["gpus"] == "2"
    folder = RunFolder(result["run_dir"])
    assert folder.distributed_log.is_file()  # the processes' output, kept in the run folder
    assert len(folder.epochs_log.read_text().splitlines()) == config.epochs
