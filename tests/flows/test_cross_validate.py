"""`cross-validate` in this process: K folds, nested MLflow runs, the out-of-fold score and its
calibration, one served ensemble, lineage and a model card; a stopped cross-validation resumes
without retraining the folds that finished."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from flows.config import CVConfig
from flows.cv import cross_validate
from flows.ensemble import ensemble
from spine_model.core.catalog import CVFolder
from spine_model.core.constants import SEVERITY_COLUMNS
from spine_model.inference.frames import inference_frame
from spine_model.inference.predictor import Predictor
from spine_model.pipeline.publish import read_model_uris
from spine_model.pipeline.run import RunInputs, read_folds
from tests.conftest import TINY_TRAIN

FOLDS = 3


@pytest.fixture(scope="module")
def cv_run(prefect_harness, tiny_realistic, module_tmp):
    root = module_tmp.mktemp("cv")
    config = CVConfig(
        data_dir=str(tiny_realistic), workdir=str(root / "out"), tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        model_family="crops", folds=FOLDS, validate_first=False, **{**TINY_TRAIN, "epochs": 1, "localiser_epochs": 1},
    )  # fmt: skip
    return config, cross_validate(config)


def test_each_fold_is_a_nested_run_and_the_parent_holds_the_out_of_fold_score(cv_run, tiny_realistic):
    config, result = cv_run
    client = mlflow.MlflowClient(config.tracking_uri)
    parent = client.get_run(result["mlflow_run_id"])
    experiment = parent.info.experiment_id
    nested = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    folds = [run for run in nested if "cv_fold" in run.data.tags]
    assert len(folds) == FOLDS and {run.info.status for run in nested} == {"FINISHED"}
    assert all("val_competition_score" in run.data.metrics for run in folds)  # each fold scored on its own studies
    metrics = parent.data.metrics
    assert {"oof_competition_score", "oof_prior_score", "fold_score_mean", "fold_score_std", "val_limit"} <= set(
        metrics
    )
    # The out-of-fold predictions cover every study once, each by the fold that did not train on it.
    cv = CVFolder(result["run_dir"])
    predictions = pd.read_csv(cv.summary_files()["predictions"])
    assigned = read_folds(cv.root)
    assert predictions.groupby("fold")["row_id"].count().sum() == 25 * len(assigned.fold_of)
    studies = predictions["row_id"].str.split("_", n=1).str[0].astype(int)
    assert (studies.map(assigned.fold_of) == predictions["fold"]).all()
    assert parent.data.params["data_val_studies_sha"] == assigned.fingerprint()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "out_of_fold")}
    assert "out_of_fold/oof_submission.csv" in artifacts
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "plots")} >= {
        "plots/reliability_before.png", "plots/reliability_after.png"
    }  # fmt: skip


def test_the_served_ensemble_averages_the_folds_and_applies_the_calibration(cv_run, tiny_realistic):
    config, result = cv_run
    cv = CVFolder(result["run_dir"])
    mlflow.set_tracking_uri(config.tracking_uri)
    uri = read_model_uris(cv.root)["serving_model_uri"]
    served = mlflow.pyfunc.load_model(uri)
    assert served.metadata.metadata["members"] == FOLDS
    temperatures = json.loads(cv.summary_files()["calibration"].read_text())["temperatures"]
    assert served.metadata.metadata["temperatures"] == temperatures
    frame = inference_frame(tiny_realistic, "test")
    members = [cv.fold(k).best_checkpoint for k in range(FOLDS)]
    first = RunInputs.load(cv.fold(0).root)
    expected = Predictor.load(
        members, first.folder.priors, device="cpu", localiser=cv.localiser.best_checkpoint, temperatures=temperatures
    ).predict(frame)
    predicted = served.predict(frame)
    assert predicted["row_id"].tolist() == expected["row_id"].tolist()
    np.testing.assert_allclose(predicted[list(SEVERITY_COLUMNS)], expected[list(SEVERITY_COLUMNS)], atol=1e-5)
    alone = Predictor.load(members[0], first.folder.priors, device="cpu", localiser=cv.localiser.best_checkpoint)
    assert not np.allclose(alone.predict(frame)[list(SEVERITY_COLUMNS)], expected[list(SEVERITY_COLUMNS)])


def test_the_run_records_its_data_and_folds_and_the_version_has_a_model_card(cv_run):
    config, result = cv_run
    client = mlflow.MlflowClient(config.tracking_uri)
    inputs = client.get_run(result["mlflow_run_id"]).inputs.dataset_inputs
    contexts = {i.tags[0].value: i.dataset for i in inputs}
    assert set(contexts) == {"training", "validation"}
    assert contexts["validation"].digest.startswith("folds-")
    (version,) = client.search_model_versions(f"run_id = '{result['mlflow_run_id']}'")
    assert f"{FOLDS}-fold cross-validation" in version.description and "out-of-fold score" in version.description
    assert "spine predict" in version.description


def test_a_stopped_cross_validation_resumes_without_retraining_the_folds_that_finished(cv_run):
    config, result = cv_run
    cv = CVFolder(result["run_dir"])
    kept = {k: cv.fold(k).best_checkpoint.stat().st_mtime_ns for k in range(FOLDS)}
    # As if the run had been stopped while fold 2 trained: its model was never logged.
    uris = cv.fold(2).model_uris
    uris.unlink()
    resumed = cross_validate(CVConfig(resume=result["run_dir"]))
    assert resumed["mlflow_run_id"] == result["mlflow_run_id"]  # the same parent run, finished again
    assert cv.fold(0).best_checkpoint.stat().st_mtime_ns == kept[0]
    assert cv.fold(1).best_checkpoint.stat().st_mtime_ns == kept[1]
    assert "model_uri" in read_model_uris(cv.fold(2).root)
    run = mlflow.MlflowClient(config.tracking_uri).get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"


def test_an_ensemble_of_cross_validations_is_scored_out_of_fold_and_served(cv_run):
    config, result = cv_run
    combined = ensemble([result["run_dir"], result["run_dir"]], run_name="twice", compare_after=False)
    # The same cross-validation twice: the average of its out-of-fold predictions is itself.
    assert combined["oof_competition_score"] == pytest.approx(result["oof_competition_score"], abs=1e-9)
    client = mlflow.MlflowClient(config.tracking_uri)
    run = client.get_run(combined["mlflow_run_id"])
    assert run.data.params["ensemble_members"] == str(2 * FOLDS) and run.data.params["model_family"] == "ensemble"
    mlflow.set_tracking_uri(config.tracking_uri)
    served = mlflow.pyfunc.load_model(run.data.tags["serving_model_uri"])
    assert served.metadata.metadata["members"] == 2 * FOLDS
