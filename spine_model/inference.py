"""Predictions for studies: points from given coordinates or the coordinate prior, then the model family.

The input is one frame of image references, the same for the CLI, the Prefect flow and the MLflow
pyfunc model: study_id, series_id, instance_number, image_path, series_description, and optional
x, y, condition, level. A study with given points (x and y) is predicted from them; a study
without (the Kaggle test set gives none) gets, for each of the 25 condition x level cells, the
slice and point of the coordinate prior. Pixels come from a volume store: one built beforehand by
`spine predict`, or the same decoding done in memory for the frame's series.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from spine_model.catalog import atomic_write
from spine_model.config import TrainConfig
from spine_model.constants import CONDITION_SERIES, LEVELS
from spine_model.evaluate import predict_outputs
from spine_model.families import get_family
from spine_model.families.base import CELLS_SHAPE, batches
from spine_model.families.localiser.locate import Localiser
from spine_model.ingest import find_series_files, load_coordinates, load_series_descriptions
from spine_model.metrics import submission_from_probabilities
from spine_model.train import load_checkpoint, resolve_device
from spine_model.volumes import (
    SERIES_KEY,
    SLICE_KEY,
    MemoryVolumeStore,
    VolumeReader,
    describe_unplaced,
    locate_points,
)

log = logging.getLogger(__name__)

FRAME_COLUMNS = (
    "study_id", "series_id", "instance_number", "image_path", "series_description", "x", "y", "condition", "level",
)  # fmt: skip
POINT_COLUMNS = [*SLICE_KEY, "series_description", "condition", "level", "x", "y", "source"]


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


# --- coordinate prior -----------------------------------------------------------------------------


@dataclass
class CoordinatePrior:
    """Mean relative slice position and normalised x, y per condition x level x series description.

    Learned on the training split; a start that a learned localiser can replace behind `points`.
    """

    table: pd.DataFrame  # condition, level, series_description, slice, x, y, n

    @classmethod
    def fit(cls, points: pd.DataFrame) -> CoordinatePrior:
        """points: located training points (condition, level, series_description, x, y, slice_index,
        n_slices, rows, columns; see volumes.locate_points)."""
        if points.empty:
            raise ValueError("no located training point: cannot learn a coordinate prior")
        relative = points.assign(
            slice=np.where(points["n_slices"] > 1, points["slice_index"] / (points["n_slices"] - 1).clip(lower=1), 0.5),
            x=points["x"] / points["columns"],
            y=points["y"] / points["rows"],
        )
        table = (
            relative.groupby(["condition", "level", "series_description"])
            .agg(slice=("slice", "mean"), x=("x", "mean"), y=("y", "mean"), n=("x", "size"))
            .reset_index()
        )
        return cls(table)

    def choices(self, available: pd.DataFrame) -> pd.DataFrame:
        """Per study and cell, where to look: available (study_id, series_description) -> rows of
        study_id, condition, level, series_description, slice, x, y. The condition's usual series
        first, else the description with the most training points."""
        candidates = available.drop_duplicates().merge(self.table, on="series_description")
        usual = candidates["series_description"] == candidates["condition"].map(CONDITION_SERIES)
        ranked = candidates.assign(usual=usual).sort_values(["usual", "n"], ascending=False, kind="stable")
        return ranked.drop_duplicates(["study_id", "condition", "level"]).drop(columns=["usual", "n"])

    def points(self, index: pd.DataFrame) -> pd.DataFrame:
        """Prior points for every study of a store index: one per cell that some series can show.

        Uses each study's first series of the chosen description (lowest series id).
        """
        series = index.drop_duplicates(SERIES_KEY).sort_values(SERIES_KEY)
        first = series.drop_duplicates(["study_id", "series_description"])[
            [*SERIES_KEY, "series_description", "n_slices"]
        ]
        chosen = self.choices(first[["study_id", "series_description"]]).merge(
            first, on=["study_id", "series_description"]
        )
        chosen["slice_index"] = np.round(chosen["slice"] * (chosen["n_slices"] - 1)).astype(np.int64)
        on_slice = chosen.merge(
            index[[*SERIES_KEY, "slice_index", "instance_number", "rows", "columns"]], on=[*SERIES_KEY, "slice_index"]
        )
        return on_slice.assign(
            x=on_slice["x"] * on_slice["columns"], y=on_slice["y"] * on_slice["rows"], source="prior"
        )[POINT_COLUMNS].sort_values(["study_id", "condition", "level"], ignore_index=True)

    def to_dict(self) -> dict:
        return {"coordinate_prior": self.table.to_dict(orient="records")}

    @classmethod
    def from_dict(cls, data: dict) -> CoordinatePrior:
        return cls(pd.DataFrame(data["coordinate_prior"]))


def save_priors(path: str | Path, coordinate_prior: CoordinatePrior, class_prior: np.ndarray) -> Path:
    """Both priors a model needs at inference, as one JSON file."""
    payload = {**coordinate_prior.to_dict(), "class_prior": np.asarray(class_prior).tolist()}
    return atomic_write(path, lambda handle: handle.write(json.dumps(payload, indent=2).encode()))


def load_priors(path: str | Path) -> tuple[CoordinatePrior, np.ndarray]:
    data = json.loads(Path(path).read_text())
    return CoordinatePrior.from_dict(data), np.asarray(data["class_prior"], dtype=np.float64)


# --- input frames -------------------------------------------------------------------------------


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
    present = submission["row_id"].str.split("_", n=1).str[0].astype(np.int64)
    missing = sorted(set(study_ids) - set(present))
    if not missing:
        return submission
    log.warning(
        "%d listed study(ies) have no images to predict from, e.g. %s; they get the class prior",
        len(missing), missing[0],
    )  # fmt: skip
    prior = np.repeat(np.asarray(class_prior, dtype=np.float64)[:, None, :], len(LEVELS), axis=1)
    filled = pd.concat([submission, submission_from_probabilities({s: prior for s in missing})], ignore_index=True)
    order = {study_id: i for i, study_id in enumerate(study_ids)}
    studies = filled["row_id"].str.split("_", n=1).str[0].astype(np.int64).map(order)
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


# --- the predictor ------------------------------------------------------------------------------


@dataclass
class Predictor:
    """A trained model of any family plus what places points on studies without coordinates: a
    localiser when there is one, and the coordinate prior for the cells it cannot place."""

    model: nn.Module
    config: TrainConfig
    coordinate_prior: CoordinatePrior
    class_prior: np.ndarray  # (5 conditions, 3) train-split class frequencies
    device: str = "auto"
    studies_per_chunk: int = 16  # decoded together when no store is given: bounds memory
    localiser: Localiser | None = None

    @classmethod
    def load(
        cls, checkpoint: str | Path, priors: str | Path, device: str = "auto", localiser: str | Path | None = None
    ) -> Predictor:
        model, config = load_checkpoint(checkpoint)
        coordinate_prior, class_prior = load_priors(priors)
        found = Localiser.load(localiser, device) if localiser else None
        return cls(model.eval(), config, coordinate_prior, class_prior, device, localiser=found)

    def points(self, frame: pd.DataFrame, store: VolumeReader) -> pd.DataFrame:
        """The points the model sees: a study's given points; else, per cell, the localiser's point,
        or the coordinate prior's where there is no localiser or it places none. The source of each
        study's points is logged."""
        given = given_points(frame)
        listed = pd.MultiIndex.from_frame(frame[SERIES_KEY].drop_duplicates())
        index = store.index[pd.MultiIndex.from_frame(store.index[SERIES_KEY]).isin(listed)]
        bare = index[~index["study_id"].isin(given["study_id"])]
        from_prior = self.coordinate_prior.points(bare)
        located = self.localiser.points(store, bare)[POINT_COLUMNS] if self.localiser is not None else from_prior[:0]
        cell = ["study_id", "condition", "level"]
        uncovered = ~pd.MultiIndex.from_frame(from_prior[cell]).isin(pd.MultiIndex.from_frame(located[cell]))
        points = pd.concat([given, located, from_prior[uncovered]], ignore_index=True)
        for study_id, sources in points.groupby("study_id")["source"]:
            counts = sources.value_counts()
            log.info("study %s: points from %s", study_id, ", ".join(f"{source} ({n})" for source, n in counts.items()))
        return points

    def predict(self, frame: pd.DataFrame, store: VolumeReader | None = None) -> pd.DataFrame:
        """Kaggle submission rows (row_id, normal_mild, moderate, severe): 25 per study of `frame`.

        Without `store`, the frame's image files are decoded here, a few studies at a time.
        """
        frame = validate_frame(frame)
        study_ids = sorted(int(s) for s in frame["study_id"].unique())
        cells: dict[int, np.ndarray] = {}
        if store is not None:
            if store.size != self.config.store_size:
                raise ValueError(
                    f"the volume store holds {store.size} px slices; this model was trained on "
                    f"{self.config.store_size} px (build a store of that size, or give none)"
                )
            cells = self.predict_cells(frame, store)
        else:
            for start in range(0, len(study_ids), self.studies_per_chunk):
                chunk = frame[frame["study_id"].isin(study_ids[start : start + self.studies_per_chunk])]
                memory = MemoryVolumeStore.from_files(chunk, self.config.store_size)
                for _, reason in memory.unreadable:
                    log.warning("skipped unreadable image %s", reason)
                cells.update(self.predict_cells(chunk, memory))
        prior = np.repeat(self.class_prior[:, None, :], len(LEVELS), axis=1)
        for study_id in study_ids:
            if study_id not in cells:
                log.warning("study %s: no readable image for any condition; predicting the class prior", study_id)
        return submission_from_probabilities({s: cells.get(s, prior) for s in study_ids})

    def predict_cells(self, frame: pd.DataFrame, store: VolumeReader) -> dict[int, np.ndarray]:
        """Per study of `frame` with a readable image, probabilities (5 conditions, 5 levels, 3)."""
        family = get_family(self.config.model_family)
        points = self.points(frame, store)
        located, unplaced = locate_points(points, store.index, store.size)
        for line in describe_unplaced(unplaced):
            log.warning("not predicted from %s", line)
        if located.empty:
            return {}
        loader = batches(family.dataset(located, store, self.config, train=False), self.config.batch_size)
        outputs, _ = predict_outputs(self.model, loader, self.config, resolve_device(self.device), progress=False)
        cells = family.cell_probabilities(outputs, located, self.class_prior)
        return {study_id: probabilities.reshape(CELLS_SHAPE) for study_id, probabilities in cells.items()}
