"""Continuous degeneration behind the labels of the realistic synthetic benchmark.

Real labels are one radiologist's read of a continuous degeneration, and neighbouring grades are
confused all the time: a label that follows the image exactly makes every model look perfect.
Here each of a study's 25 cells has a latent grade:

    grade = STUDY_WEIGHT * study + LEVEL_SHIFT[level] + PAIR_WEIGHT * pair + OWN_WEIGHT * own

with `study` shared by the whole spine (one person's spine ages as a whole), `pair` shared by the
left and right cells of a level (related, not equal), `own` the cell's own, all standard normal;
lower levels degenerate more (L4/L5, L5/S1), L1/L2 least. The image shows the grade continuously
(spine_model.data.synth). The label is a noisy read of it, an ordered logit:

    P(label <= k | grade) = sigmoid((THRESHOLDS[group][k] - grade) / RATER_NOISE[group])

whose rater noise is smallest for spinal stenosis and largest for subarticular, as on the real
data. That posterior, written beside the labels, is the best any model can do: its competition
score (the limit) lies near the real leaderboard's, about 0.35 (spinal 0.26, foraminal 0.40,
subarticular 0.51, any_severe_spinal 0.23 on 20,000 studies), and the thresholds give the real
label shares (76.5 / 16.1 / 6.3 %).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spine_model.core.constants import (
    CONDITIONS,
    LEVELS,
    MISSING_LABEL,
    POSTERIORS_CSV,
    SEVERITY_COLUMNS,
    metric_group,
    study_ids_of_rows,
)

STUDY_WEIGHT = 0.7
PAIR_WEIGHT = 0.6  # shared by a level's left and right cell (foramina, subarticular recesses)
OWN_WEIGHT = 0.6
LEVEL_SHIFT = np.array([-0.6, -0.3, 0.0, 0.45, 0.45])  # L1/L2 ... L5/S1
# Logistic scale of the rater's read, in grade units, by the metric's condition group.
RATER_NOISE = {"spinal": 0.13, "foraminal": 0.24, "subarticular": 0.32}
# Where the read passes from Normal/Mild to Moderate and from Moderate to Severe: set so that the
# label shares are the real data's (tests/spine_model/test_grades.py checks them on a large sample).
THRESHOLDS = {"spinal": (0.784, 1.576), "foraminal": (0.935, 1.902), "subarticular": (0.979, 1.986)}
# Missing labels, mostly subarticular: 10 cells at 2.6 % + 15 at 0.2 % = 1.2 % overall, as in the real
# train.csv (the easy data's labels miss as often).
MISSING_RATE = {"subarticular": 0.026, "other": 0.002}

_GROUP_OF_CELL = [metric_group(condition) for condition in CONDITIONS for _ in LEVELS]
# The conditions with a left and a right side, by what they name: both sides of a level share a term.
_SIDED = {CONDITIONS.index(f"{side}_{name}"): name for name in ("neural_foraminal_narrowing", "subarticular_stenosis")
          for side in ("left", "right")}  # fmt: skip


@dataclass
class StudyGrades:
    """One study's 25 cells, condition-major: latent grades, the rater's posterior, the labels read."""

    grades: np.ndarray  # (25,)
    posteriors: np.ndarray  # (25, 3): P(Normal/Mild, Moderate, Severe | grade)
    labels: np.ndarray  # (25,) 0..2, or MISSING_LABEL


def posteriors(grades: np.ndarray, groups: list[str] | str) -> np.ndarray:
    """P(label | grade) of each grade (..., 3), by its condition group's thresholds and rater noise."""
    grades = np.asarray(grades, dtype=np.float64)
    groups = np.broadcast_to(np.asarray(groups, dtype=object), grades.shape)
    low = np.vectorize(lambda g: THRESHOLDS[g][0])(groups).astype(np.float64)
    high = np.vectorize(lambda g: THRESHOLDS[g][1])(groups).astype(np.float64)
    noise = np.vectorize(RATER_NOISE.get)(groups).astype(np.float64)
    normal = 1 / (1 + np.exp(-(low - grades) / noise))
    up_to_moderate = 1 / (1 + np.exp(-(high - grades) / noise))
    return np.stack([normal, up_to_moderate - normal, 1 - up_to_moderate], axis=-1)


def sample_grades(rng: np.random.Generator) -> np.ndarray:
    """One study's 25 latent grades (condition-major)."""
    study = rng.normal()
    pairs = {name: rng.normal(size=len(LEVELS)) for name in sorted(set(_SIDED.values()))}  # per level
    grades = np.empty((len(CONDITIONS), len(LEVELS)))
    for c in range(len(CONDITIONS)):
        shared = pairs[_SIDED[c]] if c in _SIDED else 0.0
        own = rng.normal(size=len(LEVELS))
        grades[c] = STUDY_WEIGHT * study + LEVEL_SHIFT + PAIR_WEIGHT * shared + OWN_WEIGHT * own
    return grades.ravel()


def sample_study(rng: np.random.Generator) -> StudyGrades:
    """Grades, the rater's posteriors and one read of them (with missing labels) for one study."""
    grades = sample_grades(rng)
    probabilities = posteriors(grades, _GROUP_OF_CELL)
    labels = (rng.random(len(grades))[:, None] > np.cumsum(probabilities, axis=1)[:, :2]).sum(axis=1)
    missing = rng.random(len(grades)) < np.array(
        [MISSING_RATE["subarticular" if group == "subarticular" else "other"] for group in _GROUP_OF_CELL]
    )
    return StudyGrades(grades, probabilities, np.where(missing, MISSING_LABEL, labels).astype(np.int64))


def cell_groups() -> list[str]:
    """The metric group of each of the 25 cells, condition-major."""
    return list(_GROUP_OF_CELL)


def read_posteriors(data_dir: str | Path, study_ids: Iterable[int]) -> pd.DataFrame | None:
    """The true P(label | grade) of the studies' cells as a submission (row_id, normal_mild, moderate,
    severe), from a realistic synthetic data folder; None for data without them (real data)."""
    path = Path(data_dir) / POSTERIORS_CSV
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    wanted = table[study_ids_of_rows(table["row_id"]).isin(set(int(s) for s in study_ids))]
    return wanted[["row_id", *SEVERITY_COLUMNS]].reset_index(drop=True)
