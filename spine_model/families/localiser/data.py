"""The localiser's training groups, dataset, heatmap loss, and the peaks read back from heatmaps.

A *group* is what one softmax spans: all slices of a sagittal series (its points' slice and position
are found together), or, per level of an axial series, the labelled slice and its neighbours (the
patient geometry says roughly where a level lies, to a slice or so; the model learns which of the
nearby slices shows it, and where its left and right points lie on it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spine_model.core.constants import AXIAL_T2, CONDITION_SERIES
from spine_model.data.volumes import VolumeReader, resize_square
from spine_model.families.localiser.model import STRIDE, channel

log = logging.getLogger(__name__)

AXIAL_TRAIN_WINDOW = 1  # an axial group: the level's labelled slice and this many slices either side
SIGMA_CELLS = 1.0  # spread of the target around a labelled point, in heatmap cells
HIT_CELLS = 1.5  # a predicted peak this close to the labelled point, on its slice, counts as a hit


@dataclass
class Group:
    """Slices that share one softmax, and the points labelled on them."""

    study_id: int
    series_id: int
    slice_indices: np.ndarray  # into the series' stored volume
    targets: list[tuple[int, int, float, float]] = field(
        default_factory=list
    )  # channel, slice in group, x, y (store px)


def training_groups(points: pd.DataFrame) -> tuple[list[Group], int]:
    """Groups of located training points; also the number of points on a series their condition
    is not read on (e.g. a canal point on a T1 series), which the localiser cannot learn from."""
    usual = points["condition"].map(CONDITION_SERIES) == points["series_description"]
    groups = []
    for (study_id, series_id), series in points[usual].groupby(["study_id", "series_id"], sort=True):
        targets = list(
            zip(
                series["condition"],
                series["level"],
                series["slice_index"],
                series["x_store"],
                series["y_store"],
                strict=True,
            )
        )
        if series["series_description"].iloc[0] == AXIAL_T2:
            last = int(series["n_slices"].iloc[0]) - 1
            for level in sorted(series["level"].unique()):
                labelled = [(c, k, x, y) for c, lv, k, x, y in targets if lv == level]
                ks = [k for _, k, _, _ in labelled]  # left and right may lie on different slices
                start = max(int(min(ks)) - AXIAL_TRAIN_WINDOW, 0)
                window = np.arange(start, min(int(max(ks)) + AXIAL_TRAIN_WINDOW, last) + 1)
                on_level = [(channel(c, level), int(k) - start, x, y) for c, k, x, y in labelled]
                groups.append(Group(study_id, series_id, window, on_level))
        else:
            n_slices = int(series["n_slices"].iloc[0])
            groups.append(
                Group(
                    study_id, series_id, np.arange(n_slices), [(channel(c, lv), k, x, y) for c, lv, k, x, y in targets]
                )
            )
    return groups, int((~usual).sum())


def slice_stack(volume: np.ndarray, slice_indices: np.ndarray, image_size: int) -> torch.Tensor:
    """(n, 3, S, S) uint8: each slice with its neighbours (edges repeated) as channels, at image_size
    (the family's `prepare` normalises them on the device)."""
    last = volume.shape[0] - 1
    picked = np.stack([np.clip(slice_indices + offset, 0, last) for offset in (-1, 0, 1)], axis=1)  # (n, 3)
    frames = {int(k): resize_square(np.array(volume[int(k)]), image_size) for k in np.unique(picked)}
    return torch.from_numpy(np.stack([[frames[int(k)] for k in row] for row in picked]))


def relative_positions(slice_indices: np.ndarray, n_slices: int) -> torch.Tensor:
    """Each slice's place in its series: 0 for the first, 1 for the last."""
    return torch.as_tensor(np.asarray(slice_indices, dtype=np.float32) / max(n_slices - 1, 1))


class LocaliserDataset(Dataset):
    """Groups as model input: (slices (n, 3, S, S), positions (n,)), targets (t, 4) = channel, slice in
    group, x, y in heatmap cells."""

    def __init__(self, groups: list[Group], store: VolumeReader, image_size: int) -> None:
        self.groups = groups
        self.store = store
        self.image_size = image_size
        self.cells_per_store_pixel = image_size / store.size / STRIDE

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        group = self.groups[index]
        volume = self.store.volume(group.study_id, group.series_id)
        slices = slice_stack(volume, group.slice_indices, self.image_size)
        scale = self.cells_per_store_pixel
        targets = torch.tensor([(c, k, x * scale, y * scale) for c, k, x, y in group.targets], dtype=torch.float32)
        return (slices, relative_positions(group.slice_indices, volume.shape[0])), targets.reshape(-1, 4)

    @staticmethod
    def collate(batch: list) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Slices and positions of all groups stacked; targets (P, 6): channel, first slice, slices,
        slice, x, y (cells)."""
        slices, positions, targets, start = [], [], [], 0
        for (group_slices, group_positions), group_targets in batch:
            n = len(group_slices)
            for channel_index, k, x, y in group_targets.tolist():
                targets.append((channel_index, start, n, start + k, x, y))
            slices.append(group_slices)
            positions.append(group_positions)
            start += n
        return [torch.cat(slices), torch.cat(positions)], torch.tensor(targets, dtype=torch.float32).reshape(-1, 6)


def _target_distribution(length: int, height: int, width: int, k: int, x: float, y: float, device) -> torch.Tensor:
    """A Gaussian of SIGMA_CELLS around (x, y) on slice k of the group, zero on the others; sums to 1."""
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    gauss = torch.exp(-((ys[:, None] - y) ** 2 + (xs[None, :] - x) ** 2) / (2 * SIGMA_CELLS**2))
    distribution = torch.zeros(length, height, width, device=device)
    distribution[k] = gauss / gauss.sum()
    return distribution


def heatmap_loss(heatmaps: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy between each point's softmax over its group and its target distribution.

    Returns (sum over points, number of points), as the classification losses do.
    """
    height, width = heatmaps.shape[-2:]
    total = heatmaps.new_zeros((), dtype=torch.float32)
    for channel_index, start, length, k, x, y in targets.tolist():
        logits = heatmaps[int(start) : int(start + length), int(channel_index)].float()
        log_p = F.log_softmax(logits.reshape(-1), dim=0)
        target = _target_distribution(int(length), height, width, int(k - start), x, y, heatmaps.device)
        total = total - (target.reshape(-1) * log_p).sum()
    return total, torch.tensor(float(len(targets)), device=heatmaps.device)


@dataclass(frozen=True)
class Peak:
    """The most likely place of one channel in a group: slice (in the group), x, y (cells), probability."""

    slice: int
    x: float
    y: float
    probability: float


def peak(logits: torch.Tensor) -> Peak:
    """Peak of one channel's logits (slices, H, W): the argmax, refined to the probability-weighted
    mean of its 3 x 3 neighbourhood on that slice."""
    probabilities = F.softmax(logits.float().reshape(-1), dim=0).reshape(logits.shape)
    flat = int(probabilities.argmax())
    k, rest = divmod(flat, logits.shape[1] * logits.shape[2])
    row, col = divmod(rest, logits.shape[2])
    window = probabilities[k, max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2]
    ys = torch.arange(max(row - 1, 0), max(row - 1, 0) + window.shape[0], dtype=torch.float32) + 0.5
    xs = torch.arange(max(col - 1, 0), max(col - 1, 0) + window.shape[1], dtype=torch.float32) + 0.5
    weight = window.sum()
    y = float((window.sum(dim=1) * ys).sum() / weight)
    x = float((window.sum(dim=0) * xs).sum() / weight)
    return Peak(k, x, y, float(probabilities[k, row, col]))


def hits(heatmaps: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """(points whose peak lies on their slice within HIT_CELLS, points)."""
    found = 0
    for channel_index, start, length, k, x, y in targets.tolist():
        found_peak = peak(heatmaps[int(start) : int(start + length), int(channel_index)])
        on_slice = found_peak.slice == int(k - start)
        found += int(on_slice and abs(found_peak.x - x) <= HIT_CELLS and abs(found_peak.y - y) <= HIT_CELLS)
    return found, len(targets)
