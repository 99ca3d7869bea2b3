import hashlib

import numpy as np
import pandas as pd
import pydicom
import pytest

from spine_model.core.constants import (
    AXIAL_T2,
    LABEL_COLUMNS,
    SAGITTAL_T1,
    SAGITTAL_T2,
    SERIES_DESCRIPTIONS,
    SEVERITY_COLUMNS,
)
from spine_model.data.synth import LABEL_SHARES, _sample_labels, generate_dataset

LAYOUT = [
    "train.csv",
    "train_label_coordinates.csv",
    "train_series_descriptions.csv",
    "test_series_descriptions.csv",
    "sample_submission.csv",
    "test_solution.csv",
]


def test_writes_every_file_of_the_layout(tiny_data):
    for name in LAYOUT:
        assert (tiny_data / name).is_file(), name
    train = pd.read_csv(tiny_data / "train.csv")
    assert list(train.columns) == ["study_id", *LABEL_COLUMNS]
    coords = pd.read_csv(tiny_data / "train_label_coordinates.csv")
    assert list(coords.columns) == ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
    series = pd.read_csv(tiny_data / "train_series_descriptions.csv")
    assert set(series["series_description"]) == set(SERIES_DESCRIPTIONS)
    per_study = series.groupby(["study_id", "series_description"]).size().unstack()
    assert (per_study[SAGITTAL_T1] == 1).all() and (per_study[SAGITTAL_T2] == 1).all()
    assert per_study[AXIAL_T2].isin([1, 2]).all()
    for row in coords.itertuples():
        assert (
            tiny_data / "train_images" / str(row.study_id) / str(row.series_id) / f"{row.instance_number}.dcm"
        ).is_file()
    test_series = pd.read_csv(tiny_data / "test_series_descriptions.csv")
    sample = pd.read_csv(tiny_data / "sample_submission.csv")
    assert list(sample.columns) == ["row_id", *SEVERITY_COLUMNS]
    assert len(sample) == 25 * test_series["study_id"].nunique()
    assert (tiny_data / "test_images").is_dir()


def test_dicom_files_carry_the_real_attributes(tiny_data):
    path = next((tiny_data / "train_images").rglob("*.dcm"))
    ds = pydicom.dcmread(path)
    assert ds.Modality == "MR"
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.BitsAllocated == 16 and ds.pixel_array.dtype == np.uint16
    assert len(ds.ImagePositionPatient) == 3 and len(ds.ImageOrientationPatient) == 6
    assert len(ds.PixelSpacing) == 2
    assert int(ds.InstanceNumber) == int(path.stem)
    assert ds.SeriesDescription in SERIES_DESCRIPTIONS
    assert int(ds.SeriesInstanceUID) == int(path.parent.name)


def test_solution_matches_hidden_test_labels(tiny_data):
    solution = pd.read_csv(tiny_data / "test_solution.csv")
    assert list(solution.columns) == ["row_id", *SEVERITY_COLUMNS, "sample_weight"]
    one_hot = solution[list(SEVERITY_COLUMNS)].to_numpy()
    assert (one_hot.sum(axis=1) == 1).all()
    np.testing.assert_array_equal(solution["sample_weight"], np.array([1, 2, 4])[one_hot.argmax(axis=1)])
    sample_ids = set(pd.read_csv(tiny_data / "sample_submission.csv")["row_id"])
    assert set(solution["row_id"]) <= sample_ids


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_deterministic_per_seed(tmp_path):
    settings = {"n_studies": 3, "n_test_studies": 1, "image_size": 32, "n_slices": 5}
    generate_dataset(tmp_path / "a", seed=3, **settings)
    generate_dataset(tmp_path / "b", seed=3, **settings)
    generate_dataset(tmp_path / "c", seed=4, **settings)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_label_shares_match_the_real_data():
    rng = np.random.default_rng(0)
    cells = np.concatenate([_sample_labels(rng) for _ in range(4000)])
    missing = (cells == -1).mean()
    labelled = cells[cells >= 0]
    shares = np.bincount(labelled, minlength=3) / len(labelled)
    np.testing.assert_allclose(shares, LABEL_SHARES, atol=0.01)
    assert 0.008 < missing < 0.016


def test_image_feature_depends_on_severity(tmp_path):
    """Brightness at a foraminal/subarticular point grows with its severity label."""
    generate_dataset(tmp_path, n_studies=30, n_test_studies=0, image_size=48, n_slices=5, seed=1)
    coords = pd.read_csv(tmp_path / "train_label_coordinates.csv")
    series = pd.read_csv(tmp_path / "train_series_descriptions.csv")
    labels = pd.read_csv(tmp_path / "train.csv").set_index("study_id")
    coords = coords.merge(series, on=["study_id", "series_id"])
    coords = coords[coords["series_description"].isin([SAGITTAL_T1, AXIAL_T2])]
    by_severity: dict[str, list[float]] = {"Normal/Mild": [], "Moderate": [], "Severe": []}
    for row in coords.itertuples():
        ds = pydicom.dcmread(
            tmp_path / "train_images" / str(row.study_id) / str(row.series_id) / f"{row.instance_number}.dcm"
        )
        pixels = ds.pixel_array.astype(float)
        x, y = int(round(row.x)), int(round(row.y))
        contrast = pixels[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].mean() / np.median(pixels)
        column = f"{row.condition.lower().replace(' ', '_')}_{row.level.lower().replace('/', '_')}"
        by_severity[labels.loc[row.study_id, column]].append(contrast)
    means = [np.mean(v) for v in by_severity.values()]
    assert means[0] < means[1] < means[2], means


def test_rejects_nonsense_settings(tmp_path):
    with pytest.raises(ValueError, match="n_slices"):
        generate_dataset(tmp_path, n_studies=2, n_slices=3)
    with pytest.raises(ValueError, match="image_size"):
        generate_dataset(tmp_path, n_studies=2, image_size=8)
    with pytest.raises(ValueError, match="axial_slices"):
        generate_dataset(tmp_path, n_studies=2, axial_slices=(2, 30))


def test_sizes_drawn_per_series_from_ranges(tmp_path):
    """The real data's shape: widths 384-640 px, 15-20 sagittal and 20-40 axial slices per series."""
    generate_dataset(tmp_path, 1, 0, image_size=(384, 640), n_slices=(15, 20), seed=3, axial_slices=(20, 40))
    descriptions = pd.read_csv(tmp_path / "train_series_descriptions.csv")
    widths = set()
    for row in descriptions.itertuples(index=False):
        files = list((tmp_path / "train_images" / str(row.study_id) / str(row.series_id)).glob("*.dcm"))
        low, high = (20, 40) if row.series_description == "Axial T2" else (15, 20)
        assert low <= len(files) <= high
        ds = pydicom.dcmread(files[0])
        assert 384 <= ds.Columns <= 640 and ds.BitsAllocated == 16
        widths.add(ds.Columns)
    assert len(widths) > 1  # drawn per series


def _world(ds: pydicom.Dataset, x: float, y: float) -> np.ndarray:
    """Patient coordinates of pixel (x, y) of a DICOM slice."""
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
    spacing_row, spacing_col = (float(v) for v in ds.PixelSpacing)
    return (
        np.asarray(ds.ImagePositionPatient, float)
        + x * spacing_col * orientation[:3]
        + y * spacing_row * orientation[3:]
    )


def test_series_agree_in_patient_coordinates_and_split_axial_stacks_carry_each_level_once(tmp_path):
    """A level's axial points lie at the height of its sagittal canal point; every level is labelled once."""
    generate_dataset(tmp_path, n_studies=25, n_test_studies=0, image_size=64, n_slices=8, seed=5)
    coords = pd.read_csv(tmp_path / "train_label_coordinates.csv").merge(
        pd.read_csv(tmp_path / "train_series_descriptions.csv")
    )
    assert not coords.duplicated(["study_id", "condition", "level"]).any()
    two_axial = coords[coords["series_description"] == AXIAL_T2].groupby("study_id")["series_id"].nunique()
    assert (two_axial == 2).any(), "expected a study whose axial levels come as two series"

    def world(row) -> np.ndarray:
        path = tmp_path / "train_images" / str(row.study_id) / str(row.series_id) / f"{row.instance_number}.dcm"
        return _world(pydicom.dcmread(path), row.x, row.y)

    heights = []
    for row in coords[coords["condition"] == "Left Subarticular Stenosis"].itertuples():
        canal = coords[
            (coords["study_id"] == row.study_id) & (coords["condition"] == "Spinal Canal Stenosis")
            & (coords["level"] == row.level)
        ]  # fmt: skip
        if len(canal):
            heights.append(world(row)[2] - world(next(canal.itertuples()))[2])
    # The nearest axial slice to the disc (at most half a slice gap, about 11 mm here) plus the
    # annotation jitter of the sagittal point (2.4 mm per pixel).
    assert len(heights) > 20
    assert np.median(np.abs(heights)) < 8 and np.abs(heights).max() < 20
