"""The seam every model family implements, and what families share.

Both families read *points*: one row per (study, condition, level) point with study_id,
series_id, instance_number, condition, level, x, y (pixels of that instance), located on the
volume store by `volumes.locate_points` (slice_index, x_store, y_store, ...). In training the
points are the labelled coordinates (with `label` and the 25 label columns); in prediction they
come from given coordinates or the coordinate prior.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from spine_model.constants import CONDITIONS, LABEL_COLUMNS, LEVELS, MISSING_LABEL, SEVERITIES

if TYPE_CHECKING:
    from spine_model.config import TrainConfig
    from spine_model.volumes import VolumeReader

CELLS_SHAPE = (len(CONDITIONS), len(LEVELS), len(SEVERITIES))  # a study's probabilities
# Grey-level statistics matching ImageNet's per-channel ones: a pretrained first conv sees a grey
# image through its RGB filters summed (mean and std of the RGB means / stds).
IMAGE_MEAN = 0.449
IMAGE_STD = 0.226


class ModelFamily:
    """One way of turning points on stored volumes into severity probabilities.

    Dataset items are `(inputs, target)`: `inputs` a tuple of tensors passed to the model
    positionally (named by `input_names`), `target` class indices with -1 for missing labels,
    shaped like the model's output without its last (class) axis.
    """

    name: str = ""
    input_names: tuple[str, ...] = ()
    produces: str = "probabilities"  # or "points" (a localiser: see families/localiser)

    def check(self, config: TrainConfig) -> None:
        """Raise ValueError for settings this family cannot use (called when a config is built)."""

    def describe(self, config: TrainConfig) -> str:
        """The model in a few words, for run tables."""
        raise NotImplementedError

    def create_model(self, config: TrainConfig, pretrained: bool = False, allow_download: bool = True) -> nn.Module:
        raise NotImplementedError

    def dataset(self, points: pd.DataFrame, store: VolumeReader, config: TrainConfig, train: bool) -> Dataset:
        raise NotImplementedError

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of weighted losses, sum of weights) over labelled targets; see masked_cross_entropy."""
        return masked_cross_entropy(outputs, targets, class_weights)

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
        """(correct, counted) for the training loop's accuracy: argmax against labelled targets."""
        mask = targets != MISSING_LABEL
        return int((outputs.argmax(-1).reshape(targets.shape) == targets)[mask].sum()), int(mask.sum())

    def cell_probabilities(
        self, outputs: np.ndarray, points: pd.DataFrame, class_prior: np.ndarray
    ) -> dict[int, np.ndarray]:
        """Per study of `points`, probabilities (5 conditions, 5 levels, 3) from the points' outputs.

        class_prior (5, 3) fills what the outputs say nothing about.
        """
        raise NotImplementedError


def masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted cross-entropy summed over labelled targets, and the sum of their weights.

    logits (..., 3) and targets (...) with -1 for missing labels, which count nowhere. The mean
    is sum / weight; returning both lets an epoch average exactly across batches.
    """
    flat_targets = targets.reshape(-1)
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        flat_targets,
        weight=class_weights,
        ignore_index=MISSING_LABEL,
        reduction="sum",
    )
    labelled = flat_targets != MISSING_LABEL
    weight_sum = class_weights[flat_targets[labelled]].sum()
    return loss_sum, weight_sum


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8-valued pixels (any shape) as the models' float input."""
    return (pixels.float() / 255.0 - IMAGE_MEAN) / IMAGE_STD


def jitter_intensity(image: torch.Tensor) -> torch.Tensor:
    """Random contrast (x0.8-1.2), brightness (+-0.1) and Gaussian noise (0.05) of a normalised image.

    Uses torch's RNG, which DataLoader seeds per worker.
    """
    contrast, brightness = 0.8 + 0.4 * torch.rand(1), 0.2 * torch.rand(1) - 0.1
    return image * contrast + brightness + 0.05 * torch.randn_like(image)


def cell_index(points: pd.DataFrame) -> np.ndarray:
    """condition * 5 + level for each point: the index of its cell among the 25, condition-major."""
    condition = points["condition"].map({c: i for i, c in enumerate(CONDITIONS)})
    level = points["level"].map({lv: i for i, lv in enumerate(LEVELS)})
    if condition.isna().any() or level.isna().any():
        bad = points.loc[condition.isna() | level.isna(), ["condition", "level"]].iloc[0].tolist()
        raise ValueError(f"point with unknown condition/level {bad}; expected {CONDITIONS} x {LEVELS}")
    return (condition.to_numpy(np.int64) * len(LEVELS) + level.to_numpy(np.int64)).astype(np.int64)


def point_labels(points: pd.DataFrame, columns: list[str] | tuple[str, ...] = LABEL_COLUMNS) -> np.ndarray:
    """Label indices of the given columns per point; -1 where a column is absent (prediction points)."""
    if all(column in points.columns for column in columns):
        return points[list(columns)].to_numpy(dtype=np.int64, copy=True)  # writable, for torch.from_numpy
    return np.full((len(points), len(columns)), MISSING_LABEL, dtype=np.int64)


def mean_by_study(study_ids: np.ndarray, probabilities: np.ndarray) -> dict[int, np.ndarray]:
    """Per study, the mean of its rows' probabilities."""
    study_ids = np.asarray(study_ids)
    return {int(s): probabilities[study_ids == s].mean(axis=0) for s in np.unique(study_ids)}
