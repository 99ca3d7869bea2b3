"""Reading DICOM files: one frame's pixels and geometry, 8-bit windowing, slice position."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom


class DicomReadError(ValueError):
    """A DICOM file whose pixels cannot be read; the message names the file and the reason."""


@dataclass(frozen=True)
class Frame:
    """One decoded slice: pixels in modality units and where the slice lies in the patient."""

    pixels: np.ndarray  # float32 (rows, columns)
    position: float  # along the series' slice normal, from ImagePositionPatient
    spacing_row: float  # mm between rows (PixelSpacing[0]); nan when absent
    spacing_col: float  # mm between columns (PixelSpacing[1]); nan when absent
    origin: tuple[float, float, float]  # ImagePositionPatient: the first pixel's centre, mm
    orientation: tuple[float, ...]  # ImageOrientationPatient: row then column direction cosines


def read_frame(path: str | Path) -> Frame:
    """Pixels (RescaleSlope/Intercept applied, MONOCHROME1 inverted) and geometry of one file.

    Any problem becomes a DicomReadError that names the file and the reason.
    """
    try:
        ds = pydicom.dcmread(path)
    except Exception as error:  # pydicom raises many types for broken files
        raise DicomReadError(f"{path}: not a readable DICOM file ({error})") from error
    check_pixel_data(ds, path)
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
    spacing = getattr(ds, "PixelSpacing", None)
    spacing_row, spacing_col = (float(v) for v in spacing) if spacing and len(spacing) == 2 else (math.nan, math.nan)
    position = slice_position(ds, path)
    origin = tuple(float(v) for v in ds.ImagePositionPatient)
    return Frame(
        pixels, position, spacing_row, spacing_col, origin, tuple(float(v) for v in ds.ImageOrientationPatient)
    )


DECODER_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (declared by this package)"


def transfer_syntax(ds: pydicom.Dataset):
    """The dataset's TransferSyntaxUID, or None when its file meta does not say."""
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def decoder_problem(ds: pydicom.Dataset) -> str | None:
    """None when pydicom can decode the dataset's transfer syntax here; else why not, in words."""
    syntax = transfer_syntax(ds)
    if syntax is None:
        return None
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"transfer syntax {syntax} ({syntax.name}) has no pixel decoder"
    if not decoder.is_available:
        return f"transfer syntax {syntax.name} needs a decoder that is not installed ({DECODER_HINT})"
    return None


def check_pixel_data(ds: pydicom.Dataset, path: str | Path) -> None:
    """Why a dataset's pixels cannot be one frame, named precisely, before decoding is tried.

    A file cut short parses into a dataset without PixelData (or with too few bytes of it); a
    compressed transfer syntax needs its decoder plugin; uncompressed pixel data must hold what
    Rows x Columns x BitsAllocated (x SamplesPerPixel) say, give or take less than a frame of padding.
    """
    if "PixelData" not in ds:
        size = Path(path).stat().st_size if Path(path).exists() else 0
        raise DicomReadError(f"{path}: no pixel data: the file ends early (truncated, {size} bytes) or is not an image")
    missing = [name for name in ("Rows", "Columns", "BitsAllocated") if ds.get(name) in (None, "")]
    if missing:
        raise DicomReadError(f"{path}: lacks {'/'.join(missing)}, so its pixel data cannot be read")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames != 1:
        raise DicomReadError(f"{path}: holds {frames} frames; one 2-D frame per file is expected")
    problem = decoder_problem(ds)
    if problem is not None:
        raise DicomReadError(f"{path}: {problem}")
    syntax = transfer_syntax(ds)
    if syntax is None or syntax.is_compressed:
        return  # no syntax: pydicom guesses the encoding; decoding says what is wrong, if anything
    samples = int(ds.get("SamplesPerPixel") or 1)
    rows, columns, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    expected = (rows * columns * samples * bits + 7) // 8
    actual = len(ds.PixelData)
    header = f"Rows x Columns {rows} x {columns} at {bits} bits need {expected} bytes"
    if actual < expected:
        raise DicomReadError(f"{path}: pixel data truncated: {actual} bytes, where {header}")
    if actual >= 2 * expected:  # less than a frame more is padding, which pydicom strips
        raise DicomReadError(
            f"{path}: pixel data of {actual} bytes does not match the header ({header}): Rows/Columns are wrong"
        )


def to_uint8(pixels: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5) -> np.ndarray:
    """Window robustly between two percentiles and scale to 0..255."""
    low, high = window(pixels, low_percentile, high_percentile)
    return apply_window(pixels, low, high)


def window(pixels: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5) -> tuple[float, float]:
    """The intensity range between two percentiles: what becomes 0 and 255."""
    low, high = np.percentile(pixels, [low_percentile, high_percentile])
    return float(low), float(high)


def apply_window(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to [low, high] and scale to uint8; a flat window gives zeros."""
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    scaled = (np.clip(pixels, low, high) - low) / (high - low)
    return np.round(scaled * 255).astype(np.uint8)


def slice_position(path_or_dataset: str | Path | pydicom.Dataset, name: str | Path | None = None) -> float:
    """A slice's position along its series' normal (from ImagePositionPatient and orientation).

    Sorting a series by this gives its anatomical slice order, which instance numbers need not.
    """
    ds = path_or_dataset
    if not isinstance(ds, pydicom.Dataset):
        name = name or ds
        ds = pydicom.dcmread(ds, stop_before_pixels=True)
    try:
        position = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    except AttributeError as error:
        raise DicomReadError(f"{name or ds.filename}: lacks ImagePositionPatient/ImageOrientationPatient") from error
    if position.shape != (3,) or orientation.shape != (6,):
        raise DicomReadError(f"{name or ds.filename}: malformed ImagePositionPatient/ImageOrientationPatient")
    normal = np.cross(orientation[:3], orientation[3:])
    return float(position @ normal)
