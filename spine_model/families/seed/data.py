"""The seed's dataset: a point's slice from the volume store, its normalised coordinates, 25 targets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from spine_model.data.volumes import VolumeReader
from spine_model.families.base import BatchedDataset, jitter_intensity, normalise, point_labels


class SeedDataset(BatchedDataset):
    """Points as SpineNet inputs: batches of ([slices (B, S, S) uint8, coords (B, 2)], targets (B, 25)).

    slices: the points' slices as stored (store size S; `prepare_seed` resizes them to image_size
    on the device); coords: (x / width, y / height) of each point in [0, 1], scaled by the size of
    the DICOM frame the point was marked on (the seed scaled after resizing and fed raw pixels).
    targets: the study's 25 labels, -1 where missing.
    """

    def __init__(self, points: pd.DataFrame, store: VolumeReader) -> None:
        self.series = points[["study_id", "series_id"]].to_numpy(dtype=np.int64)
        self.slice_index = points["slice_index"].to_numpy(dtype=np.int64)
        frame_size_xy = points[["columns", "rows"]].to_numpy(dtype=np.float32)
        self.coords = np.clip(points[["x", "y"]].to_numpy(dtype=np.float32) / frame_size_xy, 0.0, 1.0)
        self.targets = point_labels(points)
        self.store = store

    def __len__(self) -> int:
        return len(self.series)

    def __getitems__(self, indices: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64)
        slices = np.empty((len(indices), self.store.size, self.store.size), dtype=np.uint8)
        for row, index in enumerate(indices):
            study_id, series_id = self.series[index]
            slices[row] = self.store.volume(study_id, series_id)[self.slice_index[index]]
        inputs = [torch.from_numpy(slices), torch.from_numpy(self.coords[indices])]
        return inputs, torch.from_numpy(self.targets[indices])


def prepare_seed(
    slices: torch.Tensor, coords: torch.Tensor, image_size: int, augment: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 slices (B, S, S) and coords (B, 2) -> SpineNet's (image (B, 1, s, s), coords), batched:
    bilinear resize to image_size (antialiased when shrinking), normalisation, and with `augment`
    a random shift per image (the point moves with it) and intensity jitter."""
    images = slices.float().unsqueeze(1)
    if images.shape[-1] != image_size:
        shrink = slices.shape[-1] > image_size
        images = F.interpolate(images, size=(image_size,) * 2, mode="bilinear", align_corners=False, antialias=shrink)
    if augment:
        images, coords = shift(images, coords)
    images = normalise(images)
    return (jitter_intensity(images) if augment else images), coords


def shift(images: torch.Tensor, coords: torch.Tensor, max_shift: float = 0.08) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image moved by a random whole number of pixels (up to max_shift of its side) in x and y,
    the uncovered border black; its point moves with it. Batched: one gather for the whole batch."""
    count, size = images.shape[0], images.shape[-1]
    reach = int(max_shift * size)
    offsets = torch.randint(-reach, reach + 1, (count, 2), device=images.device)  # dx, dy per image
    grid = torch.arange(size, device=images.device)
    source_x = grid[None, :] - offsets[:, :1]  # (B, S): the column each output column reads
    source_y = grid[None, :] - offsets[:, 1:]
    valid = ((source_x >= 0) & (source_x < size))[:, None, :] & ((source_y >= 0) & (source_y < size))[:, :, None]
    rows = source_y.clamp(0, size - 1)[:, None, :, None].expand(-1, images.shape[1], -1, size)
    moved = images.gather(2, rows)
    columns = source_x.clamp(0, size - 1)[:, None, None, :].expand(-1, images.shape[1], size, -1)
    moved = moved.gather(3, columns) * valid[:, None].to(images.dtype)
    return moved, (coords + offsets.to(coords.dtype) / size).clamp(0.0, 1.0)
