"""The crops dataset: per point, k adjacent slices around it, centred on (x, y), resized to crop_size."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torchvision.ops import roi_align

from spine_model.core.cells import cell_index
from spine_model.data.volumes import VolumeReader
from spine_model.families.base import BatchedDataset, normalise, point_labels

MIN_SIDE = 4  # pixels of the store: a crop never shrinks below this


def crop_stack(
    volume: np.ndarray, centre_slice: int, x: float, y: float, side: int | tuple[int, int], slices: int
) -> np.ndarray:
    """uint8 (slices, height, width): the slices around `centre_slice` (middle), centred on (x, y).

    `side` is (width, height) in store pixels, or one number for a square. Slices beyond the first or
    last are the edge slice repeated; pixels beyond the image are 0. Reads only the crop's rows of a
    memory-mapped volume.
    """
    width_px, height_px = (side, side) if np.isscalar(side) else (int(side[0]), int(side[1]))
    n_slices, height, width = volume.shape
    offsets = np.arange(slices) - slices // 2
    picked = np.clip(centre_slice + offsets, 0, n_slices - 1)
    x0, y0 = int(round(x - width_px / 2)), int(round(y - height_px / 2))
    xa, xb, ya, yb = max(x0, 0), min(x0 + width_px, width), max(y0, 0), min(y0 + height_px, height)
    crop = np.zeros((slices, height_px, width_px), dtype=np.uint8)
    if xa < xb and ya < yb:
        crop[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = volume[picked, ya:yb, xa:xb]
    return crop


def crop_sides(points: pd.DataFrame, store_size: int, fraction: float, millimetres: float) -> np.ndarray:
    """Crop (width, height) in store pixels per point, (N, 2): a share of the store's side, or
    millimetres via PixelSpacing.

    The store resamples every frame to a square, so a store pixel spans columns / store_size frame
    pixels across (spacing_col mm each) and rows / store_size down (spacing_row mm each): a square in
    millimetres is a rectangle in the store wherever a frame is not square or its pixels are not.
    Millimetres fall back to the share where a frame has no PixelSpacing.
    """
    side = np.full((len(points), 2), fraction * store_size, dtype=np.float64)
    if millimetres > 0:
        spacing = points[["spacing_col", "spacing_row"]].to_numpy(np.float64)
        frame = points[["columns", "rows"]].to_numpy(np.float64)
        from_mm = millimetres / spacing * store_size / frame
        side = np.where(np.isfinite(from_mm).all(axis=1, keepdims=True), from_mm, side)
    return np.maximum(np.round(side), MIN_SIDE).astype(np.int64)


class CropDataset(BatchedDataset):
    """Points as crops: batches of ([crops (B, k, H, W) uint8, sides (B, 2), cells (B,)], targets (B,)).

    A crop is read at its own (width, height) in store pixels (W and H, the batch's largest: smaller
    crops are padded at the bottom and right with their edge pixels); `prepare_crops` resizes each to
    crop_size x crop_size on the device.
    In training the point moves by up to `jitter` of the crop side and the centre slice by up to
    `jitter_slices` (robustness to where a localiser puts it).
    """

    def __init__(
        self,
        points: pd.DataFrame,
        store: VolumeReader,
        slices: int,
        sides: np.ndarray,
        jitter: float = 0.0,
        jitter_slices: int = 0,
    ) -> None:
        self.series = points[["study_id", "series_id"]].to_numpy(dtype=np.int64)
        self.slice_index = points["slice_index"].to_numpy(dtype=np.int64)
        self.centre_xy = points[["x_store", "y_store"]].to_numpy(dtype=np.float64)
        self.sides = np.asarray(sides, dtype=np.int64).reshape(len(self.series), 2)
        self.cells = cell_index(points)
        self.targets = point_labels(points, ["label"])[:, 0]
        self.store = store
        self.slices = slices
        self.jitter, self.jitter_slices = jitter, jitter_slices

    def __len__(self) -> int:
        return len(self.series)

    def __getitems__(self, indices: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64)
        sides, centres = self.sides[indices], self.slice_index[indices]
        xy = self.centre_xy[indices]
        if self.jitter > 0:  # torch's RNG, which DataLoader seeds per worker
            xy = xy + (2 * torch.rand(len(indices), 2, dtype=torch.float64).numpy() - 1) * self.jitter * sides
        if self.jitter_slices > 0:
            centres = centres + torch.randint(-self.jitter_slices, self.jitter_slices + 1, (len(indices),)).numpy()
        width, height = (int(n) for n in sides.max(axis=0))
        crops = np.zeros((len(indices), self.slices, height, width), dtype=np.uint8)
        for row, index in enumerate(indices):
            study_id, series_id = self.series[index]
            w, h = (int(n) for n in sides[row])
            crop = crop_stack(self.store.volume(study_id, series_id), int(centres[row]), xy[row, 0], xy[row, 1], (w, h),
                              self.slices)  # fmt: skip
            # Padded by its own edge, so that resampling near the crop's border never blends in zeros.
            crops[row] = np.pad(crop, ((0, 0), (0, height - h), (0, width - w)), mode="edge")
        inputs = [crops, sides.astype(np.float32), self.cells[indices]]
        return [torch.from_numpy(array) for array in inputs], torch.from_numpy(self.targets[indices])


def prepare_crops(crops: torch.Tensor, sides: torch.Tensor, crop_size: int) -> torch.Tensor:
    """(B, k, H, W) uint8 crops, each valid in its top-left sides[b] = (width, height) -> (B, k,
    crop_size, crop_size) normalised floats: one batched bilinear resampling (roi_align over each
    crop's own rectangle; pixel centres as F.interpolate with align_corners=False, averaged when
    shrinking)."""
    count = crops.shape[0]
    boxes = torch.zeros(count, 5, dtype=torch.float32, device=crops.device)
    boxes[:, 0] = torch.arange(count, device=crops.device)
    boxes[:, 3:5] = sides.reshape(count, 2)
    resized = roi_align(crops.float(), boxes, output_size=crop_size, spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return normalise(resized)
