"""SpineDataset: one long-table row -> (image, coordinates, 25 targets)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from spine_model.constants import LABEL_COLUMNS
from spine_model.image_store import ImageStore, resize_square

# Grey-level statistics matching ImageNet's per-channel ones, since a pretrained conv1 sees the
# grey image through its RGB filters summed (mean and std of the RGB means/stds).
IMAGE_MEAN = 0.449
IMAGE_STD = 0.226


class SpineDataset(Dataset):
    """Rows of the long table as model inputs.

    image: float tensor (1, S, S), normalised; coords: (x / original width, y / original height)
    of the labelled point in [0, 1]; targets: int64 (25,), -1 where a label is missing.
    Coordinates are scaled by the DICOM frame's own size, which the image store keeps, so
    resizing never shifts them (the seed scaled after the resize and fed raw pixels).
    """

    def __init__(self, table: pd.DataFrame, store: ImageStore, image_size: int, augment: bool = False) -> None:
        self.keys = table[["study_id", "series_id", "instance_number"]].to_numpy(dtype=np.int64)
        self.points_xy = table[["x", "y"]].to_numpy(dtype=np.float32)
        self.targets = table[list(LABEL_COLUMNS)].to_numpy(dtype=np.int64)
        self.store = store
        self.image_size = image_size
        self.augment = augment

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        study_id, series_id, instance_number = (int(v) for v in self.keys[index])
        stored = self.store.get(study_id, series_id, instance_number)
        image = image_tensor(stored.pixels, self.image_size)
        coords = normalised_point(self.points_xy[index], stored.original_width, stored.original_height)
        if self.augment:
            image, coords = augment(image, coords)
        return image, coords, torch.tensor(self.targets[index])


def image_tensor(pixels: np.ndarray, image_size: int) -> torch.Tensor:
    """An 8-bit image as the model's input: (1, S, S) float, resized if needed, normalised."""
    pixels = resize_square(pixels, image_size)
    return ((torch.from_numpy(pixels.astype(np.float32) / 255.0) - IMAGE_MEAN) / IMAGE_STD).unsqueeze(0)


def normalised_point(point_xy: np.ndarray, width: int, height: int) -> torch.Tensor:
    """(x / width, y / height) in [0, 1], with the frame size of the DICOM image the point is on."""
    size_xy = np.array([width, height], dtype=np.float32)
    return torch.from_numpy(np.clip(np.asarray(point_xy, dtype=np.float32) / size_xy, 0.0, 1.0))


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
    contrast, brightness = 0.8 + 0.4 * torch.rand(1), 0.2 * torch.rand(1) - 0.1
    shifted = shifted * contrast + brightness + 0.05 * torch.randn_like(shifted)
    moved = (coords + torch.tensor([dx, dy], dtype=coords.dtype) / size).clamp(0.0, 1.0)
    return shifted, moved
