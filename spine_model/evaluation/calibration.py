"""How far predicted probabilities can be taken at their word: reliability per condition.

The competition metric is a log loss, so an over-confident model pays heavily. For each condition
and severity, the rows of a submission are put in bins of predicted probability; a calibrated
model's bins come true as often as they say (the reliability diagram's diagonal). The expected
calibration error (ECE) of a condition is the rows' mean gap between predicted and observed, bin
by bin, averaged over the three severities (classwise ECE). A temperature per condition group,
fitted on held-out predictions, corrects a model that is systematically over- or under-confident.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spine_model.core.constants import CONDITIONS, METRIC_GROUPS, SEVERITY_COLUMNS, metric_group
from spine_model.evaluation.metric import competition_score

BINS = 10


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> pd.DataFrame:
    """Per severity and bin of predicted probability: rows, mean predicted, share observed.

    probabilities (n, 3) rows summing to 1; labels (n,) class indices.
    """
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    records = []
    for k, severity in enumerate(SEVERITY_COLUMNS):
        which = np.clip((probabilities[:, k] * bins).astype(int), 0, bins - 1)
        for b in range(bins):
            chosen = which == b
            if chosen.any():
                records.append(
                    (severity, b, int(chosen.sum()), probabilities[chosen, k].mean(), (labels[chosen] == k).mean())
                )
    return pd.DataFrame(records, columns=["severity", "bin", "rows", "predicted", "observed"])


def expected_calibration_error(table: pd.DataFrame) -> float:
    """Classwise ECE of a `reliability` table: per severity, the row-weighted mean |predicted - observed|
    over its bins; then the mean over severities."""
    gaps = (table["predicted"] - table["observed"]).abs() * table["rows"]
    per_severity = gaps.groupby(table["severity"]).sum() / table.groupby("severity")["rows"].sum()
    return float(per_severity.mean())


def by_condition(solution: pd.DataFrame, submission: pd.DataFrame, bins: int = BINS) -> dict[str, pd.DataFrame]:
    """The `reliability` table of each condition's rows: the solution's labelled rows (one-hot, as
    the metric reads them) against the submission's probabilities, normalised per row."""
    merged = solution.merge(submission, on="row_id", suffixes=("", "_pred"))
    predicted = merged[[f"{c}_pred" for c in SEVERITY_COLUMNS]].to_numpy(dtype=np.float64)
    predicted = predicted / predicted.sum(axis=1, keepdims=True).clip(min=1e-12)
    labels = merged[list(SEVERITY_COLUMNS)].to_numpy().argmax(axis=1)
    tables = {}
    for condition in CONDITIONS:
        rows = merged["row_id"].str.contains(f"_{condition}_", regex=False).to_numpy()
        if rows.any():
            tables[condition] = reliability(predicted[rows], labels[rows], bins)
    return tables


def condition_errors(tables: dict[str, pd.DataFrame]) -> dict[str, float]:
    """ECE per condition of `by_condition`'s tables."""
    return {condition: expected_calibration_error(table) for condition, table in tables.items()}


def with_temperatures(submission: pd.DataFrame, temperatures: dict[str, float]) -> pd.DataFrame:
    """The submission's probabilities at a temperature per metric group (spinal, foraminal,
    subarticular): p ** (1 / T), renormalised per row, which is softmax(logits / T) for the logits
    behind p. T above 1 softens an over-confident model, below 1 sharpens a timid one."""
    scaled = submission.copy()
    values = scaled[list(SEVERITY_COLUMNS)].to_numpy(dtype=np.float64).clip(min=1e-12)
    groups = scaled["row_id"].map(metric_group).to_numpy()
    exponent = np.array([1.0 / temperatures.get(group, 1.0) for group in groups])[:, None]
    values = np.exp(np.log(values) * exponent)
    scaled[list(SEVERITY_COLUMNS)] = values / values.sum(axis=1, keepdims=True)
    return scaled


def scale_cells(cells: dict[int, np.ndarray], temperatures: dict[str, float]) -> dict[int, np.ndarray]:
    """`with_temperatures` for per-study probabilities (5 conditions, 5 levels, 3)."""
    exponent = np.array([1.0 / temperatures.get(metric_group(condition), 1.0) for condition in CONDITIONS])
    scaled = {}
    for study_id, probabilities in cells.items():
        values = np.exp(np.log(np.asarray(probabilities, dtype=np.float64).clip(min=1e-12)) * exponent[:, None, None])
        scaled[study_id] = values / values.sum(axis=-1, keepdims=True)
    return scaled


def fit_temperatures(solution: pd.DataFrame, submission: pd.DataFrame) -> dict[str, float]:
    """The temperature per metric group that minimises the competition score of `submission` on
    `solution` (one group at a time, the others kept; the any_severe_spinal term moves with spinal).
    Fitted on held-out predictions (out-of-fold, or validation: then the score it gives is optimistic)."""
    from scipy.optimize import minimize_scalar

    solution = solution[solution["row_id"].isin(submission["row_id"])]  # the studies predicted
    temperatures = {group: 1.0 for group in METRIC_GROUPS}
    for group in METRIC_GROUPS:

        def score(log_t: float, group: str = group) -> float:
            return competition_score(
                solution, with_temperatures(submission, {**temperatures, group: float(np.exp(log_t))})
            )

        best = minimize_scalar(score, bounds=(np.log(0.25), np.log(4.0)), method="bounded", options={"xatol": 1e-3})
        temperatures[group] = float(np.exp(best.x))
    return temperatures
