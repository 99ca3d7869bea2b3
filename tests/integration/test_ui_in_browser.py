"""The Prefect and MLflow UIs as a person meets them, in headless Chromium: the stack's Prefect UI,
Deployments -> spine-pipeline -> Custom run, the form filled by its titles and submitted; the run
completes, its own page shows the training progress and the summary (score beside the prior, the
child flow run that trained), and the MLflow link opens the run's charts in the model-training view.

Screenshots go to $SPINE_TEST_ARTIFACTS (default test-artifacts/): the form, the finished run's
summary and the MLflow run. Chromium is Debian's (`make browser` installs it as root, as on CI);
elsewhere, without it, the test skips and says why.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from tests.integration import browser

pytestmark = pytest.mark.integration
SHOTS = Path(os.environ.get("SPINE_TEST_ARTIFACTS", "test-artifacts")).resolve()


@pytest.fixture(scope="module")
def chromium(module_tmp):
    reason = browser.missing()
    if reason:
        if os.geteuid() == 0:  # root could have installed it (`make test` does): on CI this must run
            pytest.fail(f"{reason}; `make browser` installs it")
        pytest.skip(reason)
    driver = browser.start(module_tmp.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


def _deployment_id(stack) -> str:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{stack.api_url}/deployments/name/train-pipeline/spine-pipeline", timeout=30) as r:
        return json.load(r)["id"]


def _submitted_run(stack, experiment: str, timeout_s: float = 60) -> str:
    """The flow run the form created: the one whose config names this test's own experiment (the data
    folder is shared with the other tests on this session's stack, which run flows of it too)."""
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout_s
    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            recent = client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=200)
            runs = [r for r in recent if r.parameters.get("config", {}).get("experiment") == experiment]
            if runs:
                assert len(runs) == 1, [r.name for r in runs]
                return str(runs[0].id)
            time.sleep(1)
    raise AssertionError(f"no flow run for experiment {experiment} after submitting the form")


def _wait_final(stack, run_id: str, timeout_s: float = 900):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout_s
    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if (run.state and run.state.is_final()) or time.monotonic() > deadline:
                return run
            time.sleep(3)


def _artifact(stack, run_id: str, key: str):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        on_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), key=ArtifactFilterKey(any_=[key]))
        found = client.read_artifacts(artifact_filter=on_run)
    assert found, f"no {key} artifact on flow run {run_id}"
    return found[0]


def test_a_person_runs_the_pipeline_from_the_prefect_form(stack, chromium, tiny_data, tmp_path):
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver = chromium
    driver.get(f"{stack.ui_url}/deployments/deployment/{_deployment_id(stack)}/run")
    browser.wait_for(driver, ".schema-form-property__label")
    labels = [e.text for e in driver.find_elements("css selector", ".schema-form-property__label")]
    assert labels[1].startswith("Data: data folder"), labels[:3]  # first after the config object's own label
    assert "Property is type" not in browser.page_text(driver)
    for title, value in (
        ("Data: data folder", str(tiny_data)), ("Data: validation share", 0.25), ("Data: volume store size", 32),
        ("Data: store-building processes", 1), ("Model: ImageNet weights", False),
        ("Model: slice size (pixels, seed)", 32), ("Model: crop size (pixels, crops)", 16),
        ("Model: slice pooling", "channels"), ("Localiser: localiser (stage 1)", "off"),
        ("Training: training epochs", 2), ("Training: batch size", 16),
        ("Hardware: loader worker processes", 0), ("Tracking: outputs folder", str(tmp_path / "out")),
        ("Tracking: MLflow experiment", "browser-check"),
    ):  # fmt: skip
        browser.fill(driver, title, value)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(SHOTS / "prefect-run-form.png"))
    browser.submit(driver)
    run_id = _submitted_run(stack, "browser-check")  # the UI shows the deployment's runs (or the run)

    run = _wait_final(stack, run_id)
    assert run.state.is_completed(), f"{run.state}; logs in {stack.state_dir / 'logs'}"
    assert run.parameters["config"]["data_dir"] == str(tiny_data) and run.parameters["config"]["epochs"] == 2

    # The run the person started shows the training that ran on the gpu pool, and the summary.
    progress = _artifact(stack, run_id, "spine-training-progress")
    assert float(progress.data) == 100.0 and progress.description.startswith("classifier: epoch 2/2")
    summary = _artifact(stack, run_id, "spine-training-summary")
    driver.get(f"{stack.ui_url}/artifacts/artifact/{summary.id}")
    browser.wait_for(driver, ".markdown-renderer")
    time.sleep(2)
    text = browser.page_text(driver)
    assert re.search(r"^model \d+\.\d{4}", text, re.M) and re.search(r"^prior baseline \d+\.\d{4}", text, re.M), text
    assert "Trained by (classifier):" in text
    driver.save_screenshot(str(SHOTS / "prefect-finished-run.png"))

    # The MLflow run exists, and its link opens the run's charts in the model-training view.
    runs = mlflow.MlflowClient(stack.mlflow_url).search_runs(
        [mlflow.MlflowClient(stack.mlflow_url).get_experiment_by_name("browser-check").experiment_id],
        f"tags.`prefect.flow_run_id` = '{run_id}'",
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    link = re.search(r"MLflow: (\S+)", text).group(1)
    assert runs[0].info.run_id in link and "workflowType=machine_learning" in link
    driver.get(link)
    browser.wait_for(driver, "body")
    deadline = time.monotonic() + 60
    while "val_loss" not in browser.page_text(driver) and time.monotonic() < deadline:
        time.sleep(1)
    shown = browser.page_text(driver)
    assert "Model metrics" in shown and "val_loss" in shown and "train_loss" in shown, shown[:2000]
    assert "Token Usage" not in shown  # not the GenAI overview
    driver.save_screenshot(str(SHOTS / "mlflow-run-charts.png"))
