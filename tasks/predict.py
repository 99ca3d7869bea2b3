"""Prediction tasks: the input frame of a data folder, the model's submission, its score."""

from __future__ import annotations

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from spine_model.core.files import atomic_write_csv
from spine_model.inference.frames import inference_frame, listed_study_ids, with_every_study
from spine_model.pipeline.publish import score_step
from spine_model.serving.pyfunc import load_serving_model, predict_with_model, serving_store_size
from tasks.retry import unless_bad_data


@task(name="inference-frame", retries=2, retry_delay_seconds=5, retry_condition_fn=unless_bad_data)
def inference_frame_task(data_dir: str, split: str, use_coordinates: bool) -> tuple[pd.DataFrame, list[int]]:
    """The predictor's input, and every study the split lists (each gets its 25 rows)."""
    frame, study_ids = inference_frame(data_dir, split, use_coordinates), listed_study_ids(data_dir, split)
    get_run_logger().info(
        "%d image(s) of %d studies to predict (%d listed)", len(frame), frame["study_id"].nunique(), len(study_ids)
    )
    return frame, study_ids


@task(name="model-store-size", retries=2, retry_delay_seconds=5)
def store_size_task(model_uri: str, tracking_uri: str) -> int:
    """The volume store size the model reads (its metadata; the model itself is not loaded)."""
    return serving_store_size(model_uri, tracking_uri)


@task(name="predict", cache_policy=NO_CACHE)
def predict_task(
    model_uri: str, frame: pd.DataFrame, store_root: str, out_path: str, tracking_uri: str, study_ids: list[int]
) -> dict:
    """Write the submission CSV, 25 rows for each of `study_ids` (the class prior's for a listed
    study without images); returns its path and the model's class prior (for the baseline)."""
    model = load_serving_model(model_uri, tracking_uri)
    submission, prior = predict_with_model(model, frame, store_root)
    submission = with_every_study(submission, study_ids, prior)
    atomic_write_csv(out_path, submission)  # a reader (or an interrupted run) never sees half a file
    return {"submission": out_path, "rows": len(submission), "class_prior": prior.tolist()}


@task(name="score-submission")
def score_task(data_dir: str, submission_path: str, class_prior: list) -> dict[str, float] | None:
    """Score against `test_solution.csv` when the data folder has one (synthetic data does)."""
    return score_step(data_dir, submission_path, class_prior)
