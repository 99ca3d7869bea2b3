"""Checks before any image is read: data folder, output folder, tracking server; one line each."""

from __future__ import annotations

import shutil

import pytest

from flows.stack import free_port
from spine_model.data.ingest import DataError
from spine_model.pipeline.preflight import SetupError, check_tracking, preflight


def test_a_ready_machine_passes(tiny_data, tmp_path):
    preflight(tiny_data, tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}")
    preflight(tiny_data, tmp_path / "out", str(tmp_path / "mlruns"), split="test")


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("train.csv", r"lacks train.csv: expected the Kaggle layout"),
        ("train_images", r"lacks train_images"),
        ("train_series_descriptions.csv", r"lacks train_series_descriptions.csv"),
    ],
)
def test_a_data_folder_without_its_files_is_one_line(tiny_copy, tmp_path, missing, message):
    target = tiny_copy / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DataError, match=message):
        preflight(tiny_copy, tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_an_output_folder_that_cannot_be_written_is_one_line(tiny_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SetupError, match=r"output folder .*a-file/out is not writable"):
        preflight(tiny_data, blocker / "out", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(SetupError, match="is not writable"):
        preflight(tiny_data, tmp_path / "out", f"sqlite:///{blocker / 'mlflow.db'}")


def test_a_tracking_server_that_does_not_answer_is_one_line():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SetupError, match=rf"MLflow tracking server {url} does not answer \(.*refused"):
        check_tracking(url, timeout_s=2)
