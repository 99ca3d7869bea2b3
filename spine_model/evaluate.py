"""Evaluation: masked loss and accuracy, classification reports, study-level scores vs the prior."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import classification_report, confusion_matrix
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from spine_model.config import TrainConfig
from spine_model.constants import (
    CONDITIONS,
    LABEL_COLUMNS,
    LEVELS,
    MISSING_LABEL,
    SEVERITIES,
    SEVERITY_COLUMNS,
)
from spine_model.dataset import SpineDataset
from spine_model.image_store import ImageStore
from spine_model.metrics import (
    class_prior,
    competition_score,
    prior_submission,
    solution_from_labels,
    submission_from_probabilities,
    weighted_log_loss,
)
from spine_model.model import OUTPUT_SHAPE, SpineNet
from spine_model.split import StudySplit
from spine_model.train import make_loader, resolve_device

CLASS_LABELS = list(range(len(SEVERITIES)))


@torch.no_grad()
def predict_logits(
    model: SpineNet, loader: DataLoader, device: torch.device, amp: bool = True, progress: bool = True
) -> np.ndarray:
    """Logits (N, 5, 5, 3) for every row of `loader`, in order."""
    model.to(device).eval()
    outputs = []
    for image, coords, *_ in tqdm(loader, desc="predict", leave=False, disable=not progress):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = model(image.to(device), coords.to(device))
        outputs.append(logits.float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, *OUTPUT_SHAPE), dtype=np.float32)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def study_probabilities(study_ids: np.ndarray, probabilities: np.ndarray) -> dict[int, np.ndarray]:
    """Per study, the mean of its rows' probabilities: {study_id: (5, 5, 3)}."""
    study_ids = np.asarray(study_ids)
    return {int(s): probabilities[study_ids == s].mean(axis=0) for s in np.unique(study_ids)}


def _report(y_true: np.ndarray, y_pred: np.ndarray) -> dict | None:
    """scikit-learn classification report over labelled entries only; None if there are none."""
    labelled = y_true != MISSING_LABEL
    if not labelled.any():
        return None
    return classification_report(
        y_true[labelled], y_pred[labelled], labels=CLASS_LABELS, target_names=list(SEVERITIES),
        output_dict=True, zero_division=0,
    )  # fmt: skip


def classification_reports(targets: np.ndarray, predicted: np.ndarray) -> dict[str, dict | None]:
    """Reports overall, per condition (5) and per condition x level (25).

    targets and predicted are (N, 25) class indices, condition-major; each report covers exactly
    its own cells' labelled entries (the seed sliced three flattened entries instead, and counted
    missing labels as Normal/Mild).
    """
    reports: dict[str, dict | None] = {"overall": _report(targets.ravel(), predicted.ravel())}
    for c, condition in enumerate(CONDITIONS):
        cells = slice(c * len(LEVELS), (c + 1) * len(LEVELS))
        reports[condition] = _report(targets[:, cells].ravel(), predicted[:, cells].ravel())
    for i, column in enumerate(LABEL_COLUMNS):
        reports[column] = _report(targets[:, i], predicted[:, i])
    return reports


@dataclass
class Evaluation:
    """Everything measured on the validation split."""

    n_rows: int
    n_studies: int
    loss: float
    accuracy: float
    score: float  # competition score of the model's study-level predictions
    prior_score: float  # the same for the train-split class prior
    condition_log_loss: dict[str, float]
    prior_condition_log_loss: dict[str, float]
    reports: dict[str, dict | None]
    confusion: np.ndarray  # (3, 3) rows true, columns predicted, over labelled cells
    submission: pd.DataFrame = field(repr=False)

    def metrics(self) -> dict[str, float]:
        """Flat numeric summary (for MLflow and comparisons)."""
        overall = self.reports["overall"] or {}
        flat = {
            # "final_": per-epoch val_loss / val_accuracy are separate series with step = epoch
            "final_val_loss": self.loss,
            "final_val_accuracy": self.accuracy,
            "val_competition_score": self.score,
            "val_prior_score": self.prior_score,
            "val_score_gain_over_prior": self.prior_score - self.score,
        }
        for severity, key in zip(SEVERITIES, SEVERITY_COLUMNS, strict=True):
            for stat in ("precision", "recall", "f1-score"):
                flat[f"val_{key}_{stat.replace('-score', '')}"] = overall.get(severity, {}).get(stat, 0.0)
        for condition, value in self.condition_log_loss.items():
            flat[f"val_log_loss_{condition}"] = value
        return flat

    def describe(self) -> str:
        """The compact report a person reads at a glance."""
        gap = abs(self.prior_score - self.score)
        verdict = (
            f"beats the prior by {gap:.4f}"
            if self.score < self.prior_score
            else f"is worse than the prior by {gap:.4f}"
        )
        lines = [
            f"Validation: {self.n_studies} studies, {self.n_rows} rows",
            f"  competition score {self.score:.4f}   prior baseline {self.prior_score:.4f}   "
            f"(lower is better: the model {verdict})",
            f"  loss {self.loss:.4f}   accuracy {self.accuracy:.4f} (labelled cells of every row)",
            "",
            f"  {'condition':<34}{'log loss':>9}{'prior':>8}  {'F1 N/M':>7}{'F1 Mod':>7}{'F1 Sev':>7}{'n':>7}",
        ]
        for condition in CONDITIONS:
            report = self.reports.get(condition) or {}
            f1 = [report.get(s, {}).get("f1-score", float("nan")) for s in SEVERITIES]
            support = int(sum(report.get(s, {}).get("support", 0) for s in SEVERITIES))
            lines.append(
                f"  {condition:<34}{self.condition_log_loss.get(condition, float('nan')):>9.4f}"
                f"{self.prior_condition_log_loss.get(condition, float('nan')):>8.4f}  "
                f"{f1[0]:>7.2f}{f1[1]:>7.2f}{f1[2]:>7.2f}{support:>7d}"
            )
        overall = self.reports["overall"]
        if overall:
            lines += ["", "  overall (labelled cells)   precision  recall    F1   support"]
            for severity in SEVERITIES:
                r = overall[severity]
                lines.append(
                    f"    {severity:<24}{r['precision']:>10.2f}{r['recall']:>8.2f}{r['f1-score']:>6.2f}"
                    f"{int(r['support']):>10d}"
                )
        return "\n".join(lines)

    def markdown(self) -> str:
        """Scores and a per-condition table as Markdown (for the Prefect UI)."""
        verdict = "beats" if self.score < self.prior_score else "does **not** beat"
        lines = [
            "| | competition score | loss | accuracy |",
            "|---|---:|---:|---:|",
            f"| **model** | **{self.score:.4f}** | {self.loss:.4f} | {self.accuracy:.4f} |",
            f"| prior baseline | {self.prior_score:.4f} | | |",
            "",
            f"Lower is better: the model {verdict} the train-split class prior "
            f"({self.n_studies} validation studies, {self.n_rows} rows).",
            "",
            "| condition | log loss | prior | F1 Normal/Mild | F1 Moderate | F1 Severe |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for condition in CONDITIONS:
            report = self.reports.get(condition) or {}
            f1 = " | ".join(f"{report.get(s, {}).get('f1-score', float('nan')):.2f}" for s in SEVERITIES)
            lines.append(
                f"| {condition} | {self.condition_log_loss.get(condition, float('nan')):.4f} | "
                f"{self.prior_condition_log_loss.get(condition, float('nan')):.4f} | {f1} |"
            )
        return "\n".join(lines)

    def reports_text(self) -> str:
        """All 31 reports as plain text, in scikit-learn's layout."""
        blocks = []
        for name, report in self.reports.items():
            if report is None:
                blocks.append(f"== {name} ==\n(no labelled entries)\n")
                continue
            rows = [f"{'':<14}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}"]
            for key in (*SEVERITIES, "macro avg", "weighted avg"):
                r = report[key]
                rows.append(
                    f"{key:<14}{r['precision']:>10.2f}{r['recall']:>10.2f}{r['f1-score']:>10.2f}{int(r['support']):>10d}"
                )
            rows.append(f"{'accuracy':<14}{report['accuracy']:>30.2f}")
            blocks.append(f"== {name} ==\n" + "\n".join(rows) + "\n")
        return "\n".join(blocks)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write reports (JSON and text), metrics and the study-level submission; returns the paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {
            "summary": out_dir / "summary.txt",
            "summary_markdown": out_dir / "summary.md",
            "metrics": out_dir / "metrics.json",
            "reports_json": out_dir / "classification_reports.json",
            "reports_text": out_dir / "classification_reports.txt",
            "submission": out_dir / "val_submission.csv",
        }
        paths["summary"].write_text(self.describe() + "\n")
        paths["summary_markdown"].write_text(self.markdown() + "\n")
        paths["metrics"].write_text(json.dumps(self.metrics(), indent=2))
        paths["reports_json"].write_text(json.dumps(self.reports, indent=2))
        paths["reports_text"].write_text(self.reports_text())
        self.submission.to_csv(paths["submission"], index=False)
        return paths


def _condition_log_losses(solution: pd.DataFrame, submission: pd.DataFrame) -> dict[str, float]:
    """Sample-weighted log loss per condition (the metric's ingredient, at finer grain)."""
    merged = solution.merge(submission, on="row_id", suffixes=("", "_pred"))
    losses = {}
    for condition in CONDITIONS:
        rows = merged[merged["row_id"].str.contains(f"_{condition}_", regex=False)]
        if rows.empty:
            continue
        losses[condition] = weighted_log_loss(
            rows[list(SEVERITY_COLUMNS)].to_numpy(),
            rows[[f"{c}_pred" for c in SEVERITY_COLUMNS]].to_numpy(),
            rows["sample_weight"].to_numpy(),
        )
    return losses


def evaluate_predictions(
    logits: np.ndarray,
    rows: pd.DataFrame,
    labels: pd.DataFrame,
    prior: np.ndarray,
    class_weights: tuple[float, float, float] = (1.0, 2.0, 4.0),
) -> Evaluation:
    """Score row-level logits for `rows` (long-table rows, same order) against study labels.

    labels: per-study label indices (train.csv as loaded); prior: (5, 3) train-split class
    frequencies per condition, the baseline printed beside the model.
    """
    if len(logits) != len(rows):
        raise ValueError(f"{len(logits)} predictions for {len(rows)} rows")
    targets = rows[list(LABEL_COLUMNS)].to_numpy(dtype=np.int64)
    flat_log_p = log_softmax(logits).reshape(len(rows), -1, OUTPUT_SHAPE[-1])
    labelled = targets != MISSING_LABEL
    if not labelled.any():
        raise ValueError("no labelled cells among the rows to evaluate")
    weights = np.asarray(class_weights)[targets[labelled]]
    picked = np.take_along_axis(flat_log_p[labelled], targets[labelled][:, None], axis=1)[:, 0]
    loss = float(-(weights * picked).sum() / weights.sum())
    predicted = flat_log_p.argmax(-1)
    accuracy = float((predicted[labelled] == targets[labelled]).mean())

    study_ids = rows["study_id"].to_numpy()
    submission = submission_from_probabilities(study_probabilities(study_ids, softmax(logits)))
    solution = solution_from_labels(labels[labels["study_id"].isin(np.unique(study_ids))])
    baseline = prior_submission(prior, np.unique(study_ids))
    return Evaluation(
        n_rows=len(rows),
        n_studies=len(np.unique(study_ids)),
        loss=loss,
        accuracy=accuracy,
        score=competition_score(solution, submission),
        prior_score=competition_score(solution, baseline),
        condition_log_loss=_condition_log_losses(solution, submission),
        prior_condition_log_loss=_condition_log_losses(solution, baseline),
        reports=classification_reports(targets, predicted),
        confusion=confusion_matrix(targets[labelled], predicted[labelled], labels=CLASS_LABELS),
        submission=submission,
    )


def label_counts(labels: pd.DataFrame) -> Mapping[str, int]:
    """How many cells carry each severity (and how many are missing)."""
    cells = labels[list(LABEL_COLUMNS)].to_numpy().ravel()
    counts = {severity: int((cells == i).sum()) for i, severity in enumerate(SEVERITIES)}
    counts["missing"] = int((cells == MISSING_LABEL).sum())
    return counts


def evaluate_model(
    model: SpineNet,
    table: pd.DataFrame,
    labels: pd.DataFrame,
    split: StudySplit,
    store: ImageStore,
    config: TrainConfig,
    progress: bool = True,
) -> Evaluation:
    """Predict the split's validation rows and score them beside the train-split prior."""
    device = resolve_device(config.device)
    val_rows = table[table["study_id"].isin(split.val_study_ids)]
    loader = make_loader(SpineDataset(val_rows, store, config.image_size), config, False, device)
    logits = predict_logits(model, loader, device, config.amp, progress)
    prior = class_prior(labels[labels["study_id"].isin(split.train_study_ids)])
    return evaluate_predictions(logits, val_rows, labels, prior, config.class_weights)
