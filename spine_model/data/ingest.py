"""Kaggle CSVs to the seed's long table: one row per coordinate row, with all 25 study labels.

Bad input fails fast with an error naming file, row and value (missing, empty, header-only or
non-UTF-8 file, missing column, unknown label / condition / level / series description string,
non-integer or too large id, no image folder). Row-level problems (coordinate row without a
train.csv study, series without a description, missing image file, a row repeated, a second point
for one study, condition and level) are skipped, counted by reason and logged, never silently
dropped.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spine_model.core.catalog import image_file, images_root
from spine_model.core.constants import (
    CONDITION_FROM_TITLE,
    COORDINATES_CSV,
    LABEL_COLUMNS,
    LEVEL_FROM_TITLE,
    MISSING_LABEL,
    SERIES_DESCRIPTIONS,
    SEVERITY_INDEX,
    TRAIN_CSV,
    images_dir,
    series_descriptions_csv,
)
from spine_model.core.files import atomic_write, file_fingerprint

log = logging.getLogger(__name__)

COORDINATE_COLUMNS = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")
SERIES_COLUMNS = ("study_id", "series_id", "series_description")
LONG_TABLE_COLUMNS = (
    "study_id", "series_id", "instance_number", "series_description",
    "condition", "level", "x", "y", "label", *LABEL_COLUMNS,
)  # fmt: skip

SKIP_NO_STUDY = "study not in train.csv"
SKIP_NO_DESCRIPTION = "series without a description"
SKIP_NO_IMAGE = "image file missing"
SKIP_DUPLICATE = "coordinate row repeated"
SKIP_SECOND_POINT = "another point for the same study, condition and level"
MAX_ID = np.iinfo(np.int64).max


class DataError(ValueError):
    """Input data that cannot be used as given; the message names file, row, column and value."""


@dataclass
class IngestResult:
    """The long table, the per-study labels, and what was skipped on the way."""

    table: pd.DataFrame
    labels: pd.DataFrame  # study_id + 25 label columns as indices 0..2, -1 = missing
    skipped: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        total = len(self.table) + sum(self.skipped.values())
        text = (
            f"{len(self.table)} of {total} coordinate rows kept "
            f"({self.table['study_id'].nunique()} studies, {self.table['series_id'].nunique()} series)"
        )
        if self.skipped:
            reasons = "; ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
            text += f"; skipped {sum(self.skipped.values())}: {reasons}"
        else:
            text += "; nothing skipped"
        return text


def _read_csv(path: Path, required: tuple[str, ...], allow_no_rows: bool = False) -> pd.DataFrame:
    """Read a CSV as strings, so that every value can be checked and reported as written.

    UTF-8 (a byte-order mark is allowed); an empty file, one that is not UTF-8 text, or one with a
    header but no rows (unless `allow_no_rows`) is a DataError that says so.
    """
    if not path.is_file():
        raise DataError(
            f"{path} not found: expected the Kaggle layout (train.csv, train_label_coordinates.csv, "
            f"train_series_descriptions.csv, train_images/) in {path.parent}"
        )
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as error:
        raise DataError(f"{path} is empty: expected a header line with {list(required)}") from error
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not UTF-8 text: byte {error.object[error.start]:#04x} at offset {error.start} "
            "(save it as UTF-8)"
        ) from error
    except pd.errors.ParserError as error:
        raise DataError(f"{path} is not a readable CSV file ({error})") from error
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    if frame.empty and not allow_no_rows:
        raise DataError(f"{path} has a header but no rows")
    return frame


def _first_bad(path: Path, frame: pd.DataFrame, column: str, ok: pd.Series, expected: str) -> DataError:
    position = int(np.flatnonzero(~ok.to_numpy())[0])
    value = frame[column].iloc[position]
    # +2: one for the header line, one because file lines count from 1.
    return DataError(
        f"{path}, row {position + 2}, column {column}: {value!r} is not {expected} "
        f"({int((~ok).sum())} such row(s) in the file)"
    )


def _integers(path: Path, frame: pd.DataFrame, column: str) -> pd.Series:
    text = frame[column].str.strip()
    ok = text.str.fullmatch(r"\d+")
    if not ok.all():
        raise _first_bad(path, frame, column, ok, "a non-negative integer id")
    fits = text.map(lambda value: int(value) <= MAX_ID)
    if not fits.all():
        raise _first_bad(path, frame, column, fits, f"an id of at most {MAX_ID} (64 bits)")
    return text.astype(np.int64)


def _floats(path: Path, frame: pd.DataFrame, column: str) -> pd.Series:
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
    ok = values.notna() & np.isfinite(values)
    if not ok.all():
        raise _first_bad(path, frame, column, ok, "a finite number")
    return values.astype(np.float64)


def _mapped(path: Path, frame: pd.DataFrame, column: str, mapping: dict[str, object]) -> pd.Series:
    text = frame[column].str.strip()
    ok = text.isin(list(mapping))
    if not ok.all():
        raise _first_bad(path, frame, column, ok, f"one of {list(mapping)}")
    return text.map(mapping)


def load_labels(data_dir: str | Path) -> pd.DataFrame:
    """train.csv as study_id + 25 int8 label columns (0 Normal/Mild, 1 Moderate, 2 Severe, -1 missing)."""
    path = Path(data_dir) / TRAIN_CSV
    raw = _read_csv(path, ("study_id", *LABEL_COLUMNS))
    labels = pd.DataFrame({"study_id": _integers(path, raw, "study_id")})
    mapping: dict[str, object] = {**SEVERITY_INDEX, "": MISSING_LABEL}
    for column in LABEL_COLUMNS:
        labels[column] = _mapped(path, raw, column, mapping).astype(np.int8)
    duplicated = labels["study_id"].duplicated()
    if duplicated.any():
        ok = ~duplicated
        raise _first_bad(path, raw, "study_id", ok, "a study_id seen only once")
    return labels


def load_series_descriptions(data_dir: str | Path, split: str = "train") -> pd.DataFrame:
    """`{split}_series_descriptions.csv`: study_id, series_id, series_description (validated)."""
    path = Path(data_dir) / series_descriptions_csv(split)
    raw = _read_csv(path, SERIES_COLUMNS)
    return pd.DataFrame(
        {
            "study_id": _integers(path, raw, "study_id"),
            "series_id": _integers(path, raw, "series_id"),
            "series_description": _mapped(path, raw, "series_description", {d: d for d in SERIES_DESCRIPTIONS}),
        }
    )


def load_coordinates(data_dir: str | Path) -> pd.DataFrame:
    """train_label_coordinates.csv with snake-case condition and level names."""
    path = Path(data_dir) / COORDINATES_CSV
    raw = _read_csv(path, COORDINATE_COLUMNS)
    return pd.DataFrame(
        {
            "study_id": _integers(path, raw, "study_id"),
            "series_id": _integers(path, raw, "series_id"),
            "instance_number": _integers(path, raw, "instance_number"),
            "condition": _mapped(path, raw, "condition", CONDITION_FROM_TITLE),
            "level": _mapped(path, raw, "level", LEVEL_FROM_TITLE),
            "x": _floats(path, raw, "x"),
            "y": _floats(path, raw, "y"),
        }
    )


def _skip(rows: pd.DataFrame, drop: np.ndarray, reason: str, skipped: Counter[str]) -> pd.DataFrame:
    if drop.any():
        examples = rows.loc[drop, ["study_id", "series_id", "instance_number"]].head(3).to_numpy().tolist()
        log.warning("skipping %d coordinate row(s): %s, e.g. %s", int(drop.sum()), reason, examples)
        skipped[reason] += int(drop.sum())
    return rows.loc[~drop]


def check_data_dir(data_dir: str | Path, split: str = "train", images: bool = True) -> None:
    """The Kaggle layout's files (and, with `images`, the image folder) for `split` are there."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist")
    needed = [series_descriptions_csv(split), *([images_dir(split)] if images else [])]
    if split == "train":
        needed = [TRAIN_CSV, COORDINATES_CSV, *needed]
    missing = [name for name in needed if not (root / name).exists()]
    if missing:
        raise DataError(f"{root} lacks {', '.join(missing)}: expected the Kaggle layout ({', '.join(needed)})")


def build_long_table(data_dir: str | Path, check_images: bool = True) -> IngestResult:
    """Ingest a Kaggle-layout directory into the long table (see module docstring)."""
    data_dir = Path(data_dir)
    check_data_dir(data_dir, "train", images=check_images)
    labels = load_labels(data_dir)
    series = load_series_descriptions(data_dir, "train")
    rows = load_coordinates(data_dir)
    skipped: Counter[str] = Counter()

    rows = _skip(rows, rows.duplicated().to_numpy(), SKIP_DUPLICATE, skipped)
    rows = _skip(rows, ~rows["study_id"].isin(labels["study_id"]).to_numpy(), SKIP_NO_STUDY, skipped)
    rows = rows.merge(series, on=["study_id", "series_id"], how="left")
    rows = _skip(rows, rows["series_description"].isna().to_numpy(), SKIP_NO_DESCRIPTION, skipped)
    if check_images:
        exists = np.array(
            [
                image_file(data_dir, "train", *key).is_file()
                for key in rows[["study_id", "series_id", "instance_number"]].itertuples(index=False)
            ],
            dtype=bool,
        )
        rows = _skip(rows, ~exists, SKIP_NO_IMAGE, skipped)
    # Last: of several points for one cell, the first usable one is kept (a first point on a series
    # without a description or image would otherwise take the good second one down with it).
    rows = _skip(rows, rows.duplicated(["study_id", "condition", "level"]).to_numpy(), SKIP_SECOND_POINT, skipped)

    table = rows.merge(labels, on="study_id", how="left")
    own = [f"{c}_{lv}" for c, lv in zip(table["condition"], table["level"], strict=True)]
    column_index = {column: i for i, column in enumerate(LABEL_COLUMNS)}
    label_matrix = table[list(LABEL_COLUMNS)].to_numpy()
    table["label"] = label_matrix[np.arange(len(table)), [column_index[c] for c in own]].astype(np.int8)
    table = table[list(LONG_TABLE_COLUMNS)].reset_index(drop=True)
    result = IngestResult(table=table, labels=labels, skipped=skipped)
    log.info(result.describe())
    return result


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a long table as parquet (never pickle), creating parent folders; atomically, so that a
    concurrent reader (another pipeline run on the same data) never sees half a file."""
    return atomic_write(path, lambda handle: table.to_parquet(handle, index=False))


@dataclass
class SeriesFiles:
    """The DICOM files found for a list of series."""

    files: pd.DataFrame  # study_id, series_id, instance_number, image_path, series_description
    odd_names: list[str]  # files whose name is not an instance number (skipped)
    empty: list[tuple[int, int]]  # (study, series) listed without any DICOM file
    root: Path


def find_series_files(data_dir: str | Path, split: str, series: pd.DataFrame) -> SeriesFiles:
    """Every `*.dcm` of the listed series under `{split}_images/`, instance numbers from the file names."""
    series = series[["study_id", "series_id", "series_description"]].drop_duplicates()
    root = images_root(data_dir, split)
    if not root.is_dir():
        raise DataError(f"{root} not found: the DICOM files of the {split} studies")
    rows, odd_names, empty = [], [], []
    for study_id, series_id, description in series.itertuples(index=False):
        paths = sorted((root / str(study_id) / str(series_id)).glob("*.dcm"))
        if not paths:
            empty.append((study_id, series_id))
        for path in paths:
            if not path.stem.isdigit():
                odd_names.append(str(path))
                continue
            rows.append((study_id, series_id, int(path.stem), str(path), description))
    files = pd.DataFrame(rows, columns=["study_id", "series_id", "instance_number", "image_path", "series_description"])
    return SeriesFiles(files, odd_names, empty, root)


def data_fingerprint(data_dir: str | Path) -> str:
    """A digest of a data folder's CSVs (labels, coordinates, series descriptions): what a run's
    lineage records, so that runs on the same data say so (the images are not read for it)."""
    names = (TRAIN_CSV, COORDINATES_CSV, series_descriptions_csv("train"))
    parts = "\n".join(file_fingerprint(Path(data_dir) / name) for name in names)
    return hashlib.sha256(parts.encode()).hexdigest()[:32]
