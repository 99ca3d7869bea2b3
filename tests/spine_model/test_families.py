"""The model families behind their seam: models, datasets, losses and study-level probabilities."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from spine_model.core.config import TrainConfig
from spine_model.core.constants import CONDITIONS, LABEL_COLUMNS, LEVELS
from spine_model.data.volumes import GEOMETRY_COLUMNS, MemoryVolumeStore, SeriesVolume
from spine_model.families import FAMILY_MODULES, get_family
from spine_model.families.backbones import (
    PretrainedWeightsUnavailable,
    adapt_input_conv,
    create_backbone,
    pretrained_weights_file,
)
from spine_model.families.base import masked_cross_entropy
from spine_model.families.crops.data import CropDataset, crop_sides, crop_stack, prepare_crops
from spine_model.families.crops.model import CropNet
from spine_model.families.seed.data import SeedDataset, shift
from spine_model.families.seed.model import SpineNet, create_spinenet, image_and_coordinate_conv


@pytest.fixture
def cached_resnet18(tmp_path, monkeypatch):
    """ImageNet-shaped resnet18 weights (random) in a private torch hub cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18(weights=None)
    cached = pretrained_weights_file("resnet18")
    assert cached.is_relative_to(tmp_path)
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    return reference


def _store(volume: np.ndarray, rows: int = 512, columns: int = 384) -> MemoryVolumeStore:
    """A one-series store (study 1, series 2) whose DICOM frames were rows x columns."""
    store = MemoryVolumeStore(volume.shape[-1])
    slices = pd.DataFrame(
        {"instance_number": np.arange(1, len(volume) + 1), "rows": rows, "columns": columns,
         "position": np.arange(len(volume), dtype=float), "spacing_row": 0.5, "spacing_col": 0.5,
         **dict(zip(GEOMETRY_COLUMNS, [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0], strict=True))}
    )  # fmt: skip
    store.add(1, 2, "Sagittal T2/STIR", SeriesVolume(volume, slices))
    return store


def _points(store: MemoryVolumeStore, **columns) -> pd.DataFrame:
    from spine_model.data.volumes import locate_points

    base = {"study_id": 1, "series_id": 2, "instance_number": 1, "condition": CONDITIONS[0], "level": LEVELS[0],
            "x": 96.0, "y": 384.0, "label": 0, **dict.fromkeys(LABEL_COLUMNS, 0)}  # fmt: skip
    located, _ = locate_points(pd.DataFrame([{**base, **columns}]), store.index, store.size)
    return located


# --- the registry --------------------------------------------------------------------------------


def test_registry_names_every_family_and_rejects_unknown_ones():
    assert set(FAMILY_MODULES) == {"seed", "crops", "localiser"}
    for name in FAMILY_MODULES:
        family = get_family(name)
        assert family.name == name and family.input_names
    with pytest.raises(ValueError, match="unknown model family"):
        get_family("nope")


def test_families_check_their_settings_when_a_config_is_built():
    with pytest.raises(ValueError, match="needs a ResNet"):
        TrainConfig(model_family="seed", backbone="efficientnet_b0")
    with pytest.raises(ValueError, match="must be odd"):
        TrainConfig(model_family="crops", crop_slices=4)
    with pytest.raises(ValueError, match="unknown backbone"):
        TrainConfig(model_family="crops", backbone="resnet9000")
    assert TrainConfig(model_family="crops", backbone="efficientnet_b0").backbone == "efficientnet_b0"


def test_masked_cross_entropy_counts_labelled_cells_only():
    logits = torch.zeros(1, 5, 5, 3)
    logits[0, 0, 0] = torch.tensor([0.0, 0.0, math.log(2.0)])  # p = (.25, .25, .5)
    targets = torch.full((1, 25), -1)
    targets[0, 0] = 2  # severe, weight 4, p = 0.5
    targets[0, 1] = 0  # normal, weight 1, p = 1/3
    weights = torch.tensor([1.0, 2.0, 4.0])
    loss_sum, weight_sum = masked_cross_entropy(logits, targets, weights)
    assert float(weight_sum) == 5.0
    assert float(loss_sum / weight_sum) == pytest.approx((4 * math.log(2) + math.log(3)) / 5, rel=1e-6)
    empty_sum, empty_weight = masked_cross_entropy(logits, torch.full((1, 25), -1), weights)
    assert float(empty_sum) == 0.0 and float(empty_weight) == 0.0
    # One target per point (crops): the same function.
    point_sum, point_weight = masked_cross_entropy(logits[0, 0], torch.tensor([2, -1, -1, -1, 0]), weights)
    assert float(point_sum / point_weight) == pytest.approx((4 * math.log(2) + math.log(3)) / 5, rel=1e-6)


# --- backbones -----------------------------------------------------------------------------------


def test_adapt_input_conv_follows_timm():
    rgb = torch.randn(8, 3, 7, 7)
    torch.testing.assert_close(adapt_input_conv(rgb, 1), rgb.sum(dim=1, keepdim=True))
    torch.testing.assert_close(adapt_input_conv(rgb, 3), rgb)
    five = adapt_input_conv(rgb, 5)
    assert five.shape == (8, 5, 7, 7)
    torch.testing.assert_close(five[:, :3], rgb * 3 / 5)
    torch.testing.assert_close(five[:, 3:], rgb[:, :2] * 3 / 5)
    # With whole repeats, a grey stack (equal channels) gets exactly the RGB filters' response to grey.
    torch.testing.assert_close(adapt_input_conv(rgb, 6).sum(dim=1), rgb.sum(dim=1))


def test_backbone_from_the_hub_cache_takes_k_channels(cached_resnet18):
    encoder, features = create_backbone("resnet18", 5, pretrained=True, allow_download=False)
    assert features == 512
    torch.testing.assert_close(encoder.conv1.weight, adapt_input_conv(cached_resnet18.conv1.weight, 5))
    torch.testing.assert_close(encoder.layer4[1].conv2.weight, cached_resnet18.layer4[1].conv2.weight)
    assert encoder(torch.randn(2, 5, 64, 64)).shape == (2, 512)


def test_other_torchvision_backbones_plug_in():
    encoder, features = create_backbone("mobilenet_v3_small", 3)
    assert encoder.eval()(torch.randn(1, 3, 64, 64)).shape == (1, features)
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("resnet9000", 3)


def test_missing_weights_offline_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsUnavailable) as error:
        create_spinenet("resnet18", pretrained=True, image_size=64, allow_download=False)
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path) in message
    assert "--no-pretrained" in message and "TORCH_HOME" in message


# --- seed ------------------------------------------------------------------------------------------


def test_spinenet_forward_shape_and_coordinate_channel():
    model = create_spinenet("resnet18", pretrained=False, image_size=64).eval()
    assert model(torch.randn(2, 1, 64, 64), torch.rand(2, 2)).shape == (2, 5, 5, 3)
    assert model.trunk[0].in_channels == 2 and model.coord_map.out_features == 64 * 64
    assert SpineNet("resnet50", image_size=64).eval()(torch.randn(1, 1, 64, 64), torch.rand(1, 2)).shape == (1, 5, 5, 3)


def test_spinenet_pretrained_trunk_keeps_imagenet_filters(cached_resnet18):
    rgb = torch.randn(64, 3, 7, 7)
    adapted = image_and_coordinate_conv(rgb)
    torch.testing.assert_close(adapted[:, 0], rgb.sum(dim=1))
    assert adapted[:, 1].abs().sum() == 0
    model = create_spinenet("resnet18", pretrained=True, image_size=64, allow_download=False)
    torch.testing.assert_close(model.trunk[0].weight[:, 0], cached_resnet18.conv1.weight.sum(dim=1))
    torch.testing.assert_close(model.trunk[7][1].conv2.weight, cached_resnet18.layer4[1].conv2.weight)
    torch.testing.assert_close(model.trunk[1].running_var, cached_resnet18.bn1.running_var)


def test_seed_dataset_scales_coordinates_by_the_frame_and_prepare_resizes_the_slice():
    # A 512 (high) x 384 (wide) DICOM frame stored at 32 x 32, model input 48 px.
    store = _store(np.full((3, 32, 32), 255, np.uint8))
    labels = {column: 2 for column in LABEL_COLUMNS} | {LABEL_COLUMNS[0]: -1}
    dataset = SeedDataset(_points(store, **labels), store)
    (slices, coords), targets = dataset[0]
    assert slices.shape == (32, 32) and slices.dtype == torch.uint8  # as stored: the loader only copies
    np.testing.assert_allclose(coords.numpy(), [96 / 384, 384 / 512])
    assert targets.shape == (25,) and targets.dtype == torch.int64 and targets[0] == -1 and targets[1] == 2
    on_the_edge = SeedDataset(_points(store, x=384.0), store)[0][0][1]
    assert on_the_edge[0] == 1.0
    assert _points(store, x=500.0).empty  # beyond the frame: set apart by locate_points, never clamped
    config = TrainConfig(model_family="seed", image_size=48, store_size=32)
    image, same_coords = get_family("seed").prepare([slices[None], coords[None]], config, train=False)
    assert image.shape == (1, 1, 48, 48) and image.dtype == torch.float32
    torch.testing.assert_close(image, torch.full_like(image, (1.0 - 0.449) / 0.226))
    torch.testing.assert_close(same_coords[0], coords)


def test_seed_shift_moves_each_point_with_its_image():
    torch.manual_seed(0)
    images = torch.zeros(6, 1, 50, 50)
    images[:, 0, 20, 30] = 10.0  # a bright pixel at the point (x=30, y=20) of every image
    coords = torch.tensor([[30 / 50, 20 / 50]]).repeat(6, 1)
    moved_images, moved = shift(images, coords)
    assert moved_images.shape == images.shape and len({tuple(c) for c in moved.tolist()}) > 1  # per image
    for image, point in zip(moved_images, moved, strict=True):
        y, x = divmod(int(image[0].argmax()), 50)
        assert point.tolist() == pytest.approx([x / 50, y / 50], abs=1e-6)
        assert float(image.sum()) == 10.0  # moved, not smeared; the uncovered border is black


# --- crops -----------------------------------------------------------------------------------------


def _numbered_volume(n_slices=4, size=20) -> np.ndarray:
    """Slice k holds the value 10 * (k + 1) everywhere, so a crop tells which slices it took."""
    return np.stack([np.full((size, size), 10 * (k + 1), np.uint8) for k in range(n_slices)])


def test_crops_repeat_edge_slices_and_pad_beyond_the_image():
    volume = _numbered_volume()
    first = crop_stack(volume, 0, 10.0, 10.0, side=6, slices=5)
    assert first.shape == (5, 6, 6)
    assert [int(s[3, 3]) for s in first] == [10, 10, 10, 20, 30]  # slices -2, -1 -> the first
    last = crop_stack(volume, 3, 10.0, 10.0, side=6, slices=3)
    assert [int(s[3, 3]) for s in last] == [30, 40, 40]
    corner = crop_stack(volume, 1, 0.0, 0.0, side=8, slices=1)[0]  # centred on the corner pixel
    assert (corner[:4] == 0).all() and (corner[:, :4] == 0).all() and (corner[4:, 4:] == 20).all()
    outside = crop_stack(volume, 1, -50.0, -50.0, side=8, slices=1)
    assert outside.shape == (1, 8, 8) and not outside.any()


def test_crop_side_is_a_share_of_the_image_or_millimetres():
    store = _store(_numbered_volume(size=64), rows=512, columns=384)
    points = _points(store)
    assert crop_sides(points, 64, 0.25, 0.0).tolist() == [[16, 16]]
    # 48 mm at 0.5 mm per pixel = 96 frame pixels: 96 of 384 columns = a quarter of the store's 64 px
    # across, 96 of 512 rows = 12 store pixels down (the store squashed the frame's rows)
    assert crop_sides(points, 64, 0.1, 48.0).tolist() == [[16, 12]]
    # no PixelSpacing: the share, on both axes
    assert crop_sides(points.assign(spacing_col=np.nan), 64, 0.1, 48.0).tolist() == [[6, 6]]
    # pixels twice as tall as wide (0.5 mm across, 1 mm down) on a square frame
    assert crop_sides(points.assign(rows=384, spacing_row=1.0), 64, 0.1, 48.0).tolist() == [[16, 8]]


def test_a_millimetre_crop_of_a_non_square_frame_covers_the_same_millimetres_on_both_axes():
    """A 512-row x 384-column frame of 0.5 mm pixels, squashed into a 64 px store: a bright 24 mm square
    centred on the point (48 x 48 frame pixels) must fill the middle half of a 48 mm crop on both axes."""
    volume = np.zeros((1, 64, 64), np.uint8)
    # 48 frame pixels = 8 store pixels across (384 / 64 = 6 per store pixel), 6 down (512 / 64 = 8)
    volume[0, 32 - 3 : 32 + 3, 32 - 4 : 32 + 4] = 200
    store = _store(volume, rows=512, columns=384)
    points = _points(store, x=192.0, y=256.0)  # the frame's centre = store pixel (32, 32)
    dataset = CropDataset(points, store, slices=1, sides=crop_sides(points, 64, 0.1, 48.0))
    (raw, sides, _), _ = dataset.__getitems__([0])
    assert raw.shape == (1, 1, 12, 16) and sides.tolist() == [[16, 12]]
    crop = prepare_crops(raw, sides, 16)[0, 0]
    bright = crop > 0
    rows, columns = bright.any(dim=1).nonzero().flatten(), bright.any(dim=0).nonzero().flatten()
    height, width = int(rows.max() - rows.min() + 1), int(columns.max() - columns.min() + 1)
    assert width == 8 and height == 8, (width, height)  # the same 24 mm on both axes: half of 16 px


def test_crop_dataset_items_and_training_jitter():
    store = _store(_numbered_volume(n_slices=6, size=64), rows=64, columns=64)
    points = _points(store, instance_number=3, condition=CONDITIONS[2], level=LEVELS[4], x=32.0, y=32.0, label=1)
    sides = crop_sides(points, 64, 0.25, 0.0)
    evaluation = CropDataset(points, store, slices=3, sides=sides)
    (raw, side, cell), target = evaluation[0]
    assert raw.shape == (3, 16, 16) and raw.dtype == torch.uint8 and side.tolist() == [16, 16]
    assert int(cell) == 2 * 5 + 4 and int(target) == 1
    config = TrainConfig(model_family="crops", crop_slices=3, crop_size=32, store_size=64)
    crop, same_cell = get_family("crops").prepare([raw[None], side[None], cell[None]], config, train=False)
    assert crop.shape == (1, 3, 32, 32) and crop.dtype == torch.float32 and int(same_cell) == int(cell)
    expected = torch.tensor([20.0, 30.0, 40.0]) / 255  # slices 1, 2, 3 around instance 3 (slice 2)
    torch.testing.assert_close(crop[0, :, 16, 16], (expected - 0.449) / 0.226)
    torch.testing.assert_close(evaluation[0][0][0], raw)  # deterministic without training jitter
    torch.manual_seed(0)
    training = CropDataset(points, store, 3, sides, jitter=0.2, jitter_slices=1)
    centres = {tuple(training[0][0][0][:, 8, 8].tolist()) for _ in range(20)}
    assert len(centres) > 1  # the centre slice moves


def test_crops_of_different_sides_are_resized_alike_in_one_batch():
    """Millimetre crops differ in side per frame: padded in the batch, each resized from its own square."""
    volume = np.zeros((1, 64, 64), np.uint8)
    volume[0, :, 32:] = 200  # left half dark, right half bright
    store = _store(volume, rows=64, columns=64)
    points = pd.concat([_points(store, x=32.0, y=32.0), _points(store, x=32.0, y=32.0)], ignore_index=True)
    dataset = CropDataset(points, store, slices=1, sides=np.array([[8, 8], [20, 20]]))
    (raw, sides, _), _ = dataset.__getitems__([0, 1])
    assert raw.shape == (2, 1, 20, 20) and sides.tolist() == [[8, 8], [20, 20]]
    assert (raw[0, 0, 8:] == raw[0, 0, 7]).all() and (raw[0, 0, :, 8:] == raw[0, 0, :, 7:8]).all()  # edge padding
    crops = prepare_crops(raw, sides, 10)
    for crop in crops:  # both: dark left half, bright right half at the output size
        assert crop.shape == (1, 10, 10)
        assert float(crop[0, :, :4].max()) < 0 < float(crop[0, :, 6:].min())


@pytest.mark.parametrize("pooling", ["channels", "attention"])
def test_cropnet_maps_crops_and_cells_to_three_logits(pooling):
    model = CropNet("resnet18", slices=5, pooling=pooling).eval()
    logits = model(torch.randn(3, 5, 32, 32), torch.tensor([0, 7, 24]))
    assert logits.shape == (3, 3)
    expected_in = 5 if pooling == "channels" else 1
    assert model.encoder.conv1.in_channels == expected_in


def test_crop_cells_average_their_points_and_the_rest_is_the_prior():
    family = get_family("crops")
    points = pd.DataFrame(
        {"study_id": [1, 1, 1, 2], "condition": [CONDITIONS[0], CONDITIONS[0], CONDITIONS[3], CONDITIONS[0]],
         "level": [LEVELS[0], LEVELS[0], LEVELS[2], LEVELS[1]]}
    )  # fmt: skip
    outputs = np.log(np.array([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]]))
    prior = np.tile([0.7, 0.2, 0.1], (5, 1))
    cells = family.cell_probabilities(outputs, points, prior)
    assert sorted(cells) == [1, 2]
    np.testing.assert_allclose(cells[1][0, 0], [0.6, 0.3, 0.1])
    np.testing.assert_allclose(cells[1][3, 2], [0.1, 0.1, 0.8])
    np.testing.assert_allclose(cells[1][4, 4], [0.7, 0.2, 0.1])
    np.testing.assert_allclose(cells[2][0, 1], [0.2, 0.2, 0.6])
    np.testing.assert_allclose(cells[2][0, 0], [0.7, 0.2, 0.1])


def test_seed_cells_are_the_mean_of_its_points():
    family = get_family("seed")
    outputs = np.zeros((3, 5, 5, 3))
    outputs[0, ..., 0] = outputs[1, ..., 1] = outputs[2, ..., 2] = 50.0
    cells = family.cell_probabilities(outputs, pd.DataFrame({"study_id": [7, 7, 8]}), np.full((5, 3), 1 / 3))
    np.testing.assert_allclose(cells[7][0, 0], [0.5, 0.5, 0.0], atol=1e-9)
    np.testing.assert_allclose(cells[8][4, 4], [0.0, 0.0, 1.0], atol=1e-9)
