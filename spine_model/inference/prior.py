"""The coordinate prior (where a condition's point usually lies, learned on the training split) and
the class prior: both priors a model carries to inference, kept as one JSON file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spine_model.core.constants import CONDITION_SERIES
from spine_model.core.files import atomic_write
from spine_model.data.volumes import SERIES_KEY, SLICE_KEY

POINT_COLUMNS = [*SLICE_KEY, "series_description", "condition", "level", "x", "y", "source"]


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
