"""Predictions for studies: slice order, a coordinate prior where no coordinates are given, submission rows.

The input is one frame of image references, the same for the CLI, the Prefect flow and the MLflow
pyfunc model: study_id, series_id, instance_number, image_path, series_description, and optional
x, y. Rows with x and y are used as given (validation data). Series whose rows have no
coordinates (the Kaggle test set gives none) get, for every condition x level read on that series
type, the slice and point of the coordinate prior, slices ordered by ImagePositionPatient.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from torch.utils.data import DataLoader

from spine_model.constants import CONDITION_SERIES, CONDITIONS, LEVELS, images_dir
from spine_model.dataset import image_tensor, normalised_point
from spine_model.dicom import DicomReadError, read_pixels, slice_position, to_uint8
from spine_model.evaluate import predict_logits, softmax, study_probabilities
from spine_model.ingest import load_coordinates, load_series_descriptions
from spine_model.metrics import submission_from_probabilities
from spine_model.model import SpineNet
from spine_model.parallel import parallel_map
from spine_model.train import load_checkpoint, resolve_device

log = logging.getLogger(__name__)

FRAME_COLUMNS = ("study_id", "series_id", "instance_number", "image_path", "series_description", "x", "y")
SERIES_KEY = ["study_id", "series_id"]


# --- slice order ----------------------------------------------------------------------------------


def _header(job: tuple[int, str]) -> tuple[int, float, int, int, str]:
    """(index, position along the slice normal, rows, columns, error) of one DICOM file."""
    index, path = job
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return index, slice_position(ds), int(ds.Rows), int(ds.Columns), ""
    except Exception as error:  # noqa: BLE001 - any unreadable header is a counted skip
        return index, float("nan"), 0, 0, f"{type(error).__name__}: {error}"


def index_slices(files: pd.DataFrame, workers: int | None = None, progress: bool = False) -> pd.DataFrame:
    """Add slice_index / n_slices (order by ImagePositionPatient within each series), rows, columns.

    `files` needs study_id, series_id and image_path. Files whose header cannot be read are
    dropped, counted and logged.
    """
    files = files.reset_index(drop=True)
    jobs = list(enumerate(files["image_path"].astype(str)))
    headers = sorted(parallel_map(_header, jobs, workers, "read slice positions", "file", progress))
    files = files.assign(
        position=[h[1] for h in headers], rows=[h[2] for h in headers], columns=[h[3] for h in headers]
    )
    failed = [(files["image_path"].iloc[h[0]], h[4]) for h in headers if h[4]]
    if failed:
        log.warning("skipped %d file(s) without a readable position, e.g. %s: %s", len(failed), *failed[0])
        files = files[files["position"].notna()]
    files = files.sort_values([*SERIES_KEY, "position", "instance_number"])
    grouped = files.groupby(SERIES_KEY, sort=False)
    return files.assign(slice_index=grouped.cumcount(), n_slices=grouped["position"].transform("size")).reset_index(
        drop=True
    )


def list_series_files(data_dir: str | Path, split: str = "test", series: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every DICOM file of the given series (default: all of `{split}_series_descriptions.csv`),
    instance numbers from the file names.

    Files whose name is not an integer are skipped and logged; a series without files is logged.
    """
    if series is None:
        series = load_series_descriptions(data_dir, split)
    series = series[[*SERIES_KEY, "series_description"]].drop_duplicates()
    root = Path(data_dir) / images_dir(split)
    rows, odd_names, empty = [], [], []
    for study_id, series_id, description in series.itertuples(index=False):
        paths = sorted((root / str(study_id) / str(series_id)).glob("*.dcm"))
        if not paths:
            empty.append((study_id, series_id))
        for path in paths:
            if not path.stem.isdigit():
                odd_names.append(str(path))
                continue
            rows.append((study_id, series_id, int(path.stem), str(path), description))
    if odd_names:
        log.warning("skipped %d file(s) whose name is not an instance number, e.g. %s", len(odd_names), odd_names[0])
    if empty:
        log.warning("%d series have no DICOM files under %s, e.g. %s", len(empty), root, empty[0])
    return pd.DataFrame(rows, columns=["study_id", "series_id", "instance_number", "image_path", "series_description"])


# --- coordinate prior -----------------------------------------------------------------------------


@dataclass
class CoordinatePrior:
    """Mean relative slice position and normalised x, y per condition x level x series description.

    Learned on the training split; a start that a learned localiser can replace behind `point`.
    """

    table: pd.DataFrame  # condition, level, series_description, slice, x, y, n

    @classmethod
    def fit(cls, coordinates: pd.DataFrame, slices: pd.DataFrame) -> CoordinatePrior:
        """coordinates: long-table rows (x, y, condition, level, series_description);
        slices: index_slices output for their series (slice_index, n_slices, rows, columns)."""
        merged = coordinates.merge(
            slices[[*SERIES_KEY, "instance_number", "slice_index", "n_slices", "rows", "columns"]],
            on=[*SERIES_KEY, "instance_number"],
        )
        if merged.empty:
            raise ValueError("no coordinate row matches an indexed slice: cannot learn a coordinate prior")
        merged = merged.assign(
            slice=np.where(merged["n_slices"] > 1, merged["slice_index"] / (merged["n_slices"] - 1).clip(lower=1), 0.5),
            x=merged["x"] / merged["columns"],
            y=merged["y"] / merged["rows"],
        )
        table = (
            merged.groupby(["condition", "level", "series_description"])
            .agg(slice=("slice", "mean"), x=("x", "mean"), y=("y", "mean"), n=("x", "size"))
            .reset_index()
        )
        return cls(table)

    def point(self, condition: str, level: str, available: set[str]) -> tuple[str, float, float, float] | None:
        """(series_description, relative slice, x, y) for a condition x level among the available
        series descriptions: the condition's usual series first, else the most frequent one."""
        rows = self.table[
            (self.table["condition"] == condition)
            & (self.table["level"] == level)
            & self.table["series_description"].isin(available)
        ]
        if rows.empty:
            return None
        usual = rows[rows["series_description"] == CONDITION_SERIES[condition]]
        best = (usual if not usual.empty else rows.sort_values("n", ascending=False)).iloc[0]
        return best["series_description"], float(best["slice"]), float(best["x"]), float(best["y"])

    def to_dict(self) -> dict:
        return {"coordinate_prior": self.table.to_dict(orient="records")}

    @classmethod
    def from_dict(cls, data: dict) -> CoordinatePrior:
        return cls(pd.DataFrame(data["coordinate_prior"]))


def save_priors(path: str | Path, coordinate_prior: CoordinatePrior, class_prior: np.ndarray) -> Path:
    """Both priors a model needs at inference, as one JSON file."""
    payload = {**coordinate_prior.to_dict(), "class_prior": np.asarray(class_prior).tolist()}
    Path(path).write_text(json.dumps(payload, indent=2))
    return Path(path)


def load_priors(path: str | Path) -> tuple[CoordinatePrior, np.ndarray]:
    data = json.loads(Path(path).read_text())
    return CoordinatePrior.from_dict(data), np.asarray(data["class_prior"], dtype=np.float64)


# --- input frames -------------------------------------------------------------------------------


def inference_frame(data_dir: str | Path, split: str = "test", use_coordinates: bool = False) -> pd.DataFrame:
    """The predictor's input for a Kaggle-layout split.

    Without coordinates: every file of every listed series (x, y missing). With them (train
    split only): the coordinate rows, so given points are used, plus the files of listed series
    that have no coordinate row.
    """
    files = list_series_files(data_dir, split)
    frame = files.assign(x=np.nan, y=np.nan)
    if use_coordinates:
        coordinates = load_coordinates(data_dir).merge(
            files, on=[*SERIES_KEY, "instance_number"], how="inner", validate="many_to_one"
        )
        with_points = coordinates[list(FRAME_COLUMNS)]
        pointless = frame[~frame.set_index(SERIES_KEY).index.isin(with_points.set_index(SERIES_KEY).index)]
        frame = pd.concat([with_points, pointless], ignore_index=True)
    return frame[list(FRAME_COLUMNS)]


def _validate_frame(frame: pd.DataFrame) -> pd.DataFrame:
    required = ["study_id", "series_id", "instance_number", "image_path"]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ValueError(f"prediction input lacks column(s) {missing}; expected {list(FRAME_COLUMNS)}")
    frame = frame.copy()
    for column in ("x", "y", "series_description"):
        if column not in frame.columns:
            frame[column] = np.nan if column != "series_description" else None
    frame[["study_id", "series_id", "instance_number"]] = frame[["study_id", "series_id", "instance_number"]].astype(
        np.int64
    )
    return frame


# --- the predictor ------------------------------------------------------------------------------


@dataclass
class Predictor:
    """A trained SpineNet plus the priors it needs for studies without coordinates."""

    model: SpineNet
    image_size: int
    coordinate_prior: CoordinatePrior
    class_prior: np.ndarray  # (5 conditions, 3) train-split class frequencies
    batch_size: int = 32
    device: str = "auto"

    @classmethod
    def load(cls, checkpoint: str | Path, priors: str | Path, device: str = "auto") -> Predictor:
        model, config = load_checkpoint(checkpoint)
        coordinate_prior, class_prior = load_priors(priors)
        return cls(model.eval(), config.image_size, coordinate_prior, class_prior, config.batch_size, device)

    def model_rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows the model sees: given points as they are, prior points for series without any."""
        return self._model_rows(_validate_frame(frame))

    def _model_rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        given = frame[frame["x"].notna() & frame["y"].notna()]
        bare = frame[~frame.set_index(SERIES_KEY).index.isin(given.set_index(SERIES_KEY).index)]
        rows = [given[["study_id", "series_id", "instance_number", "image_path", "x", "y"]].assign(from_prior=False)]
        if not bare.empty:
            rows.append(self._prior_rows(bare))
        return pd.concat(rows, ignore_index=True)

    def _prior_rows(self, bare: pd.DataFrame) -> pd.DataFrame:
        slices = index_slices(bare.drop(columns=["x", "y"]))
        chosen = []
        for study_id, study in slices.groupby("study_id"):
            available = set(study["series_description"].dropna())
            for condition in CONDITIONS:
                for level in LEVELS:
                    found = self.coordinate_prior.point(condition, level, available)
                    if found is None:
                        continue
                    description, relative_slice, x, y = found
                    series = study[study["series_description"] == description]
                    series = series[series["series_id"] == series["series_id"].min()]  # first such series
                    position = int(round(relative_slice * (len(series) - 1)))
                    row = series.iloc[min(position, len(series) - 1)]
                    chosen.append(
                        (study_id, row.series_id, row.instance_number, row.image_path, x * row.columns, y * row.rows)
                    )
        columns = ["study_id", "series_id", "instance_number", "image_path", "x", "y"]
        return pd.DataFrame(chosen, columns=columns).drop_duplicates().assign(from_prior=True)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Kaggle submission rows (row_id, normal_mild, moderate, severe): 25 per study of `frame`."""
        frame = _validate_frame(frame)
        rows = self._model_rows(frame)
        inputs, kept = [], []
        cache: dict[str, np.ndarray | None] = {}
        for index, row in enumerate(rows.itertuples(index=False)):
            if row.image_path not in cache:
                try:
                    cache[row.image_path] = to_uint8(read_pixels(row.image_path))
                except DicomReadError as error:
                    log.warning("study %s: skipped unreadable image: %s", row.study_id, error)
                    cache[row.image_path] = None
            pixels = cache[row.image_path]
            if pixels is None:
                continue
            height, width = pixels.shape
            inputs.append((image_tensor(pixels, self.image_size), normalised_point((row.x, row.y), width, height)))
            kept.append(index)
        per_study = {}
        if inputs:
            loader = DataLoader(inputs, batch_size=self.batch_size)
            logits = predict_logits(self.model, loader, resolve_device(self.device), progress=False)
            per_study = study_probabilities(rows["study_id"].to_numpy()[kept], softmax(logits))
        prior = np.repeat(self.class_prior[:, None, :], len(LEVELS), axis=1)
        by_study = {}
        for study_id in sorted(frame["study_id"].unique()):
            if int(study_id) not in per_study:
                log.warning("study %s: no readable image for any condition; predicting the class prior", study_id)
            by_study[int(study_id)] = per_study.get(int(study_id), prior)
        return submission_from_probabilities(by_study)
