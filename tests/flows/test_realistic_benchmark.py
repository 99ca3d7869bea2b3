"""On data that knows its true posteriors, the limit and the share of the attainable gain stand beside
every score, and calibration is shown: the run's evaluation, its MLflow metrics and pictures, the
Prefect summary, and `spine predict`'s scoring of the test split."""

from __future__ import annotations

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.config import PipelineConfig
from flows.predict import predict
from flows.train import train_pipeline
from spine_model.core.catalog import RunFolder
from spine_model.core.constants import CONDITIONS
from tests.conftest import TINY_TRAIN


@pytest.fixture(scope="module")
def realistic_run(prefect_harness, tiny_realistic, module_tmp):
    root = module_tmp.mktemp("realistic_run")
    config = PipelineConfig(
        data_dir=str(tiny_realistic), workdir=str(root / "out"), tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        model_family="crops", **{**TINY_TRAIN, "localiser": "off"},
    )  # fmt: skip
    return config, train_pipeline(config), root


def test_the_run_logs_the_limit_the_share_and_its_calibration(realistic_run):
    config, result, _ = realistic_run
    client = mlflow.MlflowClient(config.tracking_uri)
    metrics = client.get_run(result["mlflow_run_id"]).data.metrics
    limit, prior, score = metrics["val_limit"], metrics["val_prior_score"], metrics["val_competition_score"]
    assert 0 < limit < prior
    assert metrics["val_share_of_attainable_gain"] == pytest.approx((prior - score) / (prior - limit))
    assert {f"val_ece_{condition}" for condition in CONDITIONS} <= set(metrics)
    plots = {artifact.path for artifact in client.list_artifacts(result["mlflow_run_id"], "plots")}
    assert "plots/reliability.png" in plots
    assert RunFolder(result["run_dir"]).evaluation_files()["reliability_png"].stat().st_size > 10_000
    summary = RunFolder(result["run_dir"]).evaluation_files()["summary"].read_text()
    assert "limit" in summary and "share of the attainable gain" in summary
    with get_client(sync_client=True) as prefect:
        found = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["spine-training-summary"]))
        )
    assert any("limit (true posteriors)" in artifact.data for artifact in found)


def test_predicting_the_test_split_scores_it_beside_the_prior_and_the_limit(realistic_run, tiny_realistic):
    config, _, root = realistic_run
    out = root / "submission.csv"
    result = predict(
        str(tiny_realistic), "models:/spine-net@champion", "test", str(out), tracking_uri=config.tracking_uri,
        workdir=str(root / "out"), workers=1,
    )  # fmt: skip
    scores = result["scores"]
    assert scores["limit"] < scores["prior_score"]
    share = (scores["prior_score"] - scores["score"]) / (scores["prior_score"] - scores["limit"])
    assert scores["share_of_attainable_gain"] == pytest.approx(share)
    assert {f"ece_{condition}" for condition in CONDITIONS} <= set(scores)
    assert (root / "submission_reliability.png").stat().st_size > 10_000
