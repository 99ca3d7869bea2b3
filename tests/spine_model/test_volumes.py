"""The volume store: slice order, frame sizes, resumable builds, unreadable files, memory maps."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pandas as pd
import pydicom
import pytest

from spine_model.core.catalog import StoreFiles
from spine_model.data.ingest import build_long_table
from spine_model.data.synth import write_dicom
from spine_model.data.volumes import (
    MemoryVolumeStore,
    VolumeStore,
    build_volume_store,
    locate_points,
    read_series,
)
from spine_model.pipeline.data import series_to_store

STUDY, SERIES = 11, 22
SAGITTAL = [0, 1, 0, 0, 0, -1]  # slice normal along -x: position = -x


def _series(root, frames, study=STUDY, series=SERIES, description="Sagittal T2/STIR"):
    """Write one series under root/train_images: frames = [(instance, x position, (rows, cols), dot (x, y))].

    Each frame is dark with one bright dot, and its own brightness level (instance * 100) elsewhere,
    so a stored slice tells which file it came from.
    """
    folder = root / "train_images" / str(study) / str(series)
    for instance, x_position, (rows, cols), (dot_x, dot_y) in frames:
        pixels = np.full((rows, cols), 100 * instance, dtype=np.uint16)
        pixels[dot_y - 1 : dot_y + 2, dot_x - 1 : dot_x + 2] = 60000
        write_dicom(
            folder / f"{instance}.dcm", pixels, study_id=study, series_id=series, instance_number=instance,
            description=description, position=[x_position, 0.0, 0.0], orientation=SAGITTAL, spacing=0.5,
        )  # fmt: skip
    return pd.DataFrame({"study_id": [study], "series_id": [series], "series_description": [description]})


def test_slices_follow_image_position_not_instance_numbers(tmp_path):
    # Instance numbers run backwards against the anatomy: instance 1 lies at x=+8 (position -8).
    frames = [(n, 8.0 - 4.0 * (n - 1), (40, 40), (20, 20)) for n in (1, 2, 3, 4, 5)]
    series = _series(tmp_path, frames)
    report = build_volume_store(tmp_path, "train", series, tmp_path / "store", size=32, workers=1, progress=False)
    store = VolumeStore(report.root)
    slices = store.index
    assert slices["instance_number"].tolist() == [1, 2, 3, 4, 5]  # ascending position = ascending instance here
    assert slices["position"].is_monotonic_increasing and slices["slice_index"].tolist() == [0, 1, 2, 3, 4]
    # ... now number them the other way round: the stored order must not change with the numbers.
    renumbered = [(6 - n, x, shape, dot) for n, x, shape, dot in frames]
    other = tmp_path / "renumbered"
    series = _series(other, renumbered)
    store = VolumeStore(build_volume_store(other, "train", series, other / "store", 32, 1, False).root)
    assert store.index["instance_number"].tolist() == [5, 4, 3, 2, 1]
    assert store.index["position"].is_monotonic_increasing
    levels = [int(np.median(slice_)) for slice_ in store.volume(STUDY, SERIES)]
    assert levels == sorted(levels, reverse=True)  # brightness grows with the instance number


def test_mixed_frame_sizes_map_each_point_with_its_own_frame(tmp_path):
    frames = [
        (1, 0.0, (40, 40), (10, 30)),  # dot at x=10, y=30 of a 40 x 40 frame
        (2, 4.0, (80, 60), (45, 20)),  # dot at x=45, y=20 of an 80-row, 60-column frame
        (3, 8.0, (40, 40), (20, 20)),
    ]
    series = _series(tmp_path, frames)
    store = VolumeStore(build_volume_store(tmp_path, "train", series, tmp_path / "store", 64, 1, False).root)
    assert store.volume(STUDY, SERIES).shape == (3, 64, 64)
    points = pd.DataFrame(
        {"study_id": STUDY, "series_id": SERIES, "instance_number": [1, 2], "x": [10.0, 45.0], "y": [30.0, 20.0]}
    )
    located, unplaced = locate_points(points, store.index, store.size)
    assert unplaced.empty
    assert located[["rows", "columns"]].values.tolist() == [[40, 40], [80, 60]]
    np.testing.assert_allclose(located["x_store"], [10 * 64 / 40, 45 * 64 / 60])
    np.testing.assert_allclose(located["y_store"], [30 * 64 / 40, 20 * 64 / 80])
    for point in located.itertuples():
        stored = store.volume(STUDY, SERIES)[point.slice_index].astype(float)
        y, x = np.unravel_index(stored.argmax(), stored.shape)
        assert abs(x - point.x_store) <= 2 and abs(y - point.y_store) <= 2  # the dot is where the point says


def test_store_of_real_layout_is_windowed_uint8_and_memory_mapped(tiny_data, tmp_path):
    table = build_long_table(tiny_data).table
    series = series_to_store(tiny_data, "train", table)
    report = build_volume_store(tiny_data, "train", series, tmp_path / "store", 32, workers=2, progress=False)
    assert report.written == len(series) and not report.skipped_series and not report.unreadable_files
    store = VolumeStore(report.root, max_open=2)
    assert store.series()[["study_id", "series_id"]].shape[0] == len(series)
    first = store.series().iloc[0]
    volume = store.volume(first.study_id, first.series_id)
    assert isinstance(volume, np.memmap) and volume.dtype == np.uint8 and volume.shape[1:] == (32, 32)
    assert volume.shape[0] == first.n_slices and int(volume.max()) - int(volume.min()) > 120  # windowed
    one = store.index.iloc[0]
    header = pydicom.dcmread(
        tiny_data / "train_images" / str(one.study_id) / str(one.series_id) / f"{one.instance_number}.dcm"
    )
    assert (one.rows, one.columns) == (header.Rows, header.Columns)
    for row in store.series().head(4).itertuples():
        store.volume(row.study_id, row.series_id)
    assert len(store._open) == 2  # least recently used maps are closed
    # The in-memory store decodes the same files to the same pixels.
    files = store.index[(store.index.study_id == first.study_id) & (store.index.series_id == first.series_id)]
    files = files.assign(
        image_path=[
            str(tiny_data / "train_images" / str(r.study_id) / str(r.series_id) / f"{r.instance_number}.dcm")
            for r in files.itertuples()
        ]
    )
    memory = MemoryVolumeStore.from_files(files.sample(frac=1, random_state=0), 32)
    np.testing.assert_array_equal(memory.volume(first.study_id, first.series_id), volume)
    pd.testing.assert_frame_equal(
        memory.index.reset_index(drop=True), files[memory.index.columns].reset_index(drop=True)
    )


def test_rebuild_redoes_only_changed_series_and_counts_unreadable_files(tiny_copy, tmp_path, caplog):
    table = build_long_table(tiny_copy).table
    series = series_to_store(tiny_copy, "train", table)
    root = tmp_path / "store"
    build_volume_store(tiny_copy, "train", series, root, 32, workers=1, progress=False)
    again = build_volume_store(tiny_copy, "train", series, root, 32, workers=1, progress=False)
    assert again.written == 0 and again.already_done == len(series)

    keys = series[["study_id", "series_id"]].to_numpy()
    changed, broken_one, broken_all = (tiny_copy / "train_images" / str(s) / str(r) for s, r in keys[:3])
    later = time.time() + 10
    one_file = sorted(changed.glob("*.dcm"))[0]
    os.utime(one_file, (later, later))
    truncated = sorted(broken_one.glob("*.dcm"))[1]
    truncated.write_bytes(truncated.read_bytes()[:200])
    for path in broken_all.glob("*.dcm"):
        path.write_bytes(b"not a DICOM file")
    with caplog.at_level(logging.WARNING):
        report = build_volume_store(tiny_copy, "train", series, root, 32, workers=1, progress=False)
    assert report.written == 2 and report.already_done == len(series) - 3
    skipped_key = f"{keys[2][0]}/{keys[2][1]}"
    assert list(report.skipped_series) == [skipped_key] and "none of its" in report.skipped_series[skipped_key]
    n_files = len(list(broken_all.glob("*.dcm")))
    assert len(report.unreadable_files) == n_files + 1
    assert "no pixel data: the file ends early (truncated" in report.unreadable_files[str(truncated)]
    assert "1 skipped" in report.describe() and f"{n_files + 1} unreadable" in report.describe()
    assert any(skipped_key in message for message in caplog.messages)

    store = VolumeStore(root)
    assert not ((store.index.study_id == keys[2][0]) & (store.index.series_id == keys[2][1])).any()
    truncated_rows = store.index[(store.index.series_id == keys[1][1])]
    assert int(truncated.stem) not in truncated_rows["instance_number"].tolist()
    assert store.volume(*keys[1]).shape[0] == len(truncated_rows)
    # Points on the unreadable images are returned apart, not silently kept or lost.
    located, unplaced = locate_points(table, store.index, store.size)
    assert len(located) + len(unplaced) == len(table)
    assert set(unplaced["series_id"]) <= {keys[1][1], keys[2][1]} and len(unplaced) > 0


def test_one_store_per_size(tiny_data, tmp_path):
    series = series_to_store(tiny_data, "test")
    build_volume_store(tiny_data, "test", series.head(1), tmp_path / "s", 32, workers=1, progress=False)
    with pytest.raises(ValueError, match="one store per size"):
        build_volume_store(tiny_data, "test", series.head(1), tmp_path / "s", 48, workers=1, progress=False)
    with pytest.raises(FileNotFoundError, match="spine preprocess"):
        VolumeStore(tmp_path / "nowhere")


def test_later_builds_add_series_to_the_index(tiny_data, tmp_path):
    series = series_to_store(tiny_data, "test")
    build_volume_store(tiny_data, "test", series.head(2), tmp_path / "s", 32, workers=1, progress=False)
    build_volume_store(tiny_data, "test", series.iloc[2:4], tmp_path / "s", 32, workers=1, progress=False)
    stored = VolumeStore(tmp_path / "s").series()
    assert stored["series_id"].tolist() == series["series_id"].head(4).tolist()
    assert StoreFiles(tmp_path / "s").index.is_file()


def test_read_series_reports_unreadable_files_instead_of_raising(tmp_path):
    _series(tmp_path, [(1, 0.0, (20, 20), (5, 5)), (2, 4.0, (20, 20), (5, 5))])
    folder = tmp_path / "train_images" / str(STUDY) / str(SERIES)
    (folder / "2.dcm").write_bytes(b"garbage")
    volume = read_series([(1, folder / "1.dcm"), (2, folder / "2.dcm")], 16)
    assert volume.pixels.shape == (1, 16, 16)
    assert volume.unreadable[0][0].endswith("2.dcm") and "not a readable DICOM" in volume.unreadable[0][1]


def test_series_window_from_a_pixel_sample_matches_the_full_window(tmp_path, monkeypatch):
    """A large series' window comes from strided pixels: the stored slices stay within a grey level or two."""
    from spine_model.data import volumes

    rng = np.random.default_rng(0)
    folder = tmp_path / "train_images" / str(STUDY) / str(SERIES)
    for instance in range(1, 11):  # 10 frames of 512 x 512: 2.6 million pixels, a stride of 2 by default
        # Skewed, as MR intensities are, and brighter from frame to frame: a sample must span them all.
        pixels = rng.gamma(2.0, 60.0 * instance, size=(512, 512)).astype(np.uint16)
        write_dicom(
            folder / f"{instance}.dcm", pixels, study_id=STUDY, series_id=SERIES, instance_number=instance,
            description="Sagittal T2/STIR", position=[float(instance), 0.0, 0.0], orientation=SAGITTAL, spacing=0.5,
        )  # fmt: skip
    files = [(n, folder / f"{n}.dcm") for n in range(1, 11)]
    assert 10 * 512 * 512 // volumes.WINDOW_SAMPLES >= 2
    sampled = read_series(files, 128).pixels
    monkeypatch.setattr(volumes, "WINDOW_SAMPLES", 10**9)  # every pixel
    full = read_series(files, 128).pixels
    assert np.abs(full.astype(int) - sampled.astype(int)).max() <= 2
