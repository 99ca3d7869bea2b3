"""Checks shared by the pipeline tests: what one MLflow run must hold after a pipeline run."""

from __future__ import annotations

import mlflow
import numpy as np
import torch

from flows.config import PipelineConfig
from spine_model.families import get_family
from spine_model.families.base import model_inputs
from spine_model.pipeline.run import RunInputs
from spine_model.training.checkpoints import load_checkpoint


def _artifact_paths(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def assert_complete_mlflow_run(tracking_uri: str, run_id: str, config: PipelineConfig, run_dir: str) -> None:
    """Params, per-epoch metrics, final metrics, reports, plots, weights and a model that reloads."""
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    for field in PipelineConfig.model_fields:
        assert field in params, field
    assert params["epochs"] == str(config.epochs) and params["dispatch"] == config.dispatch
    assert params["model_family"] == config.model_family
    # what trained, the family's defaults filled in, and which settings were left to the family
    assert float(params["lr"]) == config.lr and int(params["batch_size"]) == config.batch_size
    assert params["family_defaults"] == (", ".join(config.family_defaults) or "none")
    assert params["model_summary"].startswith(config.model_family)
    assert int(params["data_train_studies"]) > 0 and int(params["data_val_points"]) > 0
    assert "data_train_labels_severe" in params
    for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"):
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == list(range(1, config.epochs + 1)), key
    metrics = run.data.metrics
    assert metrics["validate_errors"] == 0 and metrics["validate_checked_dicom_files"] > 0  # checked first
    for key in (
        "val_competition_score",
        "val_prior_score",
        "final_val_accuracy",
        "val_severe_f1",
        "val_moderate_precision",
        "val_normal_mild_recall",
        "val_log_loss_spinal_canal_stenosis",
    ):
        assert key in metrics, key
    assert run.data.tags["prefect.flow_run_id"]
    assert run.data.tags["prefect.train_flow_run_id"]
    artifacts = _artifact_paths(client, run_id)
    for expected in (
        "reports/classification_reports.json",
        "reports/classification_reports.txt",
        "plots/confusion_matrix.png",
        "plots/training_curves.png",
        "run/run.json",
        "run/priors.json",
        "weights/best.pt",
    ):
        assert expected in artifacts, (expected, sorted(artifacts))

    # The logged model predicts a real batch of validation points exactly as the trained weights do.
    trained, model_config = load_checkpoint(client.download_artifacts(run_id, "weights/best.pt"))
    assert model_config.model_family == config.model_family
    run_inputs = RunInputs.load(run_dir)
    points = run_inputs.record.split.select(run_inputs.points, "val")
    family = get_family(model_config.model_family)
    dataset = family.dataset(points, run_inputs.store, model_config, train=False)
    inputs, _ = model_inputs(family, dataset, model_config, 4)
    mlflow.set_tracking_uri(tracking_uri)
    logged = mlflow.pytorch.load_model(run.data.tags["model_uri"])
    with torch.no_grad():
        expected = trained.eval()(*inputs)
        torch.testing.assert_close(logged(*inputs), expected)
    assert np.isfinite(expected.numpy()).all()


def cli_options(settings: dict) -> list[str]:
    """`spine train` options for pipeline settings: --key value, or --key / --no-key for flags."""
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag if value else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)]
    return flags
