"""A study's 25 cells (5 conditions x 5 levels), each with 3 severity probabilities: shapes and indices."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spine_model.core.constants import CONDITIONS, LEVELS, SEVERITIES

CELLS_SHAPE = (len(CONDITIONS), len(LEVELS), len(SEVERITIES))  # a study's probabilities


def cell_index(points: pd.DataFrame) -> np.ndarray:
    """condition * 5 + level for each point: the index of its cell among the 25, condition-major."""
    condition = points["condition"].map({c: i for i, c in enumerate(CONDITIONS)})
    level = points["level"].map({lv: i for i, lv in enumerate(LEVELS)})
    if condition.isna().any() or level.isna().any():
        bad = points.loc[condition.isna() | level.isna(), ["condition", "level"]].iloc[0].tolist()
        raise ValueError(f"point with unknown condition/level {bad}; expected {CONDITIONS} x {LEVELS}")
    return (condition.to_numpy(np.int64) * len(LEVELS) + level.to_numpy(np.int64)).astype(np.int64)


def prior_cells(class_prior: np.ndarray) -> np.ndarray:
    """A study's probabilities (5, 5, 3) from a class prior per condition (5, 3): the same at every level."""
    return np.repeat(np.asarray(class_prior, dtype=np.float64)[:, None, :], len(LEVELS), axis=1)
