"""Where preprocessed 8-bit images live, behind one small interface.

`ImageStore.get(study_id, series_id, instance_number)` returns the image and its original size;
the dataset never sees how or where images are stored, so a faster preprocess-once backend can
replace the PNG files without touching the dataset's callers.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, PngImagePlugin

_SIZE_KEY = "original_size"  # PNG text chunk holding "height,width" of the source DICOM


@dataclass(frozen=True)
class StoredImage:
    """An 8-bit image and the size of the DICOM frame it came from (for scaling coordinates)."""

    pixels: np.ndarray  # uint8, (height, width)
    original_height: int
    original_width: int


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """An 8-bit image resized to size x size (bilinear, antialiased when shrinking)."""
    if pixels.shape == (size, size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


class ImageStore(Protocol):
    """Read access to preprocessed images, keyed like the Kaggle layout."""

    def get(self, study_id: int, series_id: int, instance_number: int) -> StoredImage: ...

    def __contains__(self, key: tuple[int, int, int]) -> bool: ...


class PngImageStore:
    """One PNG file per instance: `{root}/{study_id}/{series_id}/{instance_number}.png`.

    The original DICOM size rides in a PNG text chunk, so each file is self-describing and easy
    to look at.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, study_id: int, series_id: int, instance_number: int) -> Path:
        return self.root / str(study_id) / str(series_id) / f"{instance_number}.png"

    def __contains__(self, key: tuple[int, int, int]) -> bool:
        return self.path(*key).is_file()

    def get(self, study_id: int, series_id: int, instance_number: int) -> StoredImage:
        path = self.path(study_id, series_id, instance_number)
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("L"))
                size = image.text.get(_SIZE_KEY)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"no preprocessed image {path}; run preprocessing for this data first") from error
        if size is None:
            raise ValueError(f"{path} lacks the '{_SIZE_KEY}' text chunk written by preprocessing")
        height, width = (int(v) for v in size.split(","))
        return StoredImage(pixels, height, width)

    def put(
        self,
        study_id: int,
        series_id: int,
        instance_number: int,
        pixels: np.ndarray,
        original_height: int,
        original_width: int,
    ) -> Path:
        """Write atomically, so an interrupted run never leaves a half-written file behind."""
        path = self.path(study_id, series_id, instance_number)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = PngImagePlugin.PngInfo()
        info.add_text(_SIZE_KEY, f"{original_height},{original_width}")
        fd, tmp = tempfile.mkstemp(suffix=".png.tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                Image.fromarray(pixels).save(handle, format="PNG", pnginfo=info)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
