"""The Kaggle strings of the RSNA 2024 lumbar spine task, in one place.

Every other module refers to conditions, levels, severities and series descriptions through
these names; no literal of a condition string appears anywhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

# Conditions in the order of train.csv's columns (and of the model's first output axis).
CONDITIONS: tuple[str, ...] = (
    "spinal_canal_stenosis",
    "left_neural_foraminal_narrowing",
    "right_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_subarticular_stenosis",
)
SPINAL_CONDITION = CONDITIONS[0]
LEVELS: tuple[str, ...] = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")

# train_label_coordinates.csv spells them in Title Case and with slashes.
CONDITION_TITLES: dict[str, str] = {
    "spinal_canal_stenosis": "Spinal Canal Stenosis",
    "left_neural_foraminal_narrowing": "Left Neural Foraminal Narrowing",
    "right_neural_foraminal_narrowing": "Right Neural Foraminal Narrowing",
    "left_subarticular_stenosis": "Left Subarticular Stenosis",
    "right_subarticular_stenosis": "Right Subarticular Stenosis",
}
CONDITION_FROM_TITLE: dict[str, str] = {title: name for name, title in CONDITION_TITLES.items()}
LEVEL_TITLES: dict[str, str] = {level: level.upper().replace("_", "/") for level in LEVELS}
LEVEL_FROM_TITLE: dict[str, str] = {title: level for level, title in LEVEL_TITLES.items()}

# train.csv values; an empty cell is a missing label.
SEVERITIES: tuple[str, ...] = ("Normal/Mild", "Moderate", "Severe")
SEVERITY_INDEX: dict[str, int] = {name: index for index, name in enumerate(SEVERITIES)}
MISSING_LABEL = -1
# Submission / solution column names, one per severity.
SEVERITY_COLUMNS: tuple[str, ...] = ("normal_mild", "moderate", "severe")
# Competition sample weights per severity, also the seed's cross-entropy class weights.
SEVERITY_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0)

SAGITTAL_T1 = "Sagittal T1"
SAGITTAL_T2 = "Sagittal T2/STIR"
AXIAL_T2 = "Axial T2"
SERIES_DESCRIPTIONS: tuple[str, ...] = (SAGITTAL_T1, SAGITTAL_T2, AXIAL_T2)
# The series on which radiologists marked each condition.
CONDITION_SERIES: dict[str, str] = {
    "spinal_canal_stenosis": SAGITTAL_T2,
    "left_neural_foraminal_narrowing": SAGITTAL_T1,
    "right_neural_foraminal_narrowing": SAGITTAL_T1,
    "left_subarticular_stenosis": AXIAL_T2,
    "right_subarticular_stenosis": AXIAL_T2,
}

# The metric's three condition groups, recognised by a word in the row id.
METRIC_GROUPS: tuple[str, ...] = ("spinal", "foraminal", "subarticular")

# train.csv's 25 label columns, condition-major: index = condition * len(LEVELS) + level.
LABEL_COLUMNS: tuple[str, ...] = tuple(f"{c}_{lv}" for c in CONDITIONS for lv in LEVELS)

# File names of the Kaggle layout.
TRAIN_CSV = "train.csv"
COORDINATES_CSV = "train_label_coordinates.csv"
SAMPLE_SUBMISSION_CSV = "sample_submission.csv"
SOLUTION_CSV = "test_solution.csv"  # written by the synthetic generator only
# Also the generator's only (realistic data): each cell's true P(label | grade), both splits; read by
# evaluation to show the best attainable score beside a model's, never by training.
POSTERIORS_CSV = "synthetic_posteriors.csv"


def series_descriptions_csv(split: str) -> str:
    """`train_series_descriptions.csv` or `test_series_descriptions.csv`."""
    return f"{split}_series_descriptions.csv"


def images_dir(split: str) -> str:
    """`train_images` or `test_images`."""
    return f"{split}_images"


def row_id(study_id: int, condition: str, level: str) -> str:
    """Kaggle submission row id, e.g. `4003253_spinal_canal_stenosis_l1_l2`."""
    return f"{study_id}_{condition}_{level}"


def study_ids_of_rows(row_ids: pd.Series) -> pd.Series:
    """The study id (an integer) of each submission row id: the part before the first underscore."""
    return row_ids.str.split("_", n=1).str[0].astype("int64")


def metric_group(row_id_or_column: str) -> str:
    """The metric group ('spinal', 'foraminal' or 'subarticular') a row id belongs to."""
    for group in METRIC_GROUPS:
        if group in row_id_or_column:
            return group
    raise ValueError(f"no condition group (one of {METRIC_GROUPS}) in {row_id_or_column!r}")
