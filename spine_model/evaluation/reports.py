"""Evaluation: masked loss and accuracy, classification reports, study-level scores vs the prior."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import classification_report, confusion_matrix
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from spine_model.core.config import TrainConfig
from spine_model.core.constants import (
    CONDITIONS,
    LABEL_COLUMNS,
    LEVELS,
    MISSING_LABEL,
    SEVERITIES,
    SEVERITY_COLUMNS,
    SEVERITY_WEIGHTS,
)
from spine_model.core.files import atomic_write_csv, atomic_write_text
from spine_model.core.split import StudySplit
from spine_model.data.volumes import VolumeReader
from spine_model.evaluation import calibration
from spine_model.evaluation.metric import (
    competition_score,
    prior_submission,
    share_of_attainable_gain,
    solution_from_labels,
    submission_from_probabilities,
    weighted_log_loss,
)
from spine_model.families import get_family
from spine_model.families.base import argmax_hits, masked_cross_entropy
from spine_model.training.devices import resolve_device
from spine_model.training.loaders import make_loader, model_batches

CLASS_LABELS = list(range(len(SEVERITIES)))
SAVED = ("summary", "summary_markdown", "metrics", "reports_json", "reports_text", "submission")


@torch.no_grad()
def predict_outputs(
    model: nn.Module, loader: DataLoader, config: TrainConfig, device: torch.device, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The model's outputs for every item of `loader` (a dataset of `config`'s family), in order, and
    the items' targets; the batches are prepared on the device as in training, without augmentation."""
    family = get_family(config.model_family)
    model.to(device).eval()
    if config.channels_last:  # as in training: the same layout, the same convolution kernels
        model.to(memory_format=torch.channels_last)
    outputs, targets = [], []
    batches = model_batches(loader, family, config, device, train=False)
    for inputs, batch_targets in tqdm(batches, desc="predict", total=len(loader), leave=False, disable=not progress):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda"):
            outputs.append(model(*inputs).float().cpu().numpy())
        targets.append(batch_targets.cpu().numpy())
    if not outputs:
        raise ValueError("nothing to predict: the loader is empty")
    return np.concatenate(outputs), np.concatenate(targets)


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

    targets and predicted are (studies, 25) class indices, condition-major; each report covers exactly
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
    """Everything measured on the validation split.

    loss is the family's weighted cross-entropy over its points (the training loop's val_loss);
    accuracy, the reports and the confusion matrix are over the labelled cells of the study-level
    predictions, which every family makes and the competition scores.
    """

    n_points: int
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
    # Calibration per condition: reliability tables (spine_model.evaluation.calibration) and their ECE.
    reliability: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    calibration_error: dict[str, float] = field(default_factory=dict)
    # Synthetic data that knows each cell's true P(label | grade): its score, the best attainable.
    limit: float | None = None
    limit_condition_log_loss: dict[str, float] = field(default_factory=dict)
    # A temperature per condition group fitted on these same predictions (`calibrated`), and the
    # score it gives them: optimistic, since fitted and scored on the same studies.
    temperatures: dict[str, float] = field(default_factory=dict)
    calibrated_score: float | None = None
    calibrated_submission: pd.DataFrame | None = field(default=None, repr=False)

    def calibrated(self, solution: pd.DataFrame) -> Evaluation:
        """This evaluation with temperatures fitted on its own predictions (see `temperatures`)."""
        temperatures = calibration.fit_temperatures(solution, self.submission)
        scaled = calibration.with_temperatures(self.submission, temperatures)
        score = competition_score(solution, scaled)
        return dataclasses.replace(
            self, temperatures=temperatures, calibrated_score=score, calibrated_submission=scaled
        )

    @property
    def share_of_attainable_gain(self) -> float | None:
        """(prior - score) / (prior - limit) when the limit is known."""
        return None if self.limit is None else share_of_attainable_gain(self.score, self.prior_score, self.limit)

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
            flat[f"val_prior_log_loss_{condition}"] = self.prior_condition_log_loss.get(condition, float("nan"))
        for condition, value in self.calibration_error.items():
            flat[f"val_ece_{condition}"] = value
        if self.calibrated_score is not None:
            flat["val_calibrated_competition_score"] = self.calibrated_score
            flat.update({f"temperature_{group}": t for group, t in self.temperatures.items()})
        if self.limit is not None:
            flat["val_limit"] = self.limit
            flat["val_share_of_attainable_gain"] = self.share_of_attainable_gain
            flat.update({f"val_limit_log_loss_{c}": value for c, value in self.limit_condition_log_loss.items()})
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
            f"Validation: {self.n_studies} studies, {self.n_points} points",
            f"  competition score {self.score:.4f}   prior baseline {self.prior_score:.4f}   "
            f"(lower is better: the model {verdict})",
        ]
        if self.limit is not None:
            lines.append(
                f"  limit {self.limit:.4f} (the data's true posteriors: the best attainable)   "
                f"share of the attainable gain {100 * self.share_of_attainable_gain:.1f} %"
            )
        if self.calibrated_score is not None:
            temperatures = ", ".join(f"{g} {t:.2f}" for g, t in self.temperatures.items())
            lines.append(
                f"  calibrated {self.calibrated_score:.4f} with temperatures {temperatures}, fitted on these same "
                "studies (optimistic; `spine cv` measures it out of fold)"
            )
        limit_column = f"{'limit':>8}" if self.limit is not None else ""
        loss = "" if math.isnan(self.loss) else f"loss {self.loss:.4f} (per point)   "
        lines += [
            f"  {loss}accuracy {self.accuracy:.4f} (labelled cells of the studies)",
            "",
            f"  {'condition':<34}{'log loss':>9}{'prior':>8}{limit_column}{'ECE':>7}  "
            f"{'F1 N/M':>7}{'F1 Mod':>7}{'F1 Sev':>7}{'n':>7}",
        ]
        for condition in CONDITIONS:
            report = self.reports.get(condition) or {}
            f1 = [report.get(s, {}).get("f1-score", float("nan")) for s in SEVERITIES]
            support = int(sum(report.get(s, {}).get("support", 0) for s in SEVERITIES))
            limit = f"{self.limit_condition_log_loss.get(condition, float('nan')):>8.4f}" if limit_column else ""
            lines.append(
                f"  {condition:<34}{self.condition_log_loss.get(condition, float('nan')):>9.4f}"
                f"{self.prior_condition_log_loss.get(condition, float('nan')):>8.4f}{limit}"
                f"{self.calibration_error.get(condition, float('nan')):>7.3f}  "
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
            *([f"| limit (true posteriors) | {self.limit:.4f} | | |"] if self.limit is not None else []),
            "",
            f"Lower is better: the model {verdict} the train-split class prior "
            f"({self.n_studies} validation studies, {self.n_points} points).",
            *(
                [
                    f"It reaches **{100 * self.share_of_attainable_gain:.1f} %** of the attainable gain over the prior "
                    "(the limit is the score of the data's true posteriors, the best any model can do)."
                ]
                if self.limit is not None
                else []
            ),  # fmt: skip
            "",
            "| condition | log loss | prior | ECE | F1 Normal/Mild | F1 Moderate | F1 Severe |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for condition in CONDITIONS:
            report = self.reports.get(condition) or {}
            f1 = " | ".join(f"{report.get(s, {}).get('f1-score', float('nan')):.2f}" for s in SEVERITIES)
            lines.append(
                f"| {condition} | {self.condition_log_loss.get(condition, float('nan')):.4f} | "
                f"{self.prior_condition_log_loss.get(condition, float('nan')):.4f} | "
                f"{self.calibration_error.get(condition, float('nan')):.3f} | {f1} |"
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

    def save(self, paths: Mapping[str, Path]) -> dict[str, Path]:
        """Write reports (JSON and text), metrics and the study-level submission to the catalog's paths
        (`RunFolder.evaluation_files()`); returns the paths written."""
        paths = {key: Path(paths[key]) for key in SAVED}
        for path in paths.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(paths["summary"], self.describe() + "\n")
        atomic_write_text(paths["summary_markdown"], self.markdown() + "\n")
        atomic_write_text(paths["metrics"], json.dumps(self.metrics(), indent=2))
        atomic_write_text(paths["reports_json"], json.dumps(self.reports, indent=2))
        atomic_write_text(paths["reports_text"], self.reports_text())
        atomic_write_csv(paths["submission"], self.submission)
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


def point_loss_and_accuracy(
    outputs: np.ndarray, targets: np.ndarray, class_weights: tuple[float, float, float] = SEVERITY_WEIGHTS
) -> tuple[float, float]:
    """A family's outputs (..., 3) over its points, scored as training scores them: the weighted
    cross-entropy (the training loop's validation loss) and the accuracy over labelled targets."""
    logits = torch.from_numpy(np.asarray(outputs, dtype=np.float32))
    labels = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    loss_sum, weight_sum = masked_cross_entropy(logits, labels, torch.tensor(class_weights, dtype=torch.float32))
    correct, labelled = argmax_hits(logits, labels)
    if int(labelled) == 0:
        raise ValueError("no labelled targets among the points to evaluate")
    return float(loss_sum / weight_sum), float(correct / labelled)


def evaluate_predictions(
    cells: Mapping[int, np.ndarray],
    labels: pd.DataFrame,
    prior: np.ndarray,
    loss: float = float("nan"),
    n_points: int = 0,
    posteriors: pd.DataFrame | None = None,
) -> Evaluation:
    """Score study-level probabilities {study_id: (5, 5, 3)} against the studies' labels.

    labels: per-study label indices (train.csv as loaded); prior: (5, 3) train-split class
    frequencies per condition, the baseline scored beside the model; loss: the family's loss over
    its points, reported as it is; posteriors: the studies' true P(label | grade) as a submission
    (realistic synthetic data), scored as the limit.
    """
    study_ids = sorted(cells)
    if not study_ids:
        raise ValueError("no study to evaluate")
    known = labels.set_index("study_id")
    missing = sorted(set(study_ids) - set(known.index))
    if missing:
        raise ValueError(f"{len(missing)} predicted studies have no labels, e.g. {missing[:3]}")
    targets = known.loc[study_ids, list(LABEL_COLUMNS)].to_numpy(dtype=np.int64)  # (studies, 25)
    probabilities = np.stack([np.asarray(cells[s]).reshape(len(LABEL_COLUMNS), -1) for s in study_ids])
    predicted = probabilities.argmax(-1)
    labelled = targets != MISSING_LABEL
    if not labelled.any():
        raise ValueError("no labelled cells among the studies to evaluate")
    submission = submission_from_probabilities({s: cells[s] for s in study_ids})
    solution = solution_from_labels(known.loc[study_ids].reset_index())
    baseline = prior_submission(prior, study_ids)
    reliability = calibration.by_condition(solution, submission)
    limit = {} if posteriors is None else {
        "limit": competition_score(solution, posteriors),
        "limit_condition_log_loss": _condition_log_losses(solution, posteriors),
    }  # fmt: skip
    return Evaluation(
        n_points=n_points,
        n_studies=len(study_ids),
        loss=loss,
        accuracy=float((predicted[labelled] == targets[labelled]).mean()),
        score=competition_score(solution, submission),
        prior_score=competition_score(solution, baseline),
        condition_log_loss=_condition_log_losses(solution, submission),
        prior_condition_log_loss=_condition_log_losses(solution, baseline),
        reports=classification_reports(targets, predicted),
        confusion=confusion_matrix(targets[labelled], predicted[labelled], labels=CLASS_LABELS),
        submission=submission,
        reliability=reliability,
        calibration_error=calibration.condition_errors(reliability),
        **limit,
    )


def label_counts(labels: pd.DataFrame) -> Mapping[str, int]:
    """How many cells carry each severity (and how many are missing)."""
    cells = labels[list(LABEL_COLUMNS)].to_numpy().ravel()
    counts = {severity: int((cells == i).sum()) for i, severity in enumerate(SEVERITIES)}
    counts["missing"] = int((cells == MISSING_LABEL).sum())
    return counts


def evaluate_model(
    model: nn.Module,
    points: pd.DataFrame,
    labels: pd.DataFrame,
    split: StudySplit,
    store: VolumeReader,
    config: TrainConfig,
    class_prior: np.ndarray,
    progress: bool = True,
    posteriors: pd.DataFrame | None = None,
) -> Evaluation:
    """Predict the split's validation points and score their studies beside the train-split class
    prior (5 conditions, 3), the one the run fitted (its priors.json)."""
    family = get_family(config.model_family)
    device = resolve_device(config.device)
    val_points = split.select(points, "val")
    loader = make_loader(family.dataset(val_points, store, config, train=False), config, False, device)
    outputs, targets = predict_outputs(model, loader, config, device, progress)
    loss, _ = point_loss_and_accuracy(outputs, targets, config.class_weights)
    cells = family.cell_probabilities(outputs, val_points, class_prior)
    return evaluate_predictions(cells, labels, class_prior, loss, len(val_points), posteriors)
