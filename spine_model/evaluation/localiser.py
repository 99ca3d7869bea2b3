"""How well points are found: a localiser's (or the coordinate prior's) points against the labelled ones.

Per condition: the share of labelled points placed on their own series, the distance to the
labelled point (pixels of its frame, and as a share of the frame's side), and the slice error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spine_model.core.constants import CONDITIONS
from spine_model.core.files import atomic_write_csv, atomic_write_text
from spine_model.data.volumes import SLICE_KEY

SOURCES = ("localiser", "prior")


def point_errors(found: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """One row per labelled point: whether a point was found on its series, distance and slice error.

    found: points (study_id, series_id, instance_number, condition, level, x, y) with one row per
    cell at most; truth: located labelled points (with slice_index, rows, columns); index: the store
    index, for the found points' slice positions.
    """
    merged = truth.merge(
        found[[*SLICE_KEY, "condition", "level", "x", "y", "slice_index"]],
        on=["study_id", "condition", "level"], how="left", suffixes=("", "_found"),
    )  # fmt: skip
    same_series = merged["series_id"] == merged["series_id_found"]
    distance = np.hypot(merged["x_found"] - merged["x"], merged["y_found"] - merged["y"]).where(same_series)
    return pd.DataFrame(
        {
            "study_id": merged["study_id"],
            "condition": merged["condition"],
            "level": merged["level"],
            "found": same_series,
            "distance_px": distance,
            "distance_share": distance / merged[["rows", "columns"]].max(axis=1),
            "slice_error": (merged["slice_index_found"] - merged["slice_index"]).abs().where(same_series),
        }
    )


def summarise(errors: pd.DataFrame) -> pd.DataFrame:
    """Per condition (and 'all'): share found on the right series, mean distance, mean slice error."""
    rows = []
    for condition, part in [*errors.groupby("condition", sort=False), ("all", errors)]:
        rows.append(
            {
                "condition": condition,
                "points": len(part),
                "found": float(part["found"].mean()) if len(part) else float("nan"),
                "distance_px": float(part["distance_px"].mean()),
                "distance_share": float(part["distance_share"].mean()),
                "slice_error": float(part["slice_error"].mean()),
            }
        )
    order = {name: i for i, name in enumerate([*CONDITIONS, "all"])}
    return pd.DataFrame(rows).sort_values("condition", key=lambda c: c.map(order)).reset_index(drop=True)


@dataclass
class LocaliserEvaluation:
    """Errors of the localiser's and of the coordinate prior's points on the validation studies."""

    errors: dict[str, pd.DataFrame]  # source -> point_errors
    found: pd.DataFrame = field(repr=False)  # the localiser's points

    def table(self, source: str) -> pd.DataFrame:
        return summarise(self.errors[source])

    def metrics(self) -> dict[str, float]:
        """Flat metrics for MLflow: loc_* for the localiser, prior_loc_* for the coordinate prior."""
        flat = {}
        for source in SOURCES:
            prefix = "loc" if source == "localiser" else "prior_loc"
            for row in self.table(source).itertuples():
                suffix = "" if row.condition == "all" else f"_{row.condition}"
                for stat in ("found", "distance_px", "distance_share", "slice_error"):
                    flat[f"val_{prefix}_{stat}{suffix}"] = getattr(row, stat)
        return flat

    def describe(self) -> str:
        header = (
            f"  {'condition':<34}{'found':>7}{'dist px':>9}{'share':>8}{'slices':>8}   prior: dist px  share  slices"
        )
        lines = ["Localiser on the validation studies (points of the localiser, then of the coordinate prior):", header]
        mine, prior = self.table("localiser"), self.table("prior")
        for a, b in zip(mine.itertuples(), prior.itertuples(), strict=True):
            lines.append(
                f"  {a.condition:<34}{a.found:>7.2f}{a.distance_px:>9.2f}{a.distance_share:>8.3f}{a.slice_error:>8.2f}"
                f"   {b.distance_px:>13.2f}{b.distance_share:>7.3f}{b.slice_error:>8.2f}"
            )
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [
            "| condition | points | found | distance (px) | distance (share of side) | slice error "
            "| prior: distance (px) | prior: share | prior: slice error |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for a, b in zip(self.table("localiser").itertuples(), self.table("prior").itertuples(), strict=True):
            lines.append(
                f"| {a.condition} | {a.points} | {a.found:.2f} | {a.distance_px:.2f} | {a.distance_share:.3f} | "
                f"{a.slice_error:.2f} | {b.distance_px:.2f} | {b.distance_share:.3f} | {b.slice_error:.2f} |"
            )
        return "\n".join(lines)

    def save(self, paths: dict[str, Path]) -> dict[str, Path]:
        """Summary (text, Markdown), metrics and the localiser's points, to the catalog's paths."""
        for path in paths.values():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(paths["summary"], self.describe() + "\n")
        atomic_write_text(paths["summary_markdown"], self.markdown() + "\n")
        atomic_write_text(paths["metrics"], json.dumps(self.metrics(), indent=2))
        atomic_write_csv(paths["points"], self.found)
        return {key: Path(paths[key]) for key in ("summary", "summary_markdown", "metrics", "points")}


def with_slice_index(points: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """Points with the stored slice index of their instance."""
    return points.merge(index[[*SLICE_KEY, "slice_index"]], on=SLICE_KEY, how="left")


def evaluate_localiser(localiser, points: pd.DataFrame, split, store, coordinate_prior) -> LocaliserEvaluation:
    """The localiser's and the coordinate prior's points on the split's validation studies, against
    their labelled points (located training points of both sides; only the validation side is used)."""
    truth = split.select(points, "val")
    index = store.index[store.index["study_id"].isin(split.val_study_ids)]
    found = localiser.points(store, index)
    from_prior = coordinate_prior.points(index)
    errors = {
        "localiser": point_errors(with_slice_index(found, store.index), truth),
        "prior": point_errors(with_slice_index(from_prior, store.index), truth),
    }
    return LocaliserEvaluation(errors, found)
