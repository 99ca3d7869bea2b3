"""Bad input, case by case: each gets a one-line error naming file, row and value, or a counted,
logged skip with its reason; never a traceback of another kind, never a silent loss.

Every case edits a light copy of the tiny dataset (its CSVs copied, its image folders linked), then
ingests it, puts its points on the tiny volume store and lists its test split, as the pipeline does.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spine_model.core.constants import COORDINATES_CSV, TRAIN_CSV, images_dir, series_descriptions_csv
from spine_model.data.ingest import (
    SKIP_DUPLICATE,
    SKIP_NO_DESCRIPTION,
    SKIP_NO_IMAGE,
    SKIP_NO_STUDY,
    SKIP_SECOND_POINT,
    DataError,
    build_long_table,
)
from spine_model.data.volumes import UNPLACED_OUTSIDE, locate_points
from spine_model.evaluation.metric import submission_from_probabilities
from spine_model.inference.frames import inference_frame, listed_study_ids, with_every_study

SERIES_CSV = series_descriptions_csv("train")
TEST_SERIES_CSV = series_descriptions_csv("test")


def _frame(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _write(path: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(path, index=False)


def edit(name: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    """An edit of one CSV as a table of strings."""

    def apply(root: Path) -> None:
        _write(root / name, change(_frame(root / name)))

    return apply


def cell(row: int, column: str, value: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[row, column] = value
        return frame

    return change


def raw(name: str, content: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """An edit of one CSV's bytes."""

    def apply(root: Path) -> None:
        (root / name).write_bytes(content((root / name).read_bytes()))

    return apply


def header_only(text: bytes) -> bytes:
    return text.split(b"\n", 1)[0] + b"\n"


def latin1_value(text: bytes) -> bytes:
    return text.replace(b"Normal/Mild", "Normal/Mild\u00e9".encode("latin-1"), 1)


def repeat_row(row: int) -> Callable[[pd.DataFrame], pd.DataFrame]:
    return lambda frame: pd.concat([frame, frame.iloc[[row]]], ignore_index=True)


def second_point(frame: pd.DataFrame) -> pd.DataFrame:
    other = frame.iloc[[0]].copy()
    other["x"] = str(float(other["x"].iloc[0]) + 3)
    return pd.concat([frame, other], ignore_index=True)


def unknown_study(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[[0]].assign(study_id="999")], ignore_index=True)


def remove(path: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        target = root / path
        target.unlink() if target.is_symlink() or target.is_file() else shutil.rmtree(target)

    return apply


def drop_first_axial_description(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(index=frame.index[frame["series_description"] == "Axial T2"][0])


@dataclass
class Case:
    name: str
    change: Callable[[Path], None]
    error: str | None = None  # a DataError matching this
    skipped: dict[str, int | Callable[[Path], int]] = field(default_factory=dict)  # ingest skips by reason
    unplaced: dict[str, int] = field(default_factory=dict)  # points set apart on the store, by reason
    check: Callable[[pd.DataFrame], bool] | None = None  # of the long table, when it is made


CASES = [
    # train.csv
    Case("train.csv missing", remove(TRAIN_CSV), error=r"lacks train.csv: expected the Kaggle layout"),
    Case("train.csv empty", raw(TRAIN_CSV, lambda _: b""), error=r"train.csv is empty: expected a header line"),
    Case("train.csv header only", raw(TRAIN_CSV, header_only), error=r"train.csv has a header but no rows"),
    Case("train.csv not UTF-8", raw(TRAIN_CSV, latin1_value), error=r"train.csv is not UTF-8 text: byte 0xe9"),
    Case(
        "train.csv with a byte-order mark",
        raw(TRAIN_CSV, lambda text: b"\xef\xbb\xbf" + text),
        check=lambda table: len(table) > 0,
    ),
    Case(
        "study_id too large for 64 bits",
        edit(TRAIN_CSV, cell(1, "study_id", "99999999999999999999")),
        error=r"train.csv, row 3, column study_id: '99999999999999999999' is not an id of at most 9223372036854775807",
    ),
    Case(
        "negative study_id",
        edit(TRAIN_CSV, cell(0, "study_id", "-5")),
        error=r"row 2, column study_id: '-5' is not a non-negative integer",
    ),
    Case("study_id twice", edit(TRAIN_CSV, repeat_row(2)), error=r"is not a study_id seen only once"),
    Case(
        "unknown severity",
        edit(TRAIN_CSV, cell(3, "spinal_canal_stenosis_l2_l3", "Very severe")),
        error=r"row 5, column spinal_canal_stenosis_l2_l3: 'Very severe' is not one of",
    ),
    Case(
        "label column missing",
        edit(TRAIN_CSV, lambda f: f.drop(columns="spinal_canal_stenosis_l1_l2")),
        error=r"missing column\(s\) \['spinal_canal_stenosis_l1_l2'\]",
    ),
    Case(
        "spaces around values",
        edit(TRAIN_CSV, lambda f: f.map(lambda v: f" {v} " if v else v)),
        check=lambda table: len(table) > 0,
    ),
    # train_label_coordinates.csv
    Case("coordinates empty", raw(COORDINATES_CSV, lambda _: b""), error=r"train_label_coordinates.csv is empty"),
    Case(
        "coordinates header only",
        raw(COORDINATES_CSV, header_only),
        error=r"train_label_coordinates.csv has a header but no rows",
    ),
    Case(
        "coordinates not UTF-8",
        raw(COORDINATES_CSV, lambda text: text.replace(b"L1/L2", b"L1\xff/L2", 1)),
        error=r"train_label_coordinates.csv is not UTF-8 text: byte 0xff",
    ),
    Case(
        "unknown condition",
        edit(COORDINATES_CSV, cell(0, "condition", "Spinal Stenosis")),
        error=r"row 2, column condition: 'Spinal Stenosis' is not one of",
    ),
    Case("x not a number", edit(COORDINATES_CSV, cell(2, "x", "nan")), error=r"row 4, column x: 'nan' is not a finite"),
    Case("y infinite", edit(COORDINATES_CSV, cell(2, "y", "inf")), error=r"row 4, column y: 'inf' is not a finite"),
    Case(
        "instance number too large",
        edit(COORDINATES_CSV, cell(0, "instance_number", "18446744073709551616")),
        error=r"column instance_number: '18446744073709551616' is not an id of at most",
    ),
    Case("a row repeated", edit(COORDINATES_CSV, repeat_row(4)), skipped={SKIP_DUPLICATE: 1}),
    Case("two points for one cell", edit(COORDINATES_CSV, second_point), skipped={SKIP_SECOND_POINT: 1}),
    Case("study not in train.csv", edit(COORDINATES_CSV, unknown_study), skipped={SKIP_NO_STUDY: 1}),
    Case(
        "instance without a file", edit(COORDINATES_CSV, cell(0, "instance_number", "9999")), skipped={SKIP_NO_IMAGE: 1}
    ),
    Case("x negative", edit(COORDINATES_CSV, cell(3, "x", "-2.5")), unplaced={UNPLACED_OUTSIDE: 1}),
    Case("y beyond the rows", edit(COORDINATES_CSV, cell(5, "y", "4000")), unplaced={UNPLACED_OUTSIDE: 1}),
    # train_series_descriptions.csv
    Case("series list header only", raw(SERIES_CSV, header_only), error=r"series_descriptions.csv has a header but"),
    Case(
        "unknown series description",
        edit(SERIES_CSV, cell(0, "series_description", "Coronal T1")),
        error=r"row 2, column series_description: 'Coronal T1' is not one of",
    ),
    Case(
        "series without a description",
        edit(SERIES_CSV, drop_first_axial_description),
        skipped={SKIP_NO_DESCRIPTION: lambda root: _rows_of_missing_series(root)},
    ),
    # folders
    Case("train_images missing", remove(images_dir("train")), error=r"lacks train_images: expected the Kaggle layout"),
]


@pytest.fixture
def light_copy(tiny_data: Path, tmp_path: Path) -> Path:
    """The tiny dataset's CSVs copied, its image folders linked (never written through)."""
    root = tmp_path / "data"
    root.mkdir()
    for path in tiny_data.iterdir():
        if path.is_dir():
            (root / path.name).symlink_to(path, target_is_directory=True)
        else:
            shutil.copyfile(path, root / path.name)
    return root


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25 and len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, light_copy: Path, tiny_store, caplog):
    case.change(light_copy)
    if case.error:
        with pytest.raises(DataError, match=case.error) as raised:
            build_long_table(light_copy)
        assert "\n" not in str(raised.value)  # one line
        return
    with caplog.at_level(logging.WARNING, logger="spine_model.data.ingest"):
        result = build_long_table(light_copy)
    expected_skips = {reason: n(light_copy) if callable(n) else n for reason, n in case.skipped.items()}
    assert dict(result.skipped) == expected_skips
    for reason in expected_skips:
        assert any(reason in message for message in caplog.messages), reason
    store = tiny_store[2]
    _, unplaced = locate_points(result.table, store.index, store.size)
    assert unplaced["reason"].value_counts().to_dict() == case.unplaced
    if case.check:
        assert case.check(result.table)


def _rows_of_missing_series(root: Path) -> int:
    """Coordinate rows of the series that the series list no longer has."""
    series, coordinates = _frame(root / SERIES_CSV), _frame(root / COORDINATES_CSV)
    known = set(zip(series["study_id"], series["series_id"], strict=True))
    return sum((s, r) not in known for s, r in zip(coordinates["study_id"], coordinates["series_id"], strict=True))


# --- the test split -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (remove(images_dir("test")), r"test_images not found: the DICOM files of the test studies"),
        (raw(TEST_SERIES_CSV, header_only), r"test_series_descriptions.csv has a header but no rows"),
        (raw(TEST_SERIES_CSV, lambda _: b""), r"test_series_descriptions.csv is empty"),
    ],
    ids=["test_images missing", "test series header only", "test series empty"],
)
def test_a_test_split_that_cannot_be_predicted_is_a_clear_error(light_copy, change, error):
    change(light_copy)
    with pytest.raises(DataError, match=error):
        inference_frame(light_copy, "test")


def test_a_listed_test_study_without_images_still_gets_its_25_rows(light_copy, tiny_data, caplog):
    listed = listed_study_ids(light_copy, "test")
    images = light_copy / images_dir("test")
    images.unlink()
    shutil.copytree(tiny_data / images_dir("test"), images)
    shutil.rmtree(images / str(listed[1]))
    frame = inference_frame(light_copy, "test")
    assert listed[1] not in set(frame["study_id"])
    prior = np.array([[0.7, 0.2, 0.1]] * 5)
    made = submission_from_probabilities({s: np.tile([0.5, 0.3, 0.2], (5, 5, 1)) for s in sorted(frame["study_id"])})
    with caplog.at_level(logging.WARNING, logger="spine_model.inference.predictor"):
        complete = with_every_study(made, listed, prior)
    assert len(complete) == 25 * len(listed)
    studies = complete["row_id"].str.split("_", n=1).str[0].astype(int)
    assert studies.drop_duplicates().tolist() == listed  # in the listed order
    filled = complete[studies == listed[1]]
    np.testing.assert_allclose(filled[["normal_mild", "moderate", "severe"]].to_numpy(), np.tile(prior[0], (25, 1)))
    assert any("no images to predict from" in message for message in caplog.messages)
