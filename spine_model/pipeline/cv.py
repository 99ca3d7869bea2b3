"""What K trained folds give together: out-of-fold predictions, their score, and their calibration.

Every study is predicted once, by the fold model that did not train on it; the competition metric
over all those out-of-fold (OOF) predictions judges the configuration on every study, not on one
validation split of a few hundred. The calibration (a temperature per condition group) is fitted on
the OOF predictions; its honest effect is measured by cross-fitting (each fold's predictions scaled
by temperatures fitted on the other folds'), and it is kept only when that improves the OOF score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spine_model.core.catalog import CVFolder
from spine_model.core.constants import CONDITIONS, LABEL_COLUMNS, METRIC_GROUPS, SEVERITY_COLUMNS, study_ids_of_rows
from spine_model.core.files import atomic_write_csv, atomic_write_text
from spine_model.data.grades import read_posteriors
from spine_model.evaluation import calibration
from spine_model.evaluation.compare import markdown_table
from spine_model.evaluation.metric import class_prior, solution_from_labels
from spine_model.evaluation.plots import plot_reliability
from spine_model.evaluation.reports import Evaluation, evaluate_predictions
from spine_model.pipeline.run import read_folds


@dataclass
class CVSummary:
    """The folds' own scores and the out-of-fold evaluation, before and after calibration."""

    fold_table: pd.DataFrame  # fold, studies, score, prior, and log loss per condition
    oof: Evaluation
    calibrated: Evaluation  # the cross-fitted calibration's OOF evaluation (honest)
    temperatures: dict[str, float]  # what the served model applies (all 1 when calibration did not help)
    fingerprint: str
    predictions: pd.DataFrame = field(repr=False)

    @property
    def calibration_kept(self) -> bool:
        return any(t != 1.0 for t in self.temperatures.values())

    def metrics(self) -> dict[str, float]:
        """Flat metrics for the CV's parent MLflow run. `val_competition_score` is the OOF score of
        what is served (calibrated when calibration is kept), so that compare ranks CV runs on it."""
        served = self.calibrated if self.calibration_kept else self.oof
        flat = {f"oof_{key.removeprefix('val_')}": value for key, value in self.oof.metrics().items()}
        flat.update({
            "val_competition_score": served.score, "val_prior_score": served.prior_score,
            "oof_calibrated_competition_score": self.calibrated.score,
            "fold_score_mean": float(self.fold_table["score"].mean()),
            "fold_score_std": float(self.fold_table["score"].std(ddof=0)),
            **{f"temperature_{group}": t for group, t in self.temperatures.items()},
        })  # fmt: skip
        if served.limit is not None:
            flat.update(val_limit=served.limit, val_share_of_attainable_gain=served.share_of_attainable_gain)
        return flat

    def describe(self) -> str:
        kept = "kept" if self.calibration_kept else "not kept: it did not improve the cross-fitted OOF score"
        temperatures = ", ".join(f"{g} {t:.2f}" for g, t in self.temperatures.items())
        lines = [
            f"Cross-validation: {len(self.fold_table)} folds ({self.fingerprint}), {self.oof.n_studies} studies",
            f"  folds: {self.fold_table['score'].mean():.4f} +- {self.fold_table['score'].std(ddof=0):.4f}",
            "",
            "Out of fold (every study predicted by the fold that did not train on it):",
            *("  " + line for line in self.oof.describe().splitlines()[1:]),
            "",
            f"Calibrated out of fold (a temperature per condition group, cross-fitted): {self.calibrated.score:.4f}"
            f" (before {self.oof.score:.4f}); temperatures {temperatures}; {kept}",
        ]
        return "\n".join(lines)

    def markdown(self) -> str:
        table = markdown_table(self.fold_table[["fold", "studies", "score", "prior"]].round(4))
        served = self.calibrated if self.calibration_kept else self.oof
        headline = f"**Out-of-fold score {served.score:.4f}** (before calibration {self.oof.score:.4f}), prior " + (
            f"{self.oof.prior_score:.4f}"
        )
        if served.limit is not None:
            headline += (
                f", limit {served.limit:.4f}: {100 * served.share_of_attainable_gain:.1f} % of the attainable gain"
            )
        return "\n".join([headline, "", table, "", self.oof.markdown()])


def out_of_fold_predictions(cv_dir: str | Path) -> pd.DataFrame:
    """Every fold's predictions of its own validation studies (its evaluation's submission), with the
    fold of each row: the out-of-fold predictions."""
    folder = CVFolder(cv_dir)
    parts = []
    for fold in range(read_folds(cv_dir).count):
        path = folder.fold(fold).evaluation_files()["submission"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: fold {fold} has not been evaluated")
        parts.append(pd.read_csv(path).assign(fold=fold))
    return pd.concat(parts, ignore_index=True)


def cross_fitted(solution: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Each fold's predictions at the temperatures fitted on the other folds' (an honest calibration)."""
    scaled = []
    for fold, part in predictions.groupby("fold"):
        others = predictions[predictions["fold"] != fold].drop(columns="fold")
        temperatures = calibration.fit_temperatures(solution, others)
        scaled.append(calibration.with_temperatures(part.drop(columns="fold"), temperatures))
    return pd.concat(scaled, ignore_index=True)


def summarise_cv(cv_dir: str | Path, labels: pd.DataFrame, data_dir: str | Path) -> CVSummary:
    """Score the folds and their out-of-fold predictions (beside the prior and, on synthetic data, the
    limit), fit and measure the calibration; write it all to the CV folder's out_of_fold/."""
    predictions = out_of_fold_predictions(cv_dir)
    return summarise(predictions, labels, data_dir, read_folds(cv_dir).fingerprint(), CVFolder(cv_dir))


def summarise(
    predictions: pd.DataFrame, labels: pd.DataFrame, data_dir: str | Path, fingerprint: str, folder: CVFolder
) -> CVSummary:
    """`summarise_cv` of out-of-fold predictions (row_id, the three severities, fold), written to `folder`."""
    studies = sorted(set(study_ids_of_rows(predictions["row_id"])))
    labels = labels[labels["study_id"].isin(studies)]
    solution = solution_from_labels(labels)
    prior = class_prior(labels)  # over all the studies: the OOF baseline (each fold's own prior differs little)
    posteriors = read_posteriors(data_dir, studies)
    oof = evaluate_predictions(_cells(predictions), labels, prior, n_points=0, posteriors=posteriors)
    calibrated = evaluate_predictions(_cells(cross_fitted(solution, predictions)), labels, prior, posteriors=posteriors)
    temperatures = calibration.fit_temperatures(solution, predictions.drop(columns="fold"))
    if calibrated.score >= oof.score:
        temperatures = {group: 1.0 for group in METRIC_GROUPS}
    summary = CVSummary(_fold_table(predictions, solution, labels), oof, calibrated, temperatures, fingerprint,
                        predictions)  # fmt: skip
    _write(folder, summary)
    return summary


def ensemble_predictions(cv_dirs: list[str | Path]) -> tuple[pd.DataFrame, str]:
    """The out-of-fold predictions of an ensemble of several cross-validations: each study's
    predictions averaged over the runs (each run's is out of fold, so their mean is too), with the
    folds of the first run; and a fingerprint of the runs' fold assignments together."""
    parts = [out_of_fold_predictions(cv_dir).set_index("row_id") for cv_dir in cv_dirs]
    common = parts[0].index
    for other, cv_dir in zip(parts[1:], cv_dirs[1:], strict=True):
        if set(other.index) != set(common):
            raise ValueError(f"{cv_dir} predicted other studies than {cv_dirs[0]}: an ensemble needs the same data")
    averaged = sum(part.loc[common, list(SEVERITY_COLUMNS)] for part in parts) / len(parts)
    predictions = averaged.assign(fold=parts[0]["fold"]).reset_index()
    prints = sorted({read_folds(cv_dir).fingerprint() for cv_dir in cv_dirs})
    return predictions, prints[0] if len(prints) == 1 else "folds-" + "+".join(p.removeprefix("folds-") for p in prints)


def _cells(submission: pd.DataFrame) -> dict[int, np.ndarray]:
    """Submission rows back to per-study probabilities (5, 5, 3)."""
    frame = submission.assign(study_id=study_ids_of_rows(submission["row_id"]))
    frame["cell"] = frame["row_id"].str.split("_", n=1).str[1].map({c: i for i, c in enumerate(LABEL_COLUMNS)})
    cells = {}
    for study_id, rows in frame.groupby("study_id"):
        values = np.zeros((len(LABEL_COLUMNS), 3))
        values[rows["cell"].to_numpy()] = rows[list(SEVERITY_COLUMNS)].to_numpy()
        cells[int(study_id)] = values.reshape(5, 5, 3)
    return cells


def _fold_table(predictions: pd.DataFrame, solution: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for fold, part in predictions.groupby("fold"):
        studies = set(study_ids_of_rows(part["row_id"]))
        fold_labels = labels[labels["study_id"].isin(studies)]
        evaluation = evaluate_predictions(_cells(part.drop(columns="fold")), fold_labels, class_prior(labels))
        rows.append({"fold": int(fold), "studies": len(studies), "score": evaluation.score,
                     "prior": evaluation.prior_score,
                     **{f"log_loss_{c}": evaluation.condition_log_loss.get(c) for c in CONDITIONS}})  # fmt: skip
    return pd.DataFrame(rows)


def _write(folder: CVFolder, summary: CVSummary) -> None:
    files = folder.summary_files()
    atomic_write_text(files["summary"], summary.describe() + "\n")
    atomic_write_text(files["summary_markdown"], summary.markdown() + "\n")
    atomic_write_text(files["metrics"], json.dumps(summary.metrics(), indent=2))
    atomic_write_csv(files["fold_table"], summary.fold_table)
    atomic_write_csv(files["predictions"], summary.predictions)
    atomic_write_csv(files["calibrated_predictions"], summary.calibrated.submission)
    atomic_write_text(files["calibration"], json.dumps({"temperatures": summary.temperatures}, indent=2))
    plot_reliability(summary.oof.reliability, files["reliability_png"], "out of fold, before calibration")
    plot_reliability(summary.calibrated.reliability, files["reliability_calibrated_png"], "out of fold, calibrated")


def read_temperatures(cv_dir: str | Path) -> dict[str, float]:
    """The temperatures the CV's served model applies (summary written by `summarise_cv`)."""
    return json.loads(CVFolder(cv_dir).summary_files()["calibration"].read_text())["temperatures"]
