import numpy as np
import pandas as pd
import pytest
import torch

from spine_model.constants import LABEL_COLUMNS
from spine_model.dataset import SpineDataset, augment
from spine_model.image_store import PngImageStore


def _table(x, y, labels=None):
    labels = labels if labels is not None else [0] * 25
    return pd.DataFrame(
        [[1, 2, 3, x, y, *labels]], columns=["study_id", "series_id", "instance_number", "x", "y", *LABEL_COLUMNS]
    )


def test_coordinates_are_scaled_by_the_original_image_size(tmp_path):
    store = PngImageStore(tmp_path)
    # A 512 (high) x 384 (wide) DICOM frame stored at 64 x 64.
    store.put(1, 2, 3, np.zeros((64, 64), np.uint8), original_height=512, original_width=384)
    image, coords, targets = SpineDataset(_table(x=96.0, y=384.0), store, image_size=64)[0]
    assert image.shape == (1, 64, 64)
    np.testing.assert_allclose(coords.numpy(), [96 / 384, 384 / 512])
    assert targets.shape == (25,) and targets.dtype == torch.int64


def test_resizes_when_the_store_holds_another_size_and_keeps_missing_labels(tmp_path):
    store = PngImageStore(tmp_path)
    store.put(1, 2, 3, np.full((32, 32), 255, np.uint8), original_height=100, original_width=100)
    labels = [-1] + [2] * 24
    image, coords, targets = SpineDataset(_table(50.0, 150.0, labels), store, image_size=48)[0]
    assert image.shape == (1, 48, 48)
    assert coords[1] == 1.0  # clipped into the frame
    assert targets[0] == -1 and targets[1] == 2


def test_augment_moves_the_point_with_the_image():
    torch.manual_seed(0)
    image = torch.zeros(1, 50, 50)
    image[0, 20, 30] = 10.0  # a bright pixel at the point (x=30, y=20)
    coords = torch.tensor([30 / 50, 20 / 50])
    for _ in range(5):
        moved_image, moved = augment(image, coords)
        y, x = divmod(int(moved_image[0].argmax()), 50)
        assert moved.tolist() == pytest.approx([x / 50, y / 50], abs=1e-6)
