"""The seed's dataset: a point's slice from the volume store, its normalised coordinates, 25 targets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from spine_model.families.base import jitter_intensity, normalise, point_labels
from spine_model.volumes import VolumeReader, resize_square


class SeedDataset(Dataset):
    """Points as SpineNet inputs: ((image (1, S, S), coords (2,)), targets (25,)).

    The image is the point's slice resized to `image_size`; coords are (x / width, y / height) of
    the point in [0, 1], scaled by the size of the DICOM frame the point was marked on (the seed
    scaled after resizing and fed raw pixels). targets: the study's 25 labels, -1 where missing.
    """

    def __init__(self, points: pd.DataFrame, store: VolumeReader, image_size: int, augment: bool = False) -> None:
        self.series = points[["study_id", "series_id"]].to_numpy(dtype=np.int64)
        self.slice_index = points["slice_index"].to_numpy(dtype=np.int64)
        self.frame_size_xy = points[["columns", "rows"]].to_numpy(dtype=np.float32)
        self.points_xy = points[["x", "y"]].to_numpy(dtype=np.float32)
        self.targets = point_labels(points)
        self.store = store
        self.image_size = image_size
        self.augment = augment

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        study_id, series_id = self.series[index]
        pixels = np.array(self.store.volume(study_id, series_id)[self.slice_index[index]])  # a copy, not a map
        image = image_tensor(pixels, self.image_size)
        coords = torch.from_numpy(np.clip(self.points_xy[index] / self.frame_size_xy[index], 0.0, 1.0))
        if self.augment:
            image, coords = augment(image, coords)
        return (image, coords), torch.from_numpy(self.targets[index])


def image_tensor(pixels: np.ndarray, image_size: int) -> torch.Tensor:
    """An 8-bit image as SpineNet's input: (1, S, S) float, resized if needed, normalised."""
    return normalise(torch.from_numpy(resize_square(pixels, image_size))).unsqueeze(0)


def augment(image: torch.Tensor, coords: torch.Tensor, max_shift: float = 0.08) -> tuple[torch.Tensor, torch.Tensor]:
    """Random shift (the point moves with the image), contrast, brightness and noise.

    Uses torch's RNG, which DataLoader seeds per worker.
    """
    size = image.shape[-1]
    dx, dy = (int(v) for v in torch.randint(-int(max_shift * size), int(max_shift * size) + 1, (2,)))
    shifted = torch.full_like(image, float(image.min()))
    src_x, dst_x = slice(max(0, -dx), size - max(0, dx)), slice(max(0, dx), size - max(0, -dx))
    src_y, dst_y = slice(max(0, -dy), size - max(0, dy)), slice(max(0, dy), size - max(0, -dy))
    shifted[..., dst_y, dst_x] = image[..., src_y, src_x]
    moved = (coords + torch.tensor([dx, dy], dtype=coords.dtype) / size).clamp(0.0, 1.0)
    return jitter_intensity(shifted), moved
