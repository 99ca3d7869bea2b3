import logging

import numpy as np
import pandas as pd
import pydicom
import pytest

from spine_model.constants import CONDITIONS, LEVELS, SAGITTAL_T2, SEVERITY_COLUMNS
from spine_model.inference import CoordinatePrior, Predictor, index_slices, inference_frame, list_series_files
from spine_model.ingest import build_long_table
from spine_model.model import create_model


def test_instance_numbers_come_from_file_names_and_slices_from_positions(tiny_data):
    files = list_series_files(tiny_data, "test")
    series = pd.read_csv(tiny_data / "test_series_descriptions.csv")
    listed = set(zip(series.study_id, series.series_id, strict=True))
    assert set(zip(files.study_id, files.series_id, strict=True)) == listed
    for row in files.sample(5, random_state=0).itertuples():
        assert int(pydicom.dcmread(row.image_path).InstanceNumber) == row.instance_number
    indexed = index_slices(files)
    for _, one in indexed.groupby("series_id"):
        assert one["slice_index"].tolist() == list(range(len(one)))
        assert one["position"].is_monotonic_increasing
    # The synthetic data numbers some series against the slice order: order must not follow instance numbers.
    reversed_series = [
        s for s, one in indexed.groupby("series_id") if not one["instance_number"].is_monotonic_increasing
    ]
    assert reversed_series, "expected at least one series numbered against its slice order"


def test_non_numeric_file_names_are_skipped_and_logged(tiny_copy, caplog):
    files = list_series_files(tiny_copy, "test")
    stray = tiny_copy / "test_images" / str(files.study_id[0]) / str(files.series_id[0]) / "localizer.dcm"
    stray.write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        again = list_series_files(tiny_copy, "test")
    assert len(again) == len(files)
    assert any("not an instance number" in m for m in caplog.messages)


@pytest.fixture(scope="module")
def prior(tiny_data):
    table = build_long_table(tiny_data).table
    files = list_series_files(tiny_data, "train", table)
    return CoordinatePrior.fit(table, index_slices(files))


def test_coordinate_prior_is_per_condition_level_and_series(prior):
    assert len(prior.table) == 25
    description, relative_slice, x, y = prior.point("spinal_canal_stenosis", "l3_l4", {SAGITTAL_T2, "Axial T2"})
    assert description == SAGITTAL_T2
    assert 0.3 < relative_slice < 0.7 and 0.4 < x < 0.6  # the synthetic spinal points: middle slice, centre
    left = prior.point("left_neural_foraminal_narrowing", "l1_l2", {"Sagittal T1"})
    right = prior.point("right_neural_foraminal_narrowing", "l1_l2", {"Sagittal T1"})
    # Left foramina lie on high-x slices; the sagittal slice normal (row x column) points to -x,
    # so in ImagePositionPatient order they come first, whatever the instance numbers say.
    assert left[1] < 0.5 < right[1]
    assert prior.point("spinal_canal_stenosis", "l1_l2", {"Axial T2"}) is None
    assert CoordinatePrior.from_dict(prior.to_dict()).table.equals(prior.table)


def _predictor(prior, image_size=32):
    model = create_model("resnet18", pretrained=False, image_size=image_size).eval()
    return Predictor(model, image_size, prior, np.tile([0.7, 0.2, 0.1], (5, 1)), batch_size=8, device="cpu")


def test_test_split_gets_25_normalised_rows_per_study_from_prior_points(tiny_data, prior):
    frame = inference_frame(tiny_data, "test")
    assert frame["x"].isna().all()
    predictor = _predictor(prior)
    rows = predictor.model_rows(frame)
    assert rows["from_prior"].all()
    assert len(rows) == 25 * frame["study_id"].nunique()  # one point per condition x level
    assert (rows["x"] > 0).all() and (rows["y"] > 0).all()
    submission = predictor.predict(frame)
    assert list(submission.columns) == ["row_id", *SEVERITY_COLUMNS]
    assert len(submission) == 25 * frame["study_id"].nunique()
    np.testing.assert_allclose(submission[list(SEVERITY_COLUMNS)].sum(axis=1), 1.0)
    expected = [f"{s}_{c}_{lv}" for s in sorted(frame["study_id"].unique()) for c in CONDITIONS for lv in LEVELS]
    assert submission["row_id"].tolist() == expected


def test_given_coordinates_are_used_as_they_are(tiny_data, prior):
    frame = inference_frame(tiny_data, "train", use_coordinates=True)
    coordinates = pd.read_csv(tiny_data / "train_label_coordinates.csv")
    rows = _predictor(prior).model_rows(frame)
    given = rows[~rows["from_prior"]]
    assert len(given) == len(coordinates)

    def points(frame):
        keys = ("study_id", "series_id", "instance_number", "x", "y")
        return set(zip(*(frame[k].round(3) if k in "xy" else frame[k] for k in keys), strict=True))

    assert points(given) == points(coordinates)


def test_unreadable_study_still_gets_prior_rows_and_a_warning(tiny_copy, prior, caplog):
    frame = inference_frame(tiny_copy, "test")
    broken_study = frame["study_id"].iloc[0]
    for path in frame.loc[frame["study_id"] == broken_study, "image_path"]:
        with open(path, "r+b") as handle:
            handle.truncate(300)
    with caplog.at_level(logging.WARNING):
        submission = _predictor(prior).predict(frame)
    assert len(submission) == 25 * frame["study_id"].nunique()
    rows = submission[submission["row_id"].str.startswith(f"{broken_study}_")]
    np.testing.assert_allclose(rows[list(SEVERITY_COLUMNS)].to_numpy(), np.tile([0.7, 0.2, 0.1], (25, 1)))
    assert any(str(broken_study) in m and "class prior" in m for m in caplog.messages)


def test_frame_without_required_columns_is_a_clear_error(prior):
    with pytest.raises(ValueError, match="lacks column"):
        _predictor(prior).predict(pd.DataFrame({"study_id": [1]}))
