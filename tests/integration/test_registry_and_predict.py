"""Compare, promote and predict against a real MLflow tracking server (sqlite backend, temp artifacts).

Three pipeline runs with different settings -> the champion is the better of the first two ->
a third, worse run does not take it -> predict with models:/spine-net@champion -> a valid
submission that beats the prior; the same model answers `mlflow models serve` requests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.config import PipelineConfig
from flows.predict import predict
from flows.stack import HOST, LocalStack, free_port
from spine_model.core.constants import SEVERITY_COLUMNS
from spine_model.data.synth import generate_dataset
from spine_model.inference.frames import inference_frame
from spine_model.tracking.registry import CHALLENGER, CHAMPION, MODEL_NAME

pytestmark = pytest.mark.integration
EXPERIMENT = "registry-e2e"


@pytest.fixture(scope="module")
def mlflow_server(module_tmp):
    stack = LocalStack(module_tmp.mktemp("mlflow"), mlflow_port=free_port())
    try:
        stack.start_mlflow_server()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def data(module_tmp) -> Path:
    root = module_tmp.mktemp("registry_data")
    generate_dataset(root, n_studies=40, n_test_studies=10, image_size=64, n_slices=6, seed=5)
    return root


@pytest.fixture(scope="module")
def runs(prefect_harness, mlflow_server, data, module_tmp):
    from flows.train import train_pipeline

    common = {
        "data_dir": str(data), "workdir": str(module_tmp.mktemp("out")), "tracking_uri": mlflow_server.mlflow_url,
        "experiment": EXPERIMENT, "store_size": 48, "image_size": 32, "crop_size": 16, "batch_size": 32,
        "num_workers": 0, "pretrained": False, "val_fraction": 0.25, "preprocess_workers": 1,
    }  # fmt: skip
    client = mlflow.MlflowClient(mlflow_server.mlflow_url)
    results, aliases = {}, {}
    settings = {  # runs of both families compete in one ranking
        "a": {"epochs": 3, "lr": 1e-3, "augment": True},
        "b": {"epochs": 1, "lr": 3e-3},
        # a learning rate that wrecks it
        "c": {"model_family": "crops", "crop_pooling": "channels", "epochs": 1, "lr": 5.0, "localiser": "off"},
    }
    for name, extra in settings.items():
        results[name] = train_pipeline(PipelineConfig(**common, **extra, run_name=name))
        aliases[name] = {
            alias: client.get_model_version_by_alias(MODEL_NAME, alias).run_id for alias in (CHAMPION, CHALLENGER)
        }
    return results, aliases


def test_champion_is_the_better_run_and_a_worse_run_does_not_take_it(runs, mlflow_server):
    results, aliases = runs
    ids = {name: result["mlflow_run_id"] for name, result in results.items()}
    scores = {name: result["val_competition_score"] for name, result in results.items()}
    assert aliases["a"] == {CHAMPION: ids["a"], CHALLENGER: ids["a"]}  # first run: no champion yet
    better = min(("a", "b"), key=scores.get)
    assert aliases["b"] == {CHAMPION: ids[better], CHALLENGER: ids["b"]}
    assert scores["c"] > scores[better]
    assert aliases["c"] == {CHAMPION: ids[better], CHALLENGER: ids["c"]}  # never a silent regression

    client = mlflow.MlflowClient(mlflow_server.mlflow_url)
    champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    assert f"scores {scores[better]:.4f}" in champion.tags["champion_decision"]
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert sorted(v.run_id for v in versions) == sorted(ids.values())  # one version per run, no duplicates


def test_comparison_is_published_as_prefect_artifacts(runs):
    from prefect.client.orchestration import get_client

    results, _ = runs
    with get_client(sync_client=True) as client:
        by_key = {artifact.key: artifact for artifact in client.read_latest_artifacts()}
    ranking = by_key["spine-model-ranking"]
    assert ranking.type == "table"
    rows = json.loads(ranking.data) if isinstance(ranking.data, str) else ranking.data
    assert [row["rank"] for row in rows] == [1, 2, 3]
    assert {"run_id", "name", "settings", "score", "prior", "accuracy", "F1 Sev", "date"} <= set(rows[0])
    assert "best first" in by_key["spine-model-comparison"].data


def test_compare_command_ranks_the_runs(runs, mlflow_server):
    results, _ = runs
    output = CliRunner().invoke(
        app, ["compare", "--experiment", EXPERIMENT, "--tracking-uri", mlflow_server.mlflow_url, "--no-update-registry"]
    )
    assert output.exit_code == 0, output.output
    best = min(results.values(), key=lambda r: r["val_competition_score"])
    first_row = next(line for line in output.output.splitlines() if "│    1 │" in line)
    assert best["mlflow_run_id"][:12] in first_row


def test_predict_with_the_champion_beats_the_prior(runs, mlflow_server, data, tmp_path):
    out = tmp_path / "submission.csv"
    result = predict(
        str(data), "models:/spine-net@champion", "test", str(out), tracking_uri=mlflow_server.mlflow_url,
        workdir=str(tmp_path / "out"),
    )  # fmt: skip
    submission = pd.read_csv(out)
    test_studies = pd.read_csv(data / "test_series_descriptions.csv")["study_id"].unique()
    assert list(submission.columns) == ["row_id", *SEVERITY_COLUMNS]
    assert len(submission) == 25 * len(test_studies)
    assert set(submission["row_id"]) == set(pd.read_csv(data / "sample_submission.csv")["row_id"])
    np.testing.assert_allclose(submission[list(SEVERITY_COLUMNS)].sum(axis=1), 1.0)
    scores = result["scores"]
    assert scores["score"] < scores["prior_score"], scores


def test_mlflow_models_serve_answers_with_submission_rows(runs, mlflow_server, data, tmp_path):
    port = free_port()
    frame = inference_frame(data, "test")
    study = frame[frame["study_id"] == frame["study_id"].iloc[0]]
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", "models:/spine-net@champion",
         "--env-manager", "local", "-h", HOST, "-p", str(port)],
        env={**mlflow_server.env(), "MLFLOW_TRACKING_URI": mlflow_server.mlflow_url},
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://{HOST}:{port}/ping", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "model server did not start"
                time.sleep(1)
        body = json.dumps({"dataframe_split": study.drop(columns=["x", "y"]).to_dict(orient="split")}).encode()
        request = urllib.request.Request(
            f"http://{HOST}:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = pd.DataFrame(json.loads(response.read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert len(predictions) == 25
    assert list(predictions.columns) == ["row_id", *SEVERITY_COLUMNS]
    np.testing.assert_allclose(predictions[list(SEVERITY_COLUMNS)].sum(axis=1), 1.0)


def test_a_run_validated_on_other_studies_is_weighed_after_a_rebase(runs, mlflow_server, data, tmp_path):
    """A new split_seed: the champion is kept and the decision says how to go on; `spine compare
    --rebase` re-scores the champion on the new run's validation studies and decides on that."""
    from flows.train import train_pipeline
    from spine_model.data.ingest import load_labels
    from spine_model.evaluation.metric import competition_score, solution_from_labels

    results, _ = runs
    client = mlflow.MlflowClient(mlflow_server.mlflow_url)
    champion_version = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    champion = champion_version.run_id
    common = {
        "data_dir": str(data), "workdir": str(tmp_path / "out"), "tracking_uri": mlflow_server.mlflow_url,
        "experiment": EXPERIMENT, "store_size": 48, "image_size": 32, "num_workers": 0, "pretrained": False,
        "val_fraction": 0.25, "preprocess_workers": 1, "epochs": 3, "augment": True, "split_seed": 7,
        "compare_after": False,
    }  # fmt: skip
    new = train_pipeline(PipelineConfig(**common, run_name="resplit"))  # lr and batch size: the family's
    params = client.get_run(new["mlflow_run_id"]).data.params
    assert (params["lr"], params["batch_size"], params["family_defaults"]) == ("0.01", "64", "lr, batch_size")
    shown = CliRunner().invoke(app, ["compare", "--experiment", EXPERIMENT, "--tracking-uri", mlflow_server.mlflow_url])
    assert shown.exit_code == 0, shown.output
    said = " ".join(shown.output.split())  # the decision names the run on other studies and the way on
    assert f"run {new['mlflow_run_id']}" in said and "`spine compare --rebase`" in said, shown.output
    assert client.get_model_version_by_alias(MODEL_NAME, CHAMPION).run_id == champion

    rebased = CliRunner().invoke(
        app, ["compare", "--experiment", EXPERIMENT, "--tracking-uri", mlflow_server.mlflow_url, "--rebase",
              "--workdir", str(tmp_path / "out")],
    )  # fmt: skip
    assert rebased.exit_code == 0, rebased.output
    # The champion's score on the new run's validation studies, computed apart: predict them with
    # their labelled points and score against train.csv's labels.
    record = json.loads((Path(new["run_dir"]) / "run.json").read_text())
    studies = record["val_study_ids"]
    frame = inference_frame(data, "train", use_coordinates=True)
    out = tmp_path / "champion_on_new_studies.csv"
    predict(
        str(data), f"models:/{MODEL_NAME}/{champion_version.version}", "train", str(out), use_coordinates=True,
        tracking_uri=mlflow_server.mlflow_url, workdir=str(tmp_path / "out"),
    )  # fmt: skip
    labels = load_labels(data)
    submission = pd.read_csv(out)
    on_studies = submission[submission["row_id"].str.split("_", n=1).str[0].astype(int).isin(studies)]
    expected = competition_score(solution_from_labels(labels[labels["study_id"].isin(studies)]), on_studies)
    assert len(frame) > 0 and f"re-scored on the candidate's {len(studies)} validation studies: {expected:.4f}" in (
        " ".join(rebased.output.split())
    ), rebased.output
    version = client.search_model_versions(f"name = '{MODEL_NAME}' and run_id = '{new['mlflow_run_id']}'")[0]
    assert float(version.tags["champion_score_before"]) == pytest.approx(expected, abs=1e-9)
    wins = new["val_competition_score"] < expected and new["val_competition_score"] < new["val_prior_score"]
    now = client.get_model_version_by_alias(MODEL_NAME, CHAMPION).run_id
    assert now == (new["mlflow_run_id"] if wins else champion), rebased.output
