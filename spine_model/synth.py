"""A synthetic dataset in the exact Kaggle layout: the embedded default data.

Every file of the competition layout is written (CSV files and real DICOM files written with
pydicom), with label shares as in the real data. Each labelled point carries a local bright blob
whose strength grows with severity, so a model that looks where the coordinates point can beat the
class prior. Geometry is consistent across studies (with jitter), slice order follows
ImagePositionPatient (instance numbers run backwards in some series, as they can in the real
data), and image sizes differ between series, so coordinate scaling bugs show.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from spine_model.constants import (
    AXIAL_T2,
    CONDITION_SERIES,
    CONDITION_TITLES,
    CONDITIONS,
    COORDINATES_CSV,
    LABEL_COLUMNS,
    LEVEL_TITLES,
    LEVELS,
    MISSING_LABEL,
    SAGITTAL_T1,
    SAGITTAL_T2,
    SAMPLE_SUBMISSION_CSV,
    SERIES_DESCRIPTIONS,
    SEVERITIES,
    SEVERITY_COLUMNS,
    SEVERITY_WEIGHTS,
    SOLUTION_CSV,
    TRAIN_CSV,
    images_dir,
    row_id,
    series_descriptions_csv,
)

# Shares of the real train.csv: Normal/Mild, Moderate, Severe among labelled cells ...
LABEL_SHARES = np.array([0.765, 0.161, 0.063]) / (0.765 + 0.161 + 0.063)
# ... and missing cells, mostly subarticular: 10 cells at 2.6% + 15 at 0.2% = 1.2% overall.
MISSING_RATE = {"subarticular": 0.026, "other": 0.002}
# Blob strength per severity, relative to the tissue intensity.
BLOB_AMPLITUDE = (0.1, 0.4, 0.8)
NOISE_STD = 0.10
_UID_ROOT = "1.2.826.0.1.3680043.10.1437."  # a private-looking root; UIDs stay deterministic


@dataclass
class SynthSummary:
    """What `generate_dataset` wrote."""

    out_dir: str
    train_studies: int
    test_studies: int
    series: int
    dicom_files: int
    coordinate_rows: int
    label_counts: dict[str, int]

    def describe(self) -> str:
        counts = ", ".join(f"{name} {n}" for name, n in self.label_counts.items())
        return (
            f"wrote {self.train_studies} train + {self.test_studies} test studies to {self.out_dir}: "
            f"{self.series} series, {self.dicom_files} DICOM files, "
            f"{self.coordinate_rows} coordinate rows; labels: {counts}"
        )


@dataclass
class _Point:
    condition: str
    level: str
    slice_index: int  # position in ImagePositionPatient order
    x: float
    y: float
    severity: int  # 0..2, or MISSING_LABEL


def _sample_labels(rng: np.random.Generator) -> np.ndarray:
    """25 label indices for one study, condition-major, -1 where missing."""
    labels = rng.choice(3, size=len(LABEL_COLUMNS), p=LABEL_SHARES)
    for i, column in enumerate(LABEL_COLUMNS):
        rate = MISSING_RATE["subarticular" if "subarticular" in column else "other"]
        if rng.random() < rate:
            labels[i] = MISSING_LABEL
    return labels


def _series_shape(rng: np.random.Generator, image_size: int) -> tuple[int, int]:
    """(rows, columns) of one series: sizes vary between series, as in the real data."""
    aspect = rng.uniform(0.8, 1.25)
    return int(round(image_size * aspect)), image_size


def _points_for_series(
    description: str,
    labels: np.ndarray,
    n_slices: int,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> list[_Point]:
    """Where each labelled point of this series lies (slice in IPP order, x, y)."""
    points = []
    spine_x = width * rng.uniform(0.46, 0.54)
    top, bottom = height * rng.uniform(0.22, 0.28), height * rng.uniform(0.72, 0.78)
    level_y = np.linspace(top, bottom, len(LEVELS))
    for c, condition in enumerate(CONDITIONS):
        if CONDITION_SERIES[condition] != description:
            continue
        left = condition.startswith("left")
        for lv, level in enumerate(LEVELS):
            severity = int(labels[c * len(LEVELS) + lv])
            jitter = rng.normal(0, 0.01 * width, size=2)
            if description == SAGITTAL_T2:
                slice_index = n_slices // 2
                x, y = spine_x, level_y[lv]
            elif description == SAGITTAL_T1:
                # Patient left is +x in LPS, so left foramina lie on the high-x slices.
                slice_index = min(n_slices - 1, int(round((0.75 if left else 0.25) * (n_slices - 1))))
                x, y = _foramen_x(slice_index, n_slices, width), level_y[lv]
            else:  # axial: one slice per level, inferior (L5/S1) first; the canal sits lower
                slice_index = int(round((len(LEVELS) - 1 - lv) * (n_slices - 1) / (len(LEVELS) - 1)))
                x = width * (0.5 + (0.17 if left else -0.17))
                y = height * (0.38 + 0.06 * lv)
            points.append(_Point(condition, level, slice_index, x + jitter[0], y + jitter[1], severity))
    return points


def _foramen_x(slice_index: int, n_slices: int, width: int) -> float:
    """The column of the foramina on a sagittal slice: the lateral slices lie off-centre."""
    return width * (0.64 - 0.28 * slice_index / max(1, n_slices - 1))


def _render_series(
    description: str,
    points: list[_Point],
    n_slices: int,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """uint16 pixel stack (slices, rows, columns): anatomy, noise and one blob per point.

    Each series type has its own look (a bright CSF band on T2, foramina on T1, a round canal
    on axial slices); narrowing shows as a dark spot in T2's bright canal and as a bright
    spot elsewhere, stronger with severity.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    stack = np.full((n_slices, height, width), 0.3, dtype=np.float32)
    for k in range(n_slices):
        if description == SAGITTAL_T2:
            centre = np.mean([p.x for p in points]) if points else width / 2
            stack[k] += 0.45 * np.exp(-(((xx - centre) / (0.05 * width)) ** 2))
        elif description == SAGITTAL_T1:
            stack[k] += 0.2 * np.exp(-(((xx - _foramen_x(k, n_slices, width)) / (0.07 * width)) ** 2))
        else:
            radius = np.hypot(xx - width / 2, yy - height / 2)
            stack[k] += 0.25 * np.exp(-(((radius - 0.25 * width) / (0.04 * width)) ** 2))
    stack += rng.normal(0, NOISE_STD, size=stack.shape).astype(np.float32)
    sigma = max(1.5, 0.035 * width)
    sign = -1.0 if description == SAGITTAL_T2 else 1.0
    for point in points:
        # A missing label still has anatomy; draw it at a random severity.
        severity = point.severity if point.severity >= 0 else int(rng.integers(3))
        blob = np.exp(-((xx - point.x) ** 2 + (yy - point.y) ** 2) / (2 * sigma**2))
        stack[point.slice_index] += sign * BLOB_AMPLITUDE[severity] * blob
    scale = rng.uniform(800, 3000)  # MR intensities have no absolute unit
    return np.clip(stack * scale, 0, 65535).astype(np.uint16)


def _unique_ids(rng: np.random.Generator, n: int) -> list[int]:
    """n distinct Kaggle-like integer ids."""
    ids: dict[int, None] = {}  # insertion-ordered set: draw order stays deterministic
    while len(ids) < n:
        ids.update(dict.fromkeys(int(i) for i in rng.integers(10**6, 5 * 10**9, size=n - len(ids))))
    return list(ids)


def _uid(*parts: int) -> str:
    return _UID_ROOT + ".".join(str(p) for p in parts)


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    study_id: int,
    series_id: int,
    instance_number: int,
    description: str,
    position: list[float],
    orientation: list[float],
    spacing: float,
) -> None:
    """One uint16 MR slice as a real DICOM file (explicit VR little endian), as the Kaggle data has them."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = _uid(study_id, series_id, instance_number)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.StudyInstanceUID = str(study_id)
    ds.SeriesInstanceUID = str(series_id)
    ds.SeriesNumber = series_id % 100000
    ds.SeriesDescription = description
    ds.InstanceNumber = instance_number
    ds.PatientID = str(study_id)
    ds.ImagePositionPatient = [round(v, 4) for v in position]
    ds.ImageOrientationPatient = orientation
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = 4.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _write_study(
    root: Path,
    split: str,
    study_id: int,
    labels: np.ndarray,
    image_size: int,
    n_slices: int,
    rng: np.random.Generator,
) -> tuple[list[dict], list[dict], int]:
    """Write one study's three series; returns (series rows, coordinate rows, files written)."""
    series_rows, coordinate_rows, files = [], [], 0
    for description in SERIES_DESCRIPTIONS:
        series_id = int(rng.integers(10**7, 5 * 10**9))
        height, width = _series_shape(rng, image_size)
        points = _points_for_series(description, labels, n_slices, height, width, rng)
        stack = _render_series(description, points, n_slices, height, width, rng)
        spacing = round(float(rng.uniform(0.5, 0.9)) * 256 / image_size, 4)
        first_instance = int(rng.integers(1, 4))
        reversed_numbering = bool(rng.random() < 0.3)
        instance_of_slice = [first_instance + (n_slices - 1 - k if reversed_numbering else k) for k in range(n_slices)]
        axial = description == AXIAL_T2
        orientation = [1, 0, 0, 0, 1, 0] if axial else [0, 1, 0, 0, 0, -1]
        for k in range(n_slices):
            offset = (k - n_slices / 2) * 4.0
            position = [-100.0, -100.0, offset] if axial else [offset, -100.0, 100.0]
            write_dicom(
                root / images_dir(split) / str(study_id) / str(series_id) / f"{instance_of_slice[k]}.dcm",
                stack[k],
                study_id=study_id,
                series_id=series_id,
                instance_number=instance_of_slice[k],
                description=description,
                position=position,
                orientation=orientation,
                spacing=spacing,
            )
            files += 1
        series_rows.append({"study_id": study_id, "series_id": series_id, "series_description": description})
        for point in points:
            if point.severity == MISSING_LABEL:
                continue  # unlabelled cells carry no coordinates, as in the real data
            coordinate_rows.append(
                {
                    "study_id": study_id,
                    "series_id": series_id,
                    "instance_number": instance_of_slice[point.slice_index],
                    "condition": CONDITION_TITLES[point.condition],
                    "level": LEVEL_TITLES[point.level],
                    "x": round(point.x, 3),
                    "y": round(point.y, 3),
                }
            )
    return series_rows, coordinate_rows, files


def _labels_frame(study_labels: dict[int, np.ndarray]) -> pd.DataFrame:
    """train.csv-shaped frame of severity strings (empty string = missing)."""
    names = np.array([*SEVERITIES, ""], dtype=object)  # index -1 picks ""
    return pd.DataFrame(
        [[study_id, *names[labels]] for study_id, labels in study_labels.items()],
        columns=["study_id", *LABEL_COLUMNS],
    )


def generate_dataset(
    out_dir: str | Path,
    n_studies: int = 100,
    n_test_studies: int = 10,
    image_size: int = 96,
    n_slices: int = 10,
    seed: int = 0,
) -> SynthSummary:
    """Write a synthetic dataset in the Kaggle layout to `out_dir`; deterministic per `seed`."""
    if n_studies < 1 or n_test_studies < 0:
        raise ValueError(f"need at least one train study (got {n_studies}) and >= 0 test studies")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 px, got {image_size}")
    if n_slices < len(LEVELS):
        raise ValueError(f"n_slices must be at least {len(LEVELS)} (one axial slice per level)")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_ids = _unique_ids(rng, n_studies + n_test_studies)
    splits = {
        "train": sorted(int(s) for s in study_ids[:n_studies]),
        "test": sorted(int(s) for s in study_ids[n_studies:]),
    }

    files = 0
    all_labels: dict[str, dict[int, np.ndarray]] = {}
    coordinate_rows: list[dict] = []
    for split, ids in splits.items():
        series_rows: list[dict] = []
        all_labels[split] = {}
        for study_id in ids:
            labels = _sample_labels(rng)
            all_labels[split][study_id] = labels
            study_series, study_coordinates, n_files = _write_study(
                root, split, study_id, labels, image_size, n_slices, rng
            )
            series_rows += study_series
            files += n_files
            if split == "train":
                coordinate_rows += study_coordinates
        pd.DataFrame(series_rows, columns=["study_id", "series_id", "series_description"]).to_csv(
            root / series_descriptions_csv(split), index=False
        )

    _labels_frame(all_labels["train"]).to_csv(root / TRAIN_CSV, index=False)
    pd.DataFrame(
        coordinate_rows,
        columns=["study_id", "series_id", "instance_number", "condition", "level", "x", "y"],
    ).to_csv(root / COORDINATES_CSV, index=False)

    row_ids = [row_id(s, c, lv) for s in splits["test"] for c in CONDITIONS for lv in LEVELS]
    sample = pd.DataFrame({"row_id": row_ids, **{col: 1 / 3 for col in SEVERITY_COLUMNS}})
    sample.to_csv(root / SAMPLE_SUBMISSION_CSV, index=False)
    solution_rows = []
    for study_id, labels in all_labels["test"].items():
        for i, column in enumerate(LABEL_COLUMNS):
            if labels[i] == MISSING_LABEL:
                continue
            one_hot = np.eye(3)[labels[i]]
            solution_rows.append((f"{study_id}_{column}", *one_hot, SEVERITY_WEIGHTS[labels[i]]))
    pd.DataFrame(solution_rows, columns=["row_id", *SEVERITY_COLUMNS, "sample_weight"]).to_csv(
        root / SOLUTION_CSV, index=False
    )

    train_cells = np.concatenate(list(all_labels["train"].values()))
    label_counts = {name: int((train_cells == i).sum()) for i, name in enumerate(SEVERITIES)}
    label_counts["missing"] = int((train_cells == MISSING_LABEL).sum())
    summary = SynthSummary(
        out_dir=str(root),
        train_studies=n_studies,
        test_studies=n_test_studies,
        series=(n_studies + n_test_studies) * len(SERIES_DESCRIPTIONS),
        dicom_files=files,
        coordinate_rows=len(coordinate_rows),
        label_counts=label_counts,
    )
    (root / "synthetic.json").write_text(
        json.dumps(
            # out_dir left out: the same seed gives the same files wherever they are written
            {
                "seed": seed,
                "image_size": image_size,
                "n_slices": n_slices,
                **{k: v for k, v in asdict(summary).items() if k != "out_dir"},
            },
            indent=2,
        )
    )
    return summary
