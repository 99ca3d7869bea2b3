import os
import time

import numpy as np
import pydicom

from spine_model.image_store import PngImageStore
from spine_model.ingest import build_long_table
from spine_model.preprocess import dicom_path, preprocess_instances


def _keys(data_dir):
    table = build_long_table(data_dir).table
    return sorted(set(table[["study_id", "series_id", "instance_number"]].itertuples(index=False, name=None)))


def test_writes_each_instance_once_with_its_original_size(tiny_data, tmp_path):
    keys = _keys(tiny_data)
    store_root = tmp_path / "png"
    report = preprocess_instances(keys, tiny_data, store_root, image_size=32, workers=2, progress=False)
    assert report.written == len(keys) and not report.failed
    store = PngImageStore(store_root)
    key = keys[0]
    image = store.get(*key)
    ds = pydicom.dcmread(dicom_path(tiny_data, "train", key))
    assert image.pixels.shape == (32, 32) and image.pixels.dtype == np.uint8
    assert (image.original_height, image.original_width) == (ds.Rows, ds.Columns)
    assert int(image.pixels.max()) - int(image.pixels.min()) > 120  # windowed, not a flat 16-bit cast

    again = preprocess_instances(keys, tiny_data, store_root, image_size=32, workers=1, progress=False)
    assert again.written == 0 and again.already_done == len(keys)


def test_rewritten_dicom_is_redone_and_unreadable_ones_are_counted(tiny_copy, tmp_path):
    keys = _keys(tiny_copy)
    store_root = tmp_path / "png"
    preprocess_instances(keys, tiny_copy, store_root, image_size=32, workers=1, progress=False)
    changed = dicom_path(tiny_copy, "train", keys[1])
    later = time.time() + 10  # newer than the PNGs just written
    os.utime(changed, (later, later))
    broken = dicom_path(tiny_copy, "train", keys[2])
    broken.write_bytes(broken.read_bytes()[:200])
    os.utime(broken, (later, later))
    report = preprocess_instances(keys, tiny_copy, store_root, image_size=32, workers=1, progress=False)
    assert report.written == 1
    assert list(report.failed) == [keys[2]] and "PixelData" in report.failed[keys[2]]
    assert report.already_done == len(keys) - 2
    assert "1 unreadable (skipped)" in report.describe()
