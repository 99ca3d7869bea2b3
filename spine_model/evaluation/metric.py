"""The official competition metric, its prior baseline, and the label/solution helpers around it.

`competition_score` follows the Kaggle metric (rsna-lumbar-metric, version 10): the mean of four
sample-weighted log losses, for the spinal, foraminal and subarticular rows and for
`any_severe_spinal` (per study: label = any severe spinal level, prediction = the highest severe
probability of its five spinal rows, weight = the highest sample weight among them).

The competition scored with scikit-learn 1.3, whose `log_loss` clipped predictions to
[eps, 1 - eps] and renormalised each row. scikit-learn >= 1.9 no longer renormalises, so the log
loss is computed here, as 1.3 did, instead of through the installed scikit-learn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from spine_model.core.cells import prior_cells
from spine_model.core.constants import (
    CONDITIONS,
    LABEL_COLUMNS,
    LEVELS,
    METRIC_GROUPS,
    MISSING_LABEL,
    SEVERITY_COLUMNS,
    SEVERITY_WEIGHTS,
    metric_group,
    row_id,
    study_ids_of_rows,
)

_EPS = np.finfo(np.float64).eps


class ScoringError(ValueError):
    """A solution or submission that cannot be scored; the message says what is wrong."""


def _normalise_rows(values: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to 1 (an all-zero row becomes uniform).

    The official metric clipped values above 1 before renormalising, which made a row's score
    depend on its scale; for rows within [0, 1] the two agree.
    """
    totals = values.sum(axis=1, keepdims=True)
    uniform = np.full_like(values, 1.0 / values.shape[1])
    return np.divide(values, totals, out=uniform, where=totals > 0)


def weighted_log_loss(y_true: np.ndarray, y_proba: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """Sample-weighted multiclass log loss, with scikit-learn 1.3's clipping and row normalisation.

    `y_true` is one-hot (n, k) or, for the binary case, a 0/1 vector with `y_proba` the
    probability of class 1.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_proba = np.asarray(y_proba, dtype=np.float64)
    if y_true.ndim == 1:
        y_true = np.stack([1.0 - y_true, y_true], axis=1)
        y_proba = np.stack([1.0 - y_proba, y_proba], axis=1)
    if y_true.shape != y_proba.shape:
        raise ScoringError(f"labels {y_true.shape} and predictions {y_proba.shape} differ in shape")
    if len(y_true) == 0:
        raise ScoringError("no rows to score")
    y_proba = np.clip(_normalise_rows(y_proba), _EPS, 1.0 - _EPS)
    y_proba = y_proba / y_proba.sum(axis=1, keepdims=True)
    per_row = -(y_true * np.log(y_proba)).sum(axis=1)
    return float(np.average(per_row, weights=sample_weight))


def _check_columns(frame: pd.DataFrame, required: Iterable[str], what: str) -> None:
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ScoringError(f"{what} lacks column(s) {missing}; it has {list(frame.columns)}")


def competition_score(solution: pd.DataFrame, submission: pd.DataFrame) -> float:
    """The official competition score of `submission` against `solution`; lower is better.

    solution: row_id, normal_mild, moderate, severe (one-hot), sample_weight.
    submission: row_id, normal_mild, moderate, severe (probabilities, normalised here per row).
    Every solution row must be in the submission; extra submission rows are ignored.
    """
    _check_columns(solution, ("row_id", *SEVERITY_COLUMNS, "sample_weight"), "solution")
    _check_columns(submission, ("row_id", *SEVERITY_COLUMNS), "submission")
    if submission["row_id"].duplicated().any():
        duplicated = submission.loc[submission["row_id"].duplicated(), "row_id"].head(3).tolist()
        raise ScoringError(f"submission has duplicated row_id(s), e.g. {duplicated}")
    predictions = submission[list(SEVERITY_COLUMNS)]
    if not all(pd.api.types.is_numeric_dtype(dtype) for dtype in predictions.dtypes):
        raise ScoringError("all submission values must be numeric")
    values = predictions.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        bad = submission.loc[~np.isfinite(values).all(axis=1), "row_id"].head(3).tolist()
        raise ScoringError(f"all submission values must be finite; not so in rows {bad}")
    if (values < 0).any():
        bad = submission.loc[(values < 0).any(axis=1), "row_id"].head(3).tolist()
        raise ScoringError(f"all predictions must be at least zero; not so in rows {bad}")
    if (solution[list(SEVERITY_COLUMNS)].to_numpy() < 0).any():
        raise ScoringError("all solution labels must be at least zero")

    # Normalise each row before anything reads it (the any_severe max included).
    predictions = pd.DataFrame(_normalise_rows(values), columns=list(SEVERITY_COLUMNS))
    predictions.insert(0, "row_id", submission["row_id"].to_numpy())
    merged = solution.merge(predictions, on="row_id", how="left", suffixes=("", "_pred"))
    pred_columns = [f"{column}_pred" for column in SEVERITY_COLUMNS]
    absent = merged[pred_columns[0]].isna()
    if absent.any():
        examples = merged.loc[absent, "row_id"].head(3).tolist()
        raise ScoringError(
            f"submission lacks {int(absent.sum())} of the solution's {len(solution)} rows, e.g. {examples}"
        )
    merged["study_id"] = study_ids_of_rows(merged["row_id"])
    merged["group"] = merged["row_id"].map(metric_group)

    losses = []
    for group in METRIC_GROUPS:
        rows = merged[merged["group"] == group]
        if rows.empty:
            raise ScoringError(f"the solution has no labelled {group} rows to score")
        losses.append(
            weighted_log_loss(
                rows[list(SEVERITY_COLUMNS)].to_numpy(),
                rows[pred_columns].to_numpy(),
                rows["sample_weight"].to_numpy(),
            )
        )
    spinal = merged[merged["group"] == "spinal"].groupby("study_id")
    losses.append(
        weighted_log_loss(
            spinal["severe"].max().to_numpy(),
            spinal["severe_pred"].max().to_numpy(),
            spinal["sample_weight"].max().to_numpy(),
        )
    )
    return float(np.mean(losses))


def solution_from_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """Kaggle solution rows from a train.csv-shaped frame of label indices (-1 = missing).

    `labels` has `study_id` and the 25 label columns holding 0/1/2 or -1; missing labels get no
    solution row, as in the competition.
    """
    _check_columns(labels, ("study_id", *LABEL_COLUMNS), "labels")
    long = labels.melt(id_vars="study_id", value_vars=list(LABEL_COLUMNS), value_name="label")
    long = long[long["label"] != MISSING_LABEL]
    label_index = long["label"].to_numpy(dtype=np.int64)
    one_hot = np.eye(len(SEVERITY_COLUMNS))[label_index]
    solution = pd.DataFrame(
        {
            "row_id": long["study_id"].astype(str) + "_" + long["variable"],
            **{column: one_hot[:, i] for i, column in enumerate(SEVERITY_COLUMNS)},
            "sample_weight": np.asarray(SEVERITY_WEIGHTS)[label_index],
        }
    )
    return solution.sort_values("row_id", kind="stable").reset_index(drop=True)


def submission_from_probabilities(
    study_probabilities: Mapping[int, np.ndarray],
) -> pd.DataFrame:
    """Submission rows from per-study probabilities of shape (5 conditions, 5 levels, 3), each row
    normalised to sum to 1 (an all-zero row becomes uniform, as the metric reads it)."""
    rows = []
    for study_id, probabilities in study_probabilities.items():
        probabilities = np.asarray(probabilities, dtype=np.float64)
        probabilities = _normalise_rows(probabilities.reshape(-1, probabilities.shape[-1])).reshape(probabilities.shape)
        for c, condition in enumerate(CONDITIONS):
            for lv, level in enumerate(LEVELS):
                rows.append((row_id(study_id, condition, level), *probabilities[c, lv]))
    return pd.DataFrame(rows, columns=["row_id", *SEVERITY_COLUMNS])


def class_prior(labels: pd.DataFrame) -> np.ndarray:
    """Class frequencies per condition over labelled cells: array (5 conditions, 3).

    A condition without any labelled cell gets a uniform prior rather than a division by zero.
    """
    _check_columns(labels, LABEL_COLUMNS, "labels")
    prior = np.zeros((len(CONDITIONS), len(SEVERITY_COLUMNS)))
    for c, condition in enumerate(CONDITIONS):
        cells = labels[[f"{condition}_{level}" for level in LEVELS]].to_numpy().ravel()
        cells = cells[cells != MISSING_LABEL].astype(np.int64)
        counts = np.bincount(cells, minlength=len(SEVERITY_COLUMNS)).astype(np.float64)
        prior[c] = counts / counts.sum() if counts.sum() else 1.0 / len(SEVERITY_COLUMNS)
    return prior


def prior_submission(prior: np.ndarray, study_ids: Iterable[int]) -> pd.DataFrame:
    """The prior baseline: every study predicted with its condition's class frequencies."""
    return submission_from_probabilities({int(s): prior_cells(prior) for s in study_ids})


def share_of_attainable_gain(score: float, prior_score: float, limit: float) -> float:
    """(prior - score) / (prior - limit): the share of what can be gained over the prior baseline that
    a score gains, the one figure that compares models across datasets (1: the best attainable)."""
    return (prior_score - score) / (prior_score - limit) if prior_score > limit else float("nan")


def score_against_prior(
    solution: pd.DataFrame, submission: pd.DataFrame, prior: np.ndarray, posteriors: pd.DataFrame | None = None
) -> dict[str, float]:
    """The submission's competition score beside the prior baseline's, on the solution's studies; with
    `posteriors` (synthetic data's true P(label | grade), submission-shaped), also the limit, their
    score, and the share of the attainable gain the submission reaches."""
    study_ids = sorted(set(study_ids_of_rows(solution["row_id"])))
    scores = {
        "score": competition_score(solution, submission),
        "prior_score": competition_score(solution, prior_submission(prior, study_ids)),
    }
    if posteriors is not None:
        scores["limit"] = competition_score(solution, posteriors)
        scores["share_of_attainable_gain"] = share_of_attainable_gain(
            scores["score"], scores["prior_score"], scores["limit"]
        )
    return scores


def describe_scores(scores: dict[str, float]) -> str:
    """`score_against_prior`'s figures as a person reads them (and ECE per condition, when given)."""
    verdict = "beats" if scores["score"] < scores["prior_score"] else "does not beat"
    lines = [
        f"competition score {scores['score']:.4f}   prior baseline {scores['prior_score']:.4f}   "
        f"(lower is better: the model {verdict} the prior)"
    ]
    if "limit" in scores:
        lines.append(
            f"limit {scores['limit']:.4f} (the data's true posteriors: the best attainable)   "
            f"share of the attainable gain {100 * scores['share_of_attainable_gain']:.1f} %"
        )
    errors = {key.removeprefix("ece_"): value for key, value in scores.items() if key.startswith("ece_")}
    if errors:
        lines.append("calibration error (ECE) " + ", ".join(f"{name} {value:.3f}" for name, value in errors.items()))
    return "\n".join(lines)
