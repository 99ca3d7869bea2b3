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
from torch.utils.data import DataLoader, Dataset

from spine_model.core.constants import LABEL_COLUMNS, MISSING_LABEL

if TYPE_CHECKING:
    from spine_model.core.config import TrainConfig
    from spine_model.data.volumes import VolumeReader

# Grey-level statistics matching ImageNet's per-channel ones: a pretrained first conv sees a grey
# image through its RGB filters summed (mean and std of the RGB means / stds).
IMAGE_MEAN = 0.449
IMAGE_STD = 0.226


class ModelFamily:
    """One way of turning points on stored volumes into severity probabilities.

    Datasets yield batches `(inputs, targets)` (see `BatchedDataset`): `inputs` the tensors the
    loader workers read cheaply from the memory-mapped store (uint8 pixels, indices), `targets`
    class indices with -1 for missing labels, shaped like the model's output without its last
    (class) axis. `prepare` turns the inputs, once on the device, into the model's positional
    inputs (named by `input_names`): resizing, normalisation and augmentation as batched tensor
    operations, where a GPU does them fastest.
    """

    name: str = ""
    input_names: tuple[str, ...] = ()
    produces: str = "probabilities"  # or "points" (a localiser: see families/localiser)

    def describe(self, config: TrainConfig) -> str:
        """The model in a few words, for run tables."""
        raise NotImplementedError

    def create_model(self, config: TrainConfig, pretrained: bool = False, allow_download: bool = True) -> nn.Module:
        raise NotImplementedError

    def dataset(self, points: pd.DataFrame, store: VolumeReader, config: TrainConfig, train: bool) -> Dataset:
        raise NotImplementedError

    def prepare(self, inputs: list[torch.Tensor], config: TrainConfig, train: bool) -> list[torch.Tensor]:
        """A batch's loader inputs, already on the device, as the model's inputs. The default: the
        first input is uint8 pixels, normalised (and intensity-jittered in training with `augment`)."""
        image = normalise(inputs[0])
        if train and config.augment:
            image = jitter_intensity(image)
        return [image, *inputs[1:]]

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of weighted losses, sum of weights) over labelled targets; see masked_cross_entropy."""
        return masked_cross_entropy(outputs, targets, class_weights)

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(correct, counted) for the training loop's accuracy, as tensors on the outputs' device (the
        loop sums them without waiting for the device): argmax against labelled targets."""
        return argmax_hits(outputs, targets)

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
    # Masked by multiplication, not by boolean indexing: that would make the host wait for the device.
    weight_sum = (class_weights[flat_targets.clamp_min(0)] * labelled).sum()
    return loss_sum, weight_sum


def argmax_hits(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, labelled): the outputs' (..., 3) argmax against the labelled targets (-1: missing)."""
    mask = targets != MISSING_LABEL
    correct = (outputs.argmax(-1).reshape(targets.shape) == targets) & mask
    return correct.sum(), mask.sum()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8-valued pixels (any shape) as the models' float input."""
    return (pixels.float() / 255.0 - IMAGE_MEAN) / IMAGE_STD


def jitter_intensity(images: torch.Tensor) -> torch.Tensor:
    """Per item of a batch (first axis), random contrast (x0.8-1.2) and brightness (+-0.1), plus
    Gaussian noise (0.05), of normalised images; batched, on the images' device."""
    shape = (images.shape[0],) + (1,) * (images.dim() - 1)
    contrast = 0.8 + 0.4 * torch.rand(shape, device=images.device)
    brightness = 0.2 * torch.rand(shape, device=images.device) - 0.1
    return images * contrast + brightness + 0.05 * torch.randn_like(images)


class BatchedDataset(Dataset):
    """A dataset that reads a whole batch at once (`__getitems__`, which DataLoader calls with a
    batch's indices): per-item Python work is limited to slicing the memory-mapped store, and
    everything else is one array operation per batch. `collate` passes the batch on as it is.
    """

    def __getitems__(self, indices: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One item, as a batch of one without its batch axis."""
        inputs, targets = self.__getitems__([index])
        return [tensor[0] for tensor in inputs], targets[0]

    @staticmethod
    def collate(batch: tuple[list[torch.Tensor], torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        return batch


def batches(dataset: Dataset, batch_size: int, **loader_options) -> DataLoader:
    """A DataLoader over a family's dataset in order (the dataset batches its own items)."""
    return DataLoader(dataset, batch_size=batch_size, collate_fn=getattr(dataset, "collate", None), **loader_options)


def model_inputs(
    family: ModelFamily, dataset: Dataset, config: TrainConfig, count: int, device: str | torch.device = "cpu"
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The first `count` items of a dataset as the model sees them in evaluation: (inputs, targets)."""
    inputs, targets = next(iter(batches(dataset, count)))
    return family.prepare([tensor.to(device) for tensor in inputs], config, train=False), targets


def point_labels(points: pd.DataFrame, columns: list[str] | tuple[str, ...] = LABEL_COLUMNS) -> np.ndarray:
    """Label indices of the given columns per point; -1 where a column is absent (prediction points)."""
    if all(column in points.columns for column in columns):
        return points[list(columns)].to_numpy(dtype=np.int64, copy=True)  # writable, for torch.from_numpy
    return np.full((len(points), len(columns)), MISSING_LABEL, dtype=np.int64)


def mean_by_study(study_ids: np.ndarray, probabilities: np.ndarray) -> dict[int, np.ndarray]:
    """Per study, the mean of its rows' probabilities."""
    study_ids = np.asarray(study_ids)
    return {int(s): probabilities[study_ids == s].mean(axis=0) for s in np.unique(study_ids)}
