"""`predict`: a registered (or any pyfunc) model over a Kaggle-layout split -> submission.csv."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from spine_model import tracking
from spine_model.core.catalog import CHAMPION_URI, DEFAULT_WORKDIR, Workspace
from spine_model.evaluation.metric import describe_scores
from tasks.data import preflight_task, volume_store
from tasks.predict import inference_frame_task, predict_task, score_task, store_size_task


@flow(name="predict", log_prints=True)
def predict(
    data_dir: str,
    model_uri: str = CHAMPION_URI,
    split: str = "test",
    out: str = "submission.csv",
    use_coordinates: bool = False,
    tracking_uri: str | None = None,
    workdir: str = str(DEFAULT_WORKDIR),
    workers: int | None = None,
) -> dict:
    """Predict every study of `{split}_series_descriptions.csv`; 25 normalised rows per study.

    The split's series are decoded once into a volume store of the model's size (under workdir,
    resumable), which the model then reads. Without coordinates (the Kaggle test set has none) the
    model's coordinate prior picks slice and point; `use_coordinates` uses
    train_label_coordinates.csv where it has rows. When the data folder has test_solution.csv
    (synthetic data does), the test split's submission is scored beside the prior baseline.
    """
    uri = tracking.resolve_tracking_uri(tracking_uri)
    preflight_task(data_dir, workdir, uri, split)
    frame, study_ids = inference_frame_task(data_dir, split, use_coordinates)
    size = store_size_task(model_uri, uri)
    store_root = Workspace(workdir).dataset(data_dir).volume_store(split, size)
    store = volume_store(data_dir, split, str(store_root), size, workers)
    result = predict_task(model_uri, frame, store.root, str(Path(out).resolve()), uri, study_ids)
    scores = score_task(data_dir, result["submission"], result["class_prior"]) if split == "test" else None
    if scores:
        get_run_logger().info("%s", describe_scores(scores))
    return {**result, "scores": scores}
