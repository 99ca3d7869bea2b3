"""The crops dataset: per point, k adjacent slices around it, centred on (x, y), resized to crop_size."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spine_model.families.base import cell_index, jitter_intensity, normalise, point_labels
from spine_model.volumes import VolumeReader

MIN_SIDE = 4  # pixels of the store: a crop never shrinks below this


def crop_stack(volume: np.ndarray, centre_slice: int, x: float, y: float, side: int, slices: int) -> np.ndarray:
    """uint8 (slices, side, side): the slices around `centre_slice` (middle), centred on (x, y).

    Slices beyond the first or last are the edge slice repeated; pixels beyond the image are 0.
    Reads only the crop's rows of a memory-mapped volume.
    """
    n_slices, height, width = volume.shape
    offsets = np.arange(slices) - slices // 2
    picked = np.clip(centre_slice + offsets, 0, n_slices - 1)
    x0, y0 = int(round(x - side / 2)), int(round(y - side / 2))
    xa, xb, ya, yb = max(x0, 0), min(x0 + side, width), max(y0, 0), min(y0 + side, height)
    crop = np.zeros((slices, side, side), dtype=np.uint8)
    if xa < xb and ya < yb:
        crop[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = volume[picked, ya:yb, xa:xb]
    return crop


def crop_sides(points: pd.DataFrame, store_size: int, fraction: float, millimetres: float) -> np.ndarray:
    """Crop side in store pixels per point: a share of the image side, or millimetres via PixelSpacing.

    Millimetres fall back to the share where a frame has no PixelSpacing.
    """
    side = np.full(len(points), fraction * store_size, dtype=np.float64)
    if millimetres > 0:
        from_mm = millimetres / points["spacing_col"].to_numpy(np.float64) * store_size / points["columns"].to_numpy()
        side = np.where(np.isfinite(from_mm), from_mm, side)
    return np.maximum(np.round(side), MIN_SIDE).astype(np.int64)


class CropDataset(Dataset):
    """Points as crop-model inputs: ((crop (k, C, C), cell index ()), target ()).

    In training the point moves by up to `jitter` of the crop side and the centre slice by up to
    `jitter_slices` (robustness to where a localiser puts it); with `augment`, intensity jitters.
    """

    def __init__(
        self,
        points: pd.DataFrame,
        store: VolumeReader,
        slices: int,
        crop_size: int,
        sides: np.ndarray,
        jitter: float = 0.0,
        jitter_slices: int = 0,
        augment: bool = False,
    ) -> None:
        self.series = points[["study_id", "series_id"]].to_numpy(dtype=np.int64)
        self.slice_index = points["slice_index"].to_numpy(dtype=np.int64)
        self.centre_xy = points[["x_store", "y_store"]].to_numpy(dtype=np.float64)
        self.sides = np.asarray(sides, dtype=np.int64)
        self.cells = cell_index(points)
        self.targets = point_labels(points, ["label"])[:, 0]
        self.store = store
        self.slices, self.crop_size = slices, crop_size
        self.jitter, self.jitter_slices, self.augment = jitter, jitter_slices, augment

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        study_id, series_id = self.series[index]
        side = int(self.sides[index])
        (x, y), centre = self.centre_xy[index], int(self.slice_index[index])
        if self.jitter > 0:
            x, y = (np.array([x, y]) + (2 * torch.rand(2).numpy() - 1) * self.jitter * side).tolist()
        if self.jitter_slices > 0:
            centre += int(torch.randint(-self.jitter_slices, self.jitter_slices + 1, ()))
        crop = crop_stack(self.store.volume(study_id, series_id), centre, x, y, side, self.slices)
        image = normalise(resize_crop(torch.from_numpy(crop), self.crop_size))
        if self.augment:
            image = jitter_intensity(image)
        return (image, torch.tensor(self.cells[index])), torch.tensor(self.targets[index])


def resize_crop(crop: torch.Tensor, size: int) -> torch.Tensor:
    """(k, s, s) -> (k, size, size) float, bilinear (antialiased when shrinking)."""
    if crop.shape[-1] == size:
        return crop.float()
    return F.interpolate(
        crop.float().unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False,
        antialias=crop.shape[-1] > size,
    )[0]  # fmt: skip
