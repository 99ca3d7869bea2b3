"""The predictor's input: one frame of image references per split or request (study_id, series_id,
instance_number, image_path, series_description, and optional x, y, condition, level), and the
submission's rows completed for every listed study."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from spine_model.core.cells import prior_cells
from spine_model.core.constants import study_ids_of_rows
from spine_model.data.ingest import find_series_files, load_coordinates, load_series_descriptions
from spine_model.data.volumes import SLICE_KEY
from spine_model.evaluation.metric import submission_from_probabilities
from spine_model.inference.prior import POINT_COLUMNS

log = logging.getLogger(__name__)

FRAME_COLUMNS = (
    "study_id", "series_id", "instance_number", "image_path", "series_description", "x", "y", "condition", "level",
)  # fmt: skip


def list_series_files(data_dir: str | Path, split: str = "test", series: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every DICOM file of the given series (default: all of `{split}_series_descriptions.csv`),
    instance numbers from the file names.

    Files whose name is not an integer are skipped and logged; a series without files is logged.
    """
    if series is None:
        series = load_series_descriptions(data_dir, split)
    found = find_series_files(data_dir, split, series)
    if found.odd_names:
        log.warning(
            "skipped %d file(s) whose name is not an instance number, e.g. %s", len(found.odd_names), found.odd_names[0]
        )
    if found.empty:
        log.warning("%d series have no DICOM files under %s, e.g. %s", len(found.empty), found.root, found.empty[0])
    return found.files


def inference_frame(data_dir: str | Path, split: str = "test", use_coordinates: bool = False) -> pd.DataFrame:
    """The predictor's input for a Kaggle-layout split.

    Without coordinates: every file of every listed series (x, y missing). With them (train
    split only): the files plus one row per coordinate row (its instance's file with x, y,
    condition and level), so that the studies' given points are used.
    """
    files = list_series_files(data_dir, split)
    frame = files.assign(x=np.nan, y=np.nan, condition=None, level=None)
    if use_coordinates:
        coordinates = load_coordinates(data_dir).merge(files, on=SLICE_KEY, how="inner", validate="many_to_one")
        frame = pd.concat([frame, coordinates[list(FRAME_COLUMNS)]], ignore_index=True)
    return frame[list(FRAME_COLUMNS)]


def listed_study_ids(data_dir: str | Path, split: str = "test") -> list[int]:
    """Every study that `{split}_series_descriptions.csv` lists, in study order."""
    return sorted(int(s) for s in load_series_descriptions(data_dir, split)["study_id"].unique())


def with_every_study(submission: pd.DataFrame, study_ids: list[int], class_prior: np.ndarray) -> pd.DataFrame:
    """The submission with the class prior's 25 rows for every listed study it lacks (a study with
    no images, or none readable), logged; studies in the listed order, rows within one unchanged."""
    present = study_ids_of_rows(submission["row_id"])
    missing = sorted(set(study_ids) - set(present))
    if not missing:
        return submission
    log.warning(
        "%d listed study(ies) have no images to predict from, e.g. %s; they get the class prior",
        len(missing), missing[0],
    )  # fmt: skip
    filled = pd.concat(
        [submission, submission_from_probabilities({s: prior_cells(class_prior) for s in missing})], ignore_index=True
    )
    order = {study_id: i for i, study_id in enumerate(study_ids)}
    studies = study_ids_of_rows(filled["row_id"]).map(order)
    return filled.iloc[np.argsort(studies.to_numpy(), kind="stable")].reset_index(drop=True)


def validate_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with its optional columns added and ids as integers; a clear error if unusable."""
    required = ["study_id", "series_id", "instance_number", "image_path"]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ValueError(f"prediction input lacks column(s) {missing}; expected {list(FRAME_COLUMNS)}")
    frame = frame.copy()
    for column in ("x", "y"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    for column in ("series_description", "condition", "level"):
        if column not in frame.columns:
            frame[column] = None
    frame[SLICE_KEY] = frame[SLICE_KEY].astype(np.int64)
    return frame


def given_points(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame's rows with x and y, as points."""
    given = frame[frame["x"].notna() & frame["y"].notna()]
    return given.assign(source="given")[POINT_COLUMNS].reset_index(drop=True)
