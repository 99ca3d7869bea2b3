"""A synthetic dataset in the exact Kaggle layout: the embedded default data.

Every file of the competition layout is written (CSV files and real DICOM files written with
pydicom), with label shares as in the real data. Each point carries a local blob, dark in T2's
bright canal and bright elsewhere, so a model that looks where the coordinates point can beat the
class prior. Two difficulties:

- `easy`: the blob's strength is set by the label (Normal/Mild, Moderate, Severe), so the label is
  a function of the image and a good model scores near 0; for tests that need a clear signal.
- `realistic`: each cell has a continuous degeneration grade (spine_model.data.grades), correlated
  within the study, higher at the lower levels; the blob's strength and size grow smoothly with it,
  and each series has its own contrast and a smooth intensity inhomogeneity across the field. The
  label is a noisy read of the grade, as a radiologist's is. The true P(label | grade) of every
  cell is written beside the labels (`synthetic_posteriors.csv`, both splits; evaluation reads it
  to show the limit, training never does); its competition score, the best attainable, lies near
  the real leaderboard's (about 0.35).
 Every study has its own spine in patient coordinates (levels, canal and foramina
placed with study-to-study variation), and every series is a real DICOM geometry over it
(ImagePositionPatient, ImageOrientationPatient, PixelSpacing), so sagittal and axial series agree
in 3-D; discs mark the levels. Slice order follows ImagePositionPatient (instance numbers run
backwards in some series, as they can in the real data), image sizes differ between series, and
some studies split their axial levels over two series.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from spine_model.core.catalog import image_file
from spine_model.core.constants import (
    AXIAL_T2,
    CONDITION_SERIES,
    CONDITION_TITLES,
    CONDITIONS,
    COORDINATES_CSV,
    LABEL_COLUMNS,
    LEVEL_TITLES,
    LEVELS,
    MISSING_LABEL,
    POSTERIORS_CSV,
    SAGITTAL_T1,
    SAGITTAL_T2,
    SAMPLE_SUBMISSION_CSV,
    SEVERITIES,
    SEVERITY_COLUMNS,
    SEVERITY_WEIGHTS,
    SOLUTION_CSV,
    TRAIN_CSV,
    row_id,
    series_descriptions_csv,
)
from spine_model.data.grades import MISSING_RATE, StudyGrades, sample_study

# Shares of the real train.csv: Normal/Mild, Moderate, Severe among labelled cells (easy data).
LABEL_SHARES = np.array([0.765, 0.161, 0.063]) / (0.765 + 0.161 + 0.063)
# Blob strength per severity, relative to the tissue intensity (easy data) ...
BLOB_AMPLITUDE = (0.1, 0.4, 0.8)
# ... and, for realistic data, a smooth function of the grade: from about 0.05 at grade 0 to 0.9,
# half way at GRADE_MIDPOINT; the blob also widens by up to BLOB_WIDENING with it.
GRADE_MIDPOINT, GRADE_SLOPE, BLOB_WIDENING = 1.3, 2.0, 0.35
BIAS_FIELD = 0.25  # realistic data: intensity inhomogeneity across the field, at most +-25 %
CONTRAST_GAMMA = (0.8, 1.25)  # realistic data: each series' own contrast curve
DIFFICULTIES = ("easy", "realistic")
NOISE_STD = 0.10
FOV_MM = {SAGITTAL_T1: 240.0, SAGITTAL_T2: 240.0, AXIAL_T2: 160.0}  # field of view across the columns
SLAB_MM = 40.0  # sagittal series span this much from patient left to right
AXIAL_SPLIT_SHARE = 0.2  # studies whose axial levels come as two series, upper and lower
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
    grade: float | None = None  # the latent grade the image shows (realistic data)


def _sample_labels(rng: np.random.Generator) -> np.ndarray:
    """25 label indices for one study, condition-major, -1 where missing."""
    labels = rng.choice(3, size=len(LABEL_COLUMNS), p=LABEL_SHARES)
    for i, column in enumerate(LABEL_COLUMNS):
        rate = MISSING_RATE["subarticular" if "subarticular" in column else "other"]
        if rng.random() < rate:
            labels[i] = MISSING_LABEL
    return labels


@dataclass
class _Spine:
    """One study's lumbar spine in patient coordinates (mm; LPS: +x left, +y posterior, +z superior)."""

    level_z: np.ndarray  # (5,) height of each disc level, L1/L2 (the highest) first
    canal_x: float  # the spinal canal, left-right ...
    canal_y: float  # ... and front-back
    foramen_dx: float  # the foramina lie this far left and right of the canal
    subarticular_dx: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> _Spine:
        """Position and size vary from study to study, as patients and scanners do."""
        top, gap = rng.uniform(45, 70), rng.uniform(26, 32)
        return cls(
            top - gap * np.arange(len(LEVELS)), rng.normal(0, 3), rng.uniform(-20, 20), rng.uniform(11, 16),
            rng.uniform(10, 14),
        )  # fmt: skip

    def point(self, condition: str, lv: int) -> np.ndarray:
        """Where a condition's point at level `lv` lies."""
        side = 1.0 if condition.startswith("left") else -1.0  # patient left is +x
        if CONDITION_SERIES[condition] == SAGITTAL_T2:
            return np.array([self.canal_x, self.canal_y, self.level_z[lv]])
        if CONDITION_SERIES[condition] == SAGITTAL_T1:
            return np.array([self.canal_x + side * self.foramen_dx, self.canal_y - 5, self.level_z[lv] + 3])
        return np.array([self.canal_x + side * self.subarticular_dx, self.canal_y - 3, self.level_z[lv]])


@dataclass
class _Series:
    """Where one series' slices lie: DICOM geometry in patient coordinates."""

    description: str
    levels: tuple[int, ...]  # the levels whose points this series carries
    rows: int
    columns: int
    spacing: float  # mm per pixel, both directions
    origins: np.ndarray  # (slices, 3) ImagePositionPatient, in slice order (ascending along the normal)
    row_cosines: np.ndarray  # direction of increasing column index
    column_cosines: np.ndarray  # direction of increasing row index

    @classmethod
    def sample(
        cls, description: str, spine: _Spine, levels: tuple[int, ...], image_size: int, n_slices: int, rng
    ) -> _Series:
        columns = image_size
        rows = int(round(image_size * rng.uniform(0.8, 1.25)))  # sizes vary between series
        spacing = FOV_MM[description] / columns
        if description == AXIAL_T2:  # slices stacked from below the lowest level to above the highest
            low, high = spine.level_z[max(levels)] - 8, spine.level_z[min(levels)] + 8
            heights = np.linspace(low, high, n_slices)
            corner = [-columns * spacing / 2, -rows * spacing / 2]
            origins = np.stack([np.full(n_slices, corner[0]), np.full(n_slices, corner[1]), heights], axis=1)
            return cls(description, levels, rows, columns, spacing, origins, np.eye(3)[0], np.eye(3)[1])
        # Sagittal: columns run posterior (+y), rows inferior (-z); the slice normal is -x, so the
        # slices go from patient left to right.
        centre = spine.canal_x + rng.uniform(-2, 2)
        lateral = centre + SLAB_MM / 2 - np.arange(n_slices) * SLAB_MM / max(1, n_slices - 1)
        corner = [-columns * spacing / 2, rows * spacing / 2]
        origins = np.stack([lateral, np.full(n_slices, corner[0]), np.full(n_slices, corner[1])], axis=1)
        return cls(description, levels, rows, columns, spacing, origins, np.eye(3)[1], -np.eye(3)[2])

    @property
    def orientation(self) -> list[float]:
        return [*self.row_cosines.tolist(), *self.column_cosines.tolist()]

    def locate(self, point: np.ndarray) -> tuple[int, float, float]:
        """(slice index, x, y in pixels) of a point: the nearest slice, the point projected onto it."""
        normal = np.cross(self.row_cosines, self.column_cosines)
        k = int(np.argmin(np.abs((point - self.origins) @ normal)))
        offset = point - self.origins[k]
        return k, float(offset @ self.row_cosines / self.spacing), float(offset @ self.column_cosines / self.spacing)

    def world(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient x, y, z (mm) of slice k's pixels, each broadcastable to (rows, columns).

        A coordinate that one image axis does not change is kept as a row or column vector (or a
        single value), so that what depends on it is computed once per row or column.
        """
        along_columns = np.arange(self.columns, dtype=np.float64)[None, :] * self.spacing
        along_rows = np.arange(self.rows, dtype=np.float64)[:, None] * self.spacing
        axes = []
        for d in range(3):
            value = np.full((1, 1), self.origins[k][d])
            if self.row_cosines[d]:
                value = value + along_columns * self.row_cosines[d]
            if self.column_cosines[d]:
                value = value + along_rows * self.column_cosines[d]
            axes.append(value)
        return axes[0], axes[1], axes[2]


def _series_points(
    series: _Series, spine: _Spine, labels: np.ndarray, rng: np.random.Generator, cell_grades: np.ndarray | None
) -> list[_Point]:
    """The points this series carries: its conditions at its levels, with annotation jitter."""
    points = []
    for c, condition in enumerate(CONDITIONS):
        if CONDITION_SERIES[condition] != series.description:
            continue
        for lv in series.levels:
            slice_index, x, y = series.locate(spine.point(condition, lv))
            jitter = rng.normal(0, 0.01 * series.columns, size=2)
            cell = c * len(LEVELS) + lv
            grade = None if cell_grades is None else float(cell_grades[cell])
            points.append(
                _Point(condition, LEVELS[lv], slice_index, x + jitter[0], y + jitter[1], int(labels[cell]), grade)
            )
    return points


def _box(values: np.ndarray, low: float, high: float, soft: float = 2.0) -> np.ndarray:
    """1 inside [low, high], 0 outside, with soft edges (mm)."""
    return 1 / (1 + np.exp(-(values - low) / soft)) / (1 + np.exp(-(high - values) / soft))


def _anatomy(series: _Series, spine: _Spine, k: int) -> np.ndarray:
    """Slice k's tissue: vertebral bodies and discs in front of the canal, CSF in the canal.

    The discs mark the levels: bright on T2 and axial slices through a disc, dark on T1; on T1 the
    foramina show on the slices through them.
    """
    x, y, z = series.world(k)
    discs = np.exp(-(((z[..., None] - spine.level_z) / 3.5) ** 2)).max(axis=-1)
    front = spine.canal_y - 26
    if series.description == AXIAL_T2:
        body = (((x - spine.canal_x) / 22) ** 2 + ((y - front) / 15) ** 2 < 1).astype(np.float64)
        canal = np.exp(-((x - spine.canal_x) ** 2 + (y - spine.canal_y) ** 2) / 50)
        return _full(series, 0.3 + body * (0.12 + 0.3 * discs) + 0.35 * canal)
    body = _box(y, spine.canal_y - 42, spine.canal_y - 10) * _box(x, spine.canal_x - 25, spine.canal_x + 25)
    if series.description == SAGITTAL_T2:
        canal = np.exp(-(((y - spine.canal_y) / 3) ** 2) - ((x - spine.canal_x) / 7) ** 2)
        return _full(series, 0.3 + body * (0.1 + 0.3 * discs) + 0.45 * canal)
    # T1: the foramina, fat-bright, on the slices that pass through them (left and right of the canal).
    beside = np.exp(-(((np.abs(x - spine.canal_x) - spine.foramen_dx) / 3) ** 2))
    at_levels = np.exp(-(((z[..., None] - spine.level_z - 3) / 5) ** 2)).max(axis=-1)
    foramina = beside * np.exp(-(((y - spine.canal_y + 5) / 4) ** 2)) * at_levels
    return _full(series, 0.3 + body * (0.25 - 0.2 * discs) + 0.3 * foramina)


def _full(series: _Series, image: np.ndarray) -> np.ndarray:
    return np.broadcast_to(image, (series.rows, series.columns))


def _render_series(series: _Series, spine: _Spine, points: list[_Point], rng: np.random.Generator) -> np.ndarray:
    """uint16 pixel stack (slices, rows, columns): anatomy, noise and one blob per point.

    Narrowing shows as a dark spot in T2's bright canal and as a bright spot elsewhere, stronger
    with severity.
    """
    n_slices = len(series.origins)
    stack = np.stack([_anatomy(series, spine, k) for k in range(n_slices)]).astype(np.float32)
    stack += rng.normal(0, NOISE_STD, size=stack.shape).astype(np.float32)
    yy, xx = np.mgrid[0 : series.rows, 0 : series.columns].astype(np.float32)
    sigma = max(1.5, 0.035 * series.columns)
    sign = -1.0 if series.description == SAGITTAL_T2 else 1.0
    for point in points:
        if point.grade is None:
            # A missing label still has anatomy; draw it at a random severity.
            severity = point.severity if point.severity >= 0 else int(rng.integers(3))
            amplitude, width = BLOB_AMPLITUDE[severity], sigma
        else:  # the grade, shown continuously
            strength = 1 / (1 + np.exp(-GRADE_SLOPE * (point.grade - GRADE_MIDPOINT)))
            amplitude, width = 0.05 + 0.85 * strength, sigma * (1 + BLOB_WIDENING * (strength - 0.5))
        blob = np.exp(-((xx - point.x) ** 2 + (yy - point.y) ** 2) / (2 * width**2))
        stack[point.slice_index] += sign * amplitude * blob
    if points and points[0].grade is not None:
        stack = _scanner(stack, rng)
    scale = rng.uniform(800, 3000)  # MR intensities have no absolute unit
    return np.clip(stack * scale, 0, 65535).astype(np.uint16)


def _scanner(stack: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a real scanner adds (realistic data): a smooth intensity inhomogeneity across the field
    (a tilt and a broad bump, the same on every slice of the series) and the series' own contrast."""
    _, rows, columns = stack.shape
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    u, v = xx / columns - 0.5, yy / rows - 0.5
    tilt_u, tilt_v = rng.uniform(-1, 1, size=2) * BIAS_FIELD
    centre_u, centre_v = rng.uniform(-0.3, 0.3, size=2)
    bump = np.exp(-((u - centre_u) ** 2 + (v - centre_v) ** 2) / 0.1) - 0.5
    field = 1 + tilt_u * u + tilt_v * v + rng.uniform(-0.5, 0.5) * BIAS_FIELD * bump
    gamma = rng.uniform(*CONTRAST_GAMMA)
    return (np.clip(stack * field, 0, None) ** gamma).astype(np.float32)


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


Size = int | tuple[int, int]  # a fixed number, or an inclusive range drawn from per series


def _draw(size: Size, rng: np.random.Generator, step: int = 1) -> int:
    """A fixed size as it is (no random draw, so fixed sizes keep their files); a range drawn from."""
    if isinstance(size, int):
        return size
    low, high = size
    return int(rng.integers(low // step, high // step + 1)) * step


def _study_series(
    spine: _Spine, image_size: Size, n_slices: Size, axial_slices: Size, rng: np.random.Generator
) -> list[_Series]:
    """A study's series: sagittal T1, sagittal T2/STIR, and one axial T2 stack over all levels or,
    in some studies, two: an upper and a lower stack that each reach one level into the other's,
    where only one of them carries that level's points."""
    all_levels = tuple(range(len(LEVELS)))
    series = [
        _Series.sample(d, spine, all_levels, _draw(image_size, rng, 2), _draw(n_slices, rng), rng)
        for d in (SAGITTAL_T1, SAGITTAL_T2)
    ]
    axial = (
        [((0, 1, 2), (0, 1, 2, 3)), ((3, 4), (2, 3, 4))] if rng.random() < AXIAL_SPLIT_SHARE else [(all_levels,) * 2]
    )
    for carried, covered in axial:
        stack = _Series.sample(AXIAL_T2, spine, covered, _draw(image_size, rng, 2), _draw(axial_slices, rng), rng)
        series.append(dataclasses.replace(stack, levels=carried))
    return series


def _write_study(
    root: Path,
    split: str,
    study_id: int,
    labels: np.ndarray,
    image_size: Size,
    n_slices: Size,
    axial_slices: Size,
    rng: np.random.Generator,
    cell_grades: np.ndarray | None = None,
) -> tuple[list[dict], list[dict], int]:
    """Write one study's series (their blobs showing `cell_grades` when given, else the labels);
    returns (series rows, coordinate rows, files written)."""
    series_rows, coordinate_rows, files = [], [], 0
    spine = _Spine.sample(rng)
    for series in _study_series(spine, image_size, n_slices, axial_slices, rng):
        series_id = int(rng.integers(10**7, 5 * 10**9))
        points = _series_points(series, spine, labels, rng, cell_grades)
        stack = _render_series(series, spine, points, rng)
        first_instance = int(rng.integers(1, 4))
        reversed_numbering = bool(rng.random() < 0.3)
        n_slices = len(stack)
        instance_of_slice = [first_instance + (n_slices - 1 - k if reversed_numbering else k) for k in range(n_slices)]
        for k in range(n_slices):
            write_dicom(
                image_file(root, split, study_id, series_id, instance_of_slice[k]),
                stack[k],
                study_id=study_id,
                series_id=series_id,
                instance_number=instance_of_slice[k],
                description=series.description,
                position=series.origins[k].tolist(),
                orientation=series.orientation,
                spacing=series.spacing,
            )
            files += 1
        series_rows.append({"study_id": study_id, "series_id": series_id, "series_description": series.description})
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


def _smallest(size: Size) -> int:
    return size if isinstance(size, int) else min(size)


def _labels_frame(study_labels: dict[int, np.ndarray]) -> pd.DataFrame:
    """train.csv-shaped frame of severity strings (empty string = missing)."""
    names = np.array([*SEVERITIES, ""], dtype=object)  # index -1 picks ""
    return pd.DataFrame(
        [[study_id, *names[labels]] for study_id, labels in study_labels.items()],
        columns=["study_id", *LABEL_COLUMNS],
    )


def _check_sizes(n_studies: int, n_test_studies: int, image_size: Size, n_slices: Size, axial_slices: Size) -> None:
    if n_studies < 1 or n_test_studies < 0:
        raise ValueError(f"need at least one train study (got {n_studies}) and >= 0 test studies")
    if _smallest(image_size) < 16:
        raise ValueError(f"image_size must be at least 16 px, got {image_size}")
    if min(_smallest(n_slices), _smallest(axial_slices)) < len(LEVELS):
        raise ValueError(
            f"n_slices and axial_slices must be at least {len(LEVELS)} (one axial slice per level), "
            f"got {n_slices} and {axial_slices}"
        )


def _write_test_answers(root: Path, test_labels: dict[int, np.ndarray]) -> None:
    """sample_submission.csv for the test studies, and test_solution.csv (their labels, as the
    competition's hidden solution: one-hot rows with sample weights, no row for a missing label)."""
    row_ids = [row_id(s, c, lv) for s in test_labels for c in CONDITIONS for lv in LEVELS]
    sample = pd.DataFrame({"row_id": row_ids, **{col: 1 / 3 for col in SEVERITY_COLUMNS}})
    sample.to_csv(root / SAMPLE_SUBMISSION_CSV, index=False)
    solution_rows = []
    for study_id, labels in test_labels.items():
        for i, column in enumerate(LABEL_COLUMNS):
            if labels[i] == MISSING_LABEL:
                continue
            one_hot = np.eye(3)[labels[i]]
            solution_rows.append((f"{study_id}_{column}", *one_hot, SEVERITY_WEIGHTS[labels[i]]))
    pd.DataFrame(solution_rows, columns=["row_id", *SEVERITY_COLUMNS, "sample_weight"]).to_csv(
        root / SOLUTION_CSV, index=False
    )


def _write_tables(
    root: Path, all_labels: dict[str, dict[int, np.ndarray]], coordinate_rows: list[dict], posterior_rows: list[tuple]
) -> None:
    """train.csv, the coordinates, the test split's answers and (realistic data) the posteriors."""
    _labels_frame(all_labels["train"]).to_csv(root / TRAIN_CSV, index=False)
    pd.DataFrame(
        coordinate_rows,
        columns=["study_id", "series_id", "instance_number", "condition", "level", "x", "y"],
    ).to_csv(root / COORDINATES_CSV, index=False)
    _write_test_answers(root, all_labels["test"])
    if posterior_rows:
        columns = ["split", "row_id", "grade", *SEVERITY_COLUMNS]
        pd.DataFrame(posterior_rows, columns=columns).to_csv(root / POSTERIORS_CSV, index=False, float_format="%.6g")


def _posterior_rows(split: str, study_id: int, study: StudyGrades) -> list[tuple]:
    """The study's 25 cells as rows of the posteriors file: split, row id, grade, P(label | grade)."""
    return [
        (split, f"{study_id}_{column}", round(float(grade), 4), *probabilities)
        for column, grade, probabilities in zip(LABEL_COLUMNS, study.grades, study.posteriors, strict=True)
    ]


def _label_counts(study_labels: dict[int, np.ndarray]) -> dict[str, int]:
    cells = np.concatenate(list(study_labels.values()))
    counts = {name: int((cells == i).sum()) for i, name in enumerate(SEVERITIES)}
    counts["missing"] = int((cells == MISSING_LABEL).sum())
    return counts


def generate_dataset(
    out_dir: str | Path,
    n_studies: int = 100,
    n_test_studies: int = 10,
    image_size: Size = 96,
    n_slices: Size = 10,
    seed: int = 0,
    axial_slices: Size | None = None,
    difficulty: str = "easy",
) -> SynthSummary:
    """Write a synthetic dataset in the Kaggle layout to `out_dir`; deterministic per `seed`.

    image_size: DICOM width in pixels (heights vary around it); n_slices: slices per series, and
    per axial series unless `axial_slices` says otherwise. Each is a number, or a (low, high)
    range drawn from per series, e.g. the real data's sizes: image_size=(384, 640),
    n_slices=(15, 20), axial_slices=(20, 40). difficulty: 'easy' (labels set the images) or
    'realistic' (labels a noisy read of grades the images show; posteriors written beside them).
    """
    axial_slices = n_slices if axial_slices is None else axial_slices
    _check_sizes(n_studies, n_test_studies, image_size, n_slices, axial_slices)
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, not {difficulty!r}")
    # Realistic grades come from a stream of their own: the easy data's draws stay as they were.
    grade_rng = np.random.default_rng([seed, 1]) if difficulty == "realistic" else None
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_ids = _unique_ids(rng, n_studies + n_test_studies)
    splits = {
        "train": sorted(int(s) for s in study_ids[:n_studies]),
        "test": sorted(int(s) for s in study_ids[n_studies:]),
    }

    files = n_series = 0
    all_labels: dict[str, dict[int, np.ndarray]] = {}
    coordinate_rows: list[dict] = []
    posterior_rows: list[tuple] = []
    for split, ids in splits.items():
        series_rows: list[dict] = []
        all_labels[split] = {}
        for study_id in ids:
            if grade_rng is None:
                labels, cell_grades = _sample_labels(rng), None
            else:
                study = sample_study(grade_rng)
                labels, cell_grades = study.labels, study.grades
                posterior_rows += _posterior_rows(split, study_id, study)
            all_labels[split][study_id] = labels
            study_series, study_coordinates, n_files = _write_study(
                root, split, study_id, labels, image_size, n_slices, axial_slices, rng, cell_grades
            )
            series_rows += study_series
            files += n_files
            n_series += len(study_series)
            if split == "train":
                coordinate_rows += study_coordinates
        pd.DataFrame(series_rows, columns=["study_id", "series_id", "series_description"]).to_csv(
            root / series_descriptions_csv(split), index=False
        )

    _write_tables(root, all_labels, coordinate_rows, posterior_rows)

    summary = SynthSummary(
        out_dir=str(root),
        train_studies=n_studies,
        test_studies=n_test_studies,
        series=n_series,
        dicom_files=files,
        coordinate_rows=len(coordinate_rows),
        label_counts=_label_counts(all_labels["train"]),
    )
    sizes = {"image_size": image_size, "n_slices": n_slices, **({"difficulty": difficulty} if grade_rng else {})}
    if axial_slices != n_slices:
        sizes["axial_slices"] = axial_slices
    # out_dir left out: the same seed gives the same files wherever they are written
    manifest = {"seed": seed, **sizes, **{k: v for k, v in asdict(summary).items() if k != "out_dir"}}
    (root / "synthetic.json").write_text(json.dumps(manifest, indent=2))
    return summary
