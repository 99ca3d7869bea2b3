import logging

import numpy as np
import pandas as pd
import pytest

from spine_model.core.constants import CONDITION_FROM_TITLE, LABEL_COLUMNS, LEVEL_FROM_TITLE
from spine_model.data.ingest import (
    LONG_TABLE_COLUMNS,
    SKIP_NO_DESCRIPTION,
    SKIP_NO_IMAGE,
    SKIP_NO_STUDY,
    SKIP_SECOND_POINT,
    DataError,
    build_long_table,
    write_table,
)


def test_long_table_has_one_row_per_coordinate_row(tiny_data, tmp_path):
    result = build_long_table(tiny_data)
    coords = pd.read_csv(tiny_data / "train_label_coordinates.csv")
    assert len(result.table) == len(coords)
    assert tuple(result.table.columns) == LONG_TABLE_COLUMNS
    assert not result.skipped
    train = pd.read_csv(tiny_data / "train.csv", keep_default_na=False).set_index("study_id")
    severity = {"Normal/Mild": 0, "Moderate": 1, "Severe": 2, "": -1}
    for row in result.table.sample(20, random_state=0).itertuples():
        own = f"{row.condition}_{row.level}"
        assert row.label == severity[train.loc[row.study_id, own]]
        # every row carries its study's 25 labels
        for column in LABEL_COLUMNS:
            assert getattr(row, column) == severity[train.loc[row.study_id, column]]
    path = write_table(result.table, tmp_path / "out" / "long.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(path), result.table)


def test_missing_labels_are_kept_as_minus_one(tiny_copy):
    train = pd.read_csv(tiny_copy / "train.csv", keep_default_na=False)
    train.loc[0, "spinal_canal_stenosis_l3_l4"] = ""
    train.to_csv(tiny_copy / "train.csv", index=False)
    result = build_long_table(tiny_copy)
    study = train.loc[0, "study_id"]
    rows = result.table[result.table["study_id"] == study]
    assert (rows["spinal_canal_stenosis_l3_l4"] == -1).all()
    own = rows[(rows["condition"] == "spinal_canal_stenosis") & (rows["level"] == "l3_l4")]
    assert (own["label"] == -1).all() and len(own) == 1


def _edit(path, fn):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(frame)
    frame.to_csv(path, index=False)


@pytest.mark.parametrize(
    "file, edit, expected",
    [
        (
            "train.csv",
            lambda f: f.loc.__setitem__((4, "spinal_canal_stenosis_l1_l2"), "Mildish"),
            r"train.csv, row 6, column spinal_canal_stenosis_l1_l2: 'Mildish'",
        ),
        (
            "train.csv",
            lambda f: f.loc.__setitem__((2, "study_id"), "12a"),
            r"train.csv, row 4, column study_id: '12a' is not a non-negative integer",
        ),
        (
            "train_label_coordinates.csv",
            lambda f: f.loc.__setitem__((0, "condition"), "Spinal Stenosis"),
            r"row 2, column condition: 'Spinal Stenosis'",
        ),
        (
            "train_label_coordinates.csv",
            lambda f: f.loc.__setitem__((3, "level"), "L6/S1"),
            r"row 5, column level: 'L6/S1'",
        ),
        (
            "train_label_coordinates.csv",
            lambda f: f.loc.__setitem__((1, "instance_number"), "3.5"),
            r"row 3, column instance_number: '3.5'",
        ),
        (
            "train_label_coordinates.csv",
            lambda f: f.loc.__setitem__((1, "x"), "abc"),
            r"row 3, column x: 'abc' is not a finite number",
        ),
        (
            "train_series_descriptions.csv",
            lambda f: f.loc.__setitem__((0, "series_description"), "Coronal T1"),
            r"row 2, column series_description: 'Coronal T1'",
        ),
        ("train_label_coordinates.csv", lambda f: f.pop("level"), r"missing column\(s\) \['level'\]"),
    ],
)
def test_bad_input_names_file_row_and_value(tiny_copy, file, edit, expected):
    _edit(tiny_copy / file, edit)
    with pytest.raises(DataError, match=expected):
        build_long_table(tiny_copy)


def test_missing_file_says_what_is_expected(tiny_copy):
    (tiny_copy / "train_series_descriptions.csv").unlink()
    with pytest.raises(DataError, match="lacks train_series_descriptions.csv: expected the Kaggle layout"):
        build_long_table(tiny_copy)


def test_row_level_problems_are_counted_and_logged_skips(tiny_copy, caplog):
    coords = pd.read_csv(tiny_copy / "train_label_coordinates.csv")
    n_total = len(coords)
    # 1) a coordinate row for a study that train.csv does not have
    extra = coords.iloc[[0]].assign(study_id=999)
    coords = pd.concat([coords, extra], ignore_index=True)
    coords.to_csv(tiny_copy / "train_label_coordinates.csv", index=False)
    # 2) a series without a description: drop one study's axial description
    series = pd.read_csv(tiny_copy / "train_series_descriptions.csv")
    dropped = series[series["series_description"] == "Axial T2"].iloc[0]
    series.drop(index=dropped.name).to_csv(tiny_copy / "train_series_descriptions.csv", index=False)
    n_no_description = int(
        ((coords["study_id"] == dropped.study_id) & (coords["series_id"] == dropped.series_id)).sum()
    )
    # 3) a missing image file
    kept = coords[coords["series_id"] != dropped.series_id].iloc[5]
    image = tiny_copy / "train_images" / str(kept.study_id) / str(kept.series_id) / f"{kept.instance_number}.dcm"
    image.unlink()
    n_no_image = int(
        ((coords["series_id"] == kept.series_id) & (coords["instance_number"] == kept.instance_number)).sum()
    )

    with caplog.at_level(logging.WARNING, logger="spine_model.data.ingest"):
        result = build_long_table(tiny_copy)
    assert result.skipped[SKIP_NO_STUDY] == 1
    assert result.skipped[SKIP_NO_DESCRIPTION] == n_no_description > 0
    assert result.skipped[SKIP_NO_IMAGE] == n_no_image > 0
    assert len(result.table) == n_total - n_no_description - n_no_image
    text = result.describe()
    assert f"skipped {1 + n_no_description + n_no_image}" in text and SKIP_NO_IMAGE in text
    assert sum(SKIP_NO_STUDY in m for m in caplog.messages) == 1
    assert not result.table["study_id"].eq(999).any()
    assert np.isin(result.table["series_description"], ["Sagittal T1", "Sagittal T2/STIR", "Axial T2"]).all()


@pytest.mark.parametrize("broken", ["no description", "no image"])
def test_a_bad_first_point_does_not_take_the_good_second_one_with_it(tiny_copy, broken):
    """Two points for one study, condition and level: the first on a series that cannot be used, the
    second fine. The second is kept, and the skip is counted under the first one's own reason."""
    coords = pd.read_csv(tiny_copy / "train_label_coordinates.csv")
    good = coords.iloc[0]
    if broken == "no description":  # a series of the study that the descriptions do not list
        bad = good.copy()
        bad["series_id"] = 999_999
        reason = SKIP_NO_DESCRIPTION
    else:  # the same series, an instance without a file
        bad = good.copy()
        bad["instance_number"] = 9_999
        reason = SKIP_NO_IMAGE
    coords = pd.concat([bad.to_frame().T, coords], ignore_index=True)  # the bad point first
    coords.to_csv(tiny_copy / "train_label_coordinates.csv", index=False)

    result = build_long_table(tiny_copy)
    table = result.table
    cell = table[(table["study_id"] == good.study_id) & (table["condition"] == CONDITION_FROM_TITLE[good.condition])
                 & (table["level"] == LEVEL_FROM_TITLE[good.level])]  # fmt: skip
    assert len(cell) == 1 and cell.iloc[0]["series_id"] == good.series_id
    assert cell.iloc[0]["instance_number"] == good.instance_number
    assert result.skipped[reason] == 1 and result.skipped[SKIP_SECOND_POINT] == 0
