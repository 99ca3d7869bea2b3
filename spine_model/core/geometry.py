"""Patient coordinates of points on stored slices, and the slice of another series nearest to them.

The store index keeps each slice's ImagePositionPatient (ipp_*), ImageOrientationPatient (row_*
and col_* direction cosines) and PixelSpacing. With them a point on a sagittal slice becomes a
point in the patient (mm), which an axial series can then find: the slice whose plane lies nearest,
and the point projected onto it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

ORIGIN = ["ipp_x", "ipp_y", "ipp_z"]
ROW_COSINES = ["row_x", "row_y", "row_z"]  # direction of increasing column index (x)
COLUMN_COSINES = ["col_x", "col_y", "col_z"]  # direction of increasing row index (y)
DEFAULT_GAP_MM = 5.0  # assumed slice gap of a series with a single slice


def to_patient(slices: pd.DataFrame, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, 3) patient coordinates in mm of pixel (x, y) of each row's slice (pixels of the original frame)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    step_x = (x * slices["spacing_col"].to_numpy(np.float64))[:, None]
    step_y = (y * slices["spacing_row"].to_numpy(np.float64))[:, None]
    return (
        slices[ORIGIN].to_numpy(np.float64)
        + step_x * slices[ROW_COSINES].to_numpy(np.float64)
        + step_y * slices[COLUMN_COSINES].to_numpy(np.float64)
    )


@dataclass(frozen=True)
class SliceHit:
    """The slice of a series nearest to a point, and the point on it."""

    row: int  # position of the slice's row in the series' index rows
    x: float  # pixels of that slice's frame
    y: float
    distance_mm: float  # from the point to the slice's plane
    inside: bool  # the point lies within the stack (at most half a slice gap beyond its ends)
    depth_mm: float  # how far inside the stack: to the nearer end slice's plane (negative beyond it)


def nearest_slice(series: pd.DataFrame, point: np.ndarray) -> SliceHit:
    """Where `point` (mm) falls in one series, given that series' index rows (in slice order)."""
    origins = series[ORIGIN].to_numpy(np.float64)
    rows, columns = series[ROW_COSINES].to_numpy(np.float64), series[COLUMN_COSINES].to_numpy(np.float64)
    normals = np.cross(rows, columns)
    distances = ((np.asarray(point, dtype=np.float64) - origins) * normals).sum(axis=1)
    k = int(np.argmin(np.abs(distances)))
    offset = point - origins[k]
    positions = np.sort(series["position"].to_numpy(np.float64))
    gap = float(np.median(np.diff(positions))) if len(positions) > 1 else DEFAULT_GAP_MM
    return SliceHit(
        row=k,
        x=float(offset @ rows[k] / series["spacing_col"].iloc[k]),
        y=float(offset @ columns[k] / series["spacing_row"].iloc[k]),
        distance_mm=float(distances[k]),
        inside=bool(abs(distances[k]) <= 0.5 * gap + 1e-6),
        depth_mm=float(min(distances.max(), -distances.min())),
    )
