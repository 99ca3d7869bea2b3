"""Reading DICOM files: pixels to 8-bit images, and slice order from ImagePositionPatient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom


class DicomReadError(ValueError):
    """A DICOM file whose pixels cannot be read; the message names the file and the reason."""


def read_pixels(path: str | Path) -> np.ndarray:
    """Pixel values of a single-frame DICOM file in modality units (RescaleSlope/Intercept applied).

    MONOCHROME1 images are inverted so that bright always means high signal.
    """
    try:
        ds = pydicom.dcmread(path)
    except Exception as error:  # pydicom raises many types for broken files
        raise DicomReadError(f"{path}: not a readable DICOM file ({error})") from error
    # A truncated file can parse into an almost empty dataset; only pixel access would fail.
    if "PixelData" not in ds:
        raise DicomReadError(f"{path}: no PixelData element (truncated or not an image)")
    try:
        pixels = ds.pixel_array.astype(np.float32)
    except Exception as error:
        raise DicomReadError(f"{path}: pixel data cannot be decoded ({error})") from error
    if pixels.ndim != 2:
        raise DicomReadError(f"{path}: expected one 2-D frame, got pixel shape {pixels.shape}")
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    pixels = pixels * slope + intercept
    if getattr(ds, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        pixels = pixels.max() - pixels + pixels.min()
    return pixels


def to_uint8(pixels: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5) -> np.ndarray:
    """Window robustly between two percentiles and scale to 0..255."""
    low, high = np.percentile(pixels, [low_percentile, high_percentile])
    if high <= low:  # a flat image
        return np.zeros(pixels.shape, dtype=np.uint8)
    scaled = (np.clip(pixels, low, high) - low) / (high - low)
    return np.round(scaled * 255).astype(np.uint8)


def slice_position(path_or_dataset: str | Path | pydicom.Dataset) -> float:
    """A slice's position along its series' normal (from ImagePositionPatient and orientation).

    Sorting a series by this gives its anatomical slice order, which instance numbers need not.
    """
    ds = path_or_dataset
    if not isinstance(ds, pydicom.Dataset):
        ds = pydicom.dcmread(ds, stop_before_pixels=True)
    try:
        position = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    except AttributeError as error:
        raise DicomReadError(f"{ds.filename}: lacks ImagePositionPatient/ImageOrientationPatient") from error
    normal = np.cross(orientation[:3], orientation[3:])
    return float(position @ normal)
