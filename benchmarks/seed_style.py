"""The seed notebook's data path and training loop, rebuilt only to be measured beside ours.

Nothing of the product uses this module. It follows `../shared/seed/pipeline-overview.md`: DICOM
converted to one PNG per image (pydicom, one process), a Dataset that opens a PNG with PIL and
resizes it per item (4 loader workers), and a plain loop: fp32, the data normalised on the CPU,
the loss and the accuracy read back with `.item()` after every step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from spine_model.core.cells import cell_index
from spine_model.core.constants import MISSING_LABEL, images_dir
from spine_model.data.dicom import to_uint8
from spine_model.families.base import IMAGE_MEAN, IMAGE_STD, point_labels


def png_path(out_dir: Path, study_id: int, series_id: int, instance_number: int) -> Path:
    return out_dir / str(study_id) / str(series_id) / f"{instance_number}.png"


def preprocess_to_png(data_dir: Path, split: str, series: pd.DataFrame, out_dir: Path) -> int:
    """Every DICOM file of the listed series -> an 8-bit PNG at its own size, one process, as the
    notebook did (each image windowed on its own). Returns the number of images written."""
    written = 0
    for study_id, series_id in series[["study_id", "series_id"]].drop_duplicates().itertuples(index=False):
        folder = Path(data_dir) / images_dir(split) / str(study_id) / str(series_id)
        for path in sorted(folder.glob("*.dcm")):
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            target = png_path(out_dir, study_id, series_id, int(path.stem))
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(to_uint8(pixels)).save(target)
            written += 1
    return written


def _normalised(image: Image.Image, size: int) -> torch.Tensor:
    pixels = np.asarray(image.convert("L").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return (torch.from_numpy(pixels) / 255.0 - IMAGE_MEAN) / IMAGE_STD


class SeedStyleDataset(Dataset):
    """The notebook's SpineDataset: per item, open the point's PNG, resize to 224, scale the point."""

    def __init__(self, points: pd.DataFrame, png_dir: Path, image_size: int = 224) -> None:
        self.points = points.reset_index(drop=True)
        self.targets = point_labels(points)
        self.png_dir, self.image_size = png_dir, image_size

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int):
        row = self.points.iloc[index]
        image = Image.open(png_path(self.png_dir, row.study_id, row.series_id, row.instance_number))
        width, height = image.size
        coords = torch.tensor([row.x / width, row.y / height], dtype=torch.float32).clamp(0, 1)
        return _normalised(image, self.image_size)[None], coords, torch.from_numpy(self.targets[index])


class SeedStyleCropDataset(Dataset):
    """The crops family as a notebook would write it: per item, open the k PNGs around the point,
    crop each around (x, y) and resize it to crop_size with PIL."""

    def __init__(self, points: pd.DataFrame, index: pd.DataFrame, png_dir: Path, slices: int, crop_size: int,
                 fraction: float) -> None:  # fmt: skip
        self.points = points.reset_index(drop=True)
        self.cells = cell_index(points)
        self.targets = point_labels(points, ["label"])[:, 0]
        self.instances = {
            key: part["instance_number"].tolist() for key, part in index.groupby(["study_id", "series_id"])
        }
        self.png_dir, self.slices, self.crop_size, self.fraction = png_dir, slices, crop_size, fraction

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int):
        row = self.points.iloc[index]
        instances = self.instances[(row.study_id, row.series_id)]
        picked = np.clip(row.slice_index + np.arange(self.slices) - self.slices // 2, 0, len(instances) - 1)
        crops = []
        for k in picked:
            image = Image.open(png_path(self.png_dir, row.study_id, row.series_id, instances[k]))
            half = self.fraction * max(image.size) / 2
            box = (int(row.x - half), int(row.y - half), int(row.x + half), int(row.y + half))
            crops.append(_normalised(image.crop(box), self.crop_size))
        return torch.stack(crops), torch.tensor(self.cells[index]), torch.tensor(self.targets[index])


def seed_style_steps(model, loader, device: torch.device, class_weights, steps: int, lr: float = 1e-3) -> int:
    """The notebook's loop for `steps` batches: fp32, NCHW, clipping, and the loss and accuracy read
    back after every step. Returns the samples seen."""
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    weights = torch.tensor(class_weights, dtype=torch.float32, device=device)
    seen = 0
    running_loss = correct = 0.0
    for step, (*inputs, targets) in enumerate(loader):
        if step == steps:
            break
        inputs, targets = [tensor.to(device) for tensor in inputs], targets.to(device)
        optimizer.zero_grad()
        outputs = model(*inputs)
        flat = targets.reshape(-1)
        loss = F.cross_entropy(outputs.reshape(-1, 3), flat, weight=weights, ignore_index=MISSING_LABEL)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running_loss += loss.item()
        correct += (outputs.reshape(-1, 3).argmax(-1) == flat).sum().item()
        seen += len(targets)
    return seen
