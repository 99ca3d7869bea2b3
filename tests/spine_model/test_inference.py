import logging

import numpy as np
import pandas as pd
import pydicom
import pytest

from spine_model.core.config import TrainConfig
from spine_model.core.constants import CONDITIONS, LEVELS, SAGITTAL_T2, SEVERITY_COLUMNS
from spine_model.data.volumes import MemoryVolumeStore, VolumeStore, build_volume_store
from spine_model.families import get_family
from spine_model.inference.frames import inference_frame, list_series_files
from spine_model.inference.predictor import Predictor
from spine_model.inference.prior import CoordinatePrior
from spine_model.pipeline.data import series_to_store
from tests.conftest import FAMILIES

CLASS_PRIOR = np.tile([0.7, 0.2, 0.1], (5, 1))


def test_instance_numbers_come_from_file_names(tiny_data):
    files = list_series_files(tiny_data, "test")
    series = pd.read_csv(tiny_data / "test_series_descriptions.csv")
    listed = set(zip(series.study_id, series.series_id, strict=True))
    assert set(zip(files.study_id, files.series_id, strict=True)) == listed
    for row in files.sample(5, random_state=0).itertuples():
        assert int(pydicom.dcmread(row.image_path).InstanceNumber) == row.instance_number


def test_non_numeric_file_names_are_skipped_and_logged(tiny_copy, caplog):
    files = list_series_files(tiny_copy, "test")
    stray = tiny_copy / "test_images" / str(files.study_id[0]) / str(files.series_id[0]) / "localizer.dcm"
    stray.write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        again = list_series_files(tiny_copy, "test")
    assert len(again) == len(files)
    assert any("not an instance number" in m for m in caplog.messages)


@pytest.fixture(scope="module")
def prior(tiny_store):
    points, _, _, _ = tiny_store
    return CoordinatePrior.fit(points)


@pytest.fixture(scope="module")
def test_store(tiny_data, module_tmp):
    root = module_tmp.mktemp("test_store")
    build_volume_store(tiny_data, "test", series_to_store(tiny_data, "test"), root, 32, workers=1, progress=False)
    return VolumeStore(root)


def test_coordinate_prior_is_per_condition_level_and_series(prior):
    table = prior.table.set_index(["condition", "level"])
    assert len(prior.table) == 25
    spinal = table.loc[("spinal_canal_stenosis", "l3_l4")]
    assert spinal.series_description == SAGITTAL_T2
    assert 0.3 < spinal.slice < 0.7 and 0.4 < spinal.x < 0.6  # the synthetic spinal points: middle slice, centre
    left, right = (table.loc[(f"{side}_neural_foraminal_narrowing", "l1_l2")] for side in ("left", "right"))
    # Left foramina lie on high-x slices; the sagittal slice normal (row x column) points to -x,
    # so in ImagePositionPatient order they come first, whatever the instance numbers say.
    assert left.slice < 0.5 < right.slice
    assert CoordinatePrior.from_dict(prior.to_dict()).table.equals(prior.table)


def test_prior_points_cover_every_cell_inside_the_frames(prior, test_store):
    points = prior.points(test_store.index)
    studies = test_store.index["study_id"].nunique()
    assert len(points) == 25 * studies and (points["source"] == "prior").all()
    assert not points.duplicated(["study_id", "condition", "level"]).any()
    framed = points.merge(test_store.index, on=["study_id", "series_id", "instance_number"], suffixes=("", "_slice"))
    assert len(framed) == len(points)
    assert (
        (framed["x"] > 0) & (framed["x"] < framed["columns"]) & (framed["y"] > 0) & (framed["y"] < framed["rows"])
    ).all()
    spinal = framed[framed["condition"] == CONDITIONS[0]]
    assert (spinal["series_description_slice"] == SAGITTAL_T2).all()
    # Without a Sagittal T2 series, spinal cells cannot be placed; the others still are.
    no_t2 = test_store.index[test_store.index["series_description"] != SAGITTAL_T2]
    assert set(prior.points(no_t2)["condition"]) == set(CONDITIONS[1:])


def _predictor(prior, family_name: str) -> Predictor:
    config = TrainConfig(
        model_family=family_name, pretrained=False, store_size=32, image_size=32, crop_size=16, batch_size=8
    )  # fmt: skip
    model = get_family(family_name).create_model(config).eval()
    return Predictor(model, config, prior, CLASS_PRIOR, device="cpu")


@pytest.mark.parametrize("family_name", FAMILIES)
def test_test_split_gets_25_normalised_rows_per_study_from_prior_points(tiny_data, prior, test_store, family_name):
    frame = inference_frame(tiny_data, "test")
    assert frame["x"].isna().all()
    predictor = _predictor(prior, family_name)
    submission = predictor.predict(frame)
    assert list(submission.columns) == ["row_id", *SEVERITY_COLUMNS]
    expected = [f"{s}_{c}_{lv}" for s in sorted(frame["study_id"].unique()) for c in CONDITIONS for lv in LEVELS]
    assert submission["row_id"].tolist() == expected
    np.testing.assert_allclose(submission[list(SEVERITY_COLUMNS)].sum(axis=1), 1.0)
    # The same pixels through a prebuilt store: the same predictions.
    from_store = predictor.predict(frame, test_store)
    np.testing.assert_allclose(from_store[list(SEVERITY_COLUMNS)], submission[list(SEVERITY_COLUMNS)], atol=1e-6)


def test_given_coordinates_are_used_as_they_are(tiny_data, prior):
    frame = inference_frame(tiny_data, "train", use_coordinates=True)
    coordinates = pd.read_csv(tiny_data / "train_label_coordinates.csv")
    store = MemoryVolumeStore.from_files(frame, 32)
    points = _predictor(prior, "crops").points(frame, store)
    assert (points["source"] == "given").all()  # every train study has points: no prior ones

    def keys(frame):
        columns = ("study_id", "series_id", "instance_number", "x", "y")
        return set(zip(*(frame[k].round(3) if k in "xy" else frame[k] for k in columns), strict=True))

    assert keys(points) == keys(coordinates)


def test_crops_need_the_condition_and_level_of_given_points(tiny_data, prior):
    frame = inference_frame(tiny_data, "train", use_coordinates=True)
    study = frame[frame["study_id"] == frame["study_id"].iloc[0]]
    with pytest.raises(ValueError, match="condition/level"):
        _predictor(prior, "crops").predict(study.assign(condition=None))
    assert len(_predictor(prior, "seed").predict(study.assign(condition=None))) == 25  # seed needs only x, y


def test_unreadable_study_still_gets_prior_rows_and_a_warning(tiny_copy, prior, caplog):
    frame = inference_frame(tiny_copy, "test")
    broken_study = frame["study_id"].iloc[0]
    for path in frame.loc[frame["study_id"] == broken_study, "image_path"]:
        with open(path, "r+b") as handle:
            handle.truncate(300)
    with caplog.at_level(logging.WARNING):
        submission = _predictor(prior, "crops").predict(frame)
    assert len(submission) == 25 * frame["study_id"].nunique()
    rows = submission[submission["row_id"].str.startswith(f"{broken_study}_")]
    np.testing.assert_allclose(rows[list(SEVERITY_COLUMNS)].to_numpy(), np.tile([0.7, 0.2, 0.1], (25, 1)))
    assert any(str(broken_study) in m and "class prior" in m for m in caplog.messages)
    assert any("unreadable image" in m for m in caplog.messages)


def test_bad_frames_and_stores_are_clear_errors(prior, test_store, tiny_data):
    with pytest.raises(ValueError, match="lacks column"):
        _predictor(prior, "seed").predict(pd.DataFrame({"study_id": [1]}))
    other_size = _predictor(prior, "seed")
    other_size.config = other_size.config.model_copy(update={"store_size": 64})
    with pytest.raises(ValueError, match="64 px"):
        other_size.predict(inference_frame(tiny_data, "test"), test_store)
