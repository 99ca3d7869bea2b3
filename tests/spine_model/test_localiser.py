"""The localiser: its groups and loss, the axial slice from the patient geometry, and that it learns."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from spine_model.core.config import TrainConfig
from spine_model.core.constants import AXIAL_T2, CONDITIONS, SAGITTAL_T1, SAGITTAL_T2, SPINAL_CONDITION
from spine_model.core.split import StudySplit, split_by_study
from spine_model.data import synth
from spine_model.data.ingest import build_long_table
from spine_model.data.volumes import VolumeStore, build_volume_store, locate_points
from spine_model.evaluation.localiser import evaluate_localiser
from spine_model.families import get_family
from spine_model.families.localiser.data import heatmap_loss, peak, training_groups
from spine_model.families.localiser.model import CHANNELS, LocaliserNet, channel
from spine_model.inference import localiser as locate
from spine_model.inference.frames import inference_frame
from spine_model.inference.localiser import Localiser, axial_slices
from spine_model.inference.predictor import Predictor
from spine_model.inference.prior import CoordinatePrior
from spine_model.pipeline.data import series_to_store
from spine_model.training.loop import train_model


def _stored(root, **settings):
    """Synthetic data, its volume store and located points."""
    synth.generate_dataset(root / "data", n_test_studies=0, **settings)
    table = build_long_table(root / "data").table
    build_volume_store(root / "data", "train", series_to_store(root / "data", "train"), root / "store", 64, 1, False)
    store = VolumeStore(root / "store")
    points, _ = locate_points(table, store.index, store.size)
    return points, store


def test_channels_cover_every_point_kind():
    assert len(CHANNELS) == 5 + 10 + 2
    assert channel(SPINAL_CONDITION, "l3_l4") == 2
    assert channel("left_neural_foraminal_narrowing", "l1_l2") != channel("right_neural_foraminal_narrowing", "l1_l2")
    assert channel("left_subarticular_stenosis", "l1_l2") == channel("left_subarticular_stenosis", "l5_s1")
    heatmaps = LocaliserNet("resnet18").eval()(torch.randn(3, 3, 64, 64), torch.tensor([0.0, 0.5, 1.0]))
    assert heatmaps.shape == (3, len(CHANNELS), 16, 16)


def test_groups_are_sagittal_series_and_each_axial_level_with_its_neighbouring_slices(tiny_store):
    points = tiny_store[0]
    groups, unusual = training_groups(points)
    assert unusual == 0
    sagittal = points[points["series_description"] != AXIAL_T2]
    axial = points[points["series_description"] == AXIAL_T2]
    assert len(groups) == sagittal["series_id"].nunique() + len(axial.drop_duplicates(["series_id", "level"]))
    assert sum(len(group.targets) for group in groups) == len(points)
    n_slices = points.drop_duplicates("series_id").set_index("series_id")["n_slices"]
    for group in groups:
        assert (np.diff(group.slice_indices) == 1).all()  # contiguous slices of one series
        if group.series_id not in set(axial["series_id"]) or len(group.slice_indices) == n_slices[group.series_id]:
            continue
        for _, k, _, _ in group.targets:  # the labelled slice, with a neighbour on each side within the series
            labelled = group.slice_indices[k]
            assert labelled - 1 in group.slice_indices or labelled == 0
            assert labelled + 1 in group.slice_indices or labelled == n_slices[group.series_id] - 1
    on_t1 = points.assign(
        series_description=np.where(points["condition"] == SPINAL_CONDITION, SAGITTAL_T1, points["series_description"])
    )
    assert training_groups(on_t1)[1] == (points["condition"] == SPINAL_CONDITION).sum()  # counted, not learnt


def test_loss_is_lowest_at_the_labelled_point_and_peaks_read_it_back():
    heatmaps = torch.zeros(4, len(CHANNELS), 8, 8)
    targets = torch.tensor([[3.0, 1.0, 3.0, 2.0, 5.5, 2.5]])  # channel 3, group of slices 1-3, slice 2, x 5.5, y 2.5
    flat, _ = heatmap_loss(heatmaps, targets)
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    bump = 6 - ((ys - 2) ** 2 + (xs - 5) ** 2) / 2  # the target's shape around cell (x 5, y 2), raised
    heatmaps[2, 3] = bump
    sharp, count = heatmap_loss(heatmaps, targets)
    assert float(count) == 1 and float(sharp) < float(flat)
    wrong = torch.zeros_like(heatmaps)
    wrong[3, 3] = bump  # the right place on the wrong slice
    assert float(heatmap_loss(wrong, targets)[0]) > float(flat) > float(sharp)
    found = peak(heatmaps[1:4, 3])
    assert found.slice == 1 and found.x == pytest.approx(5.5, abs=0.05) and found.y == pytest.approx(2.5, abs=0.05)


@pytest.fixture(scope="module")
def split_axial(module_tmp):
    """Every study with two axial series: an upper (levels 1-3 labelled, reaching 4) and a lower one."""
    patch = pytest.MonkeyPatch()
    patch.setattr(synth, "AXIAL_SPLIT_SHARE", 1.0)
    try:
        return _stored(module_tmp.mktemp("split_axial"), n_studies=4, image_size=64, n_slices=8, seed=9)
    finally:
        patch.undo()


def _anchors(study_points: pd.DataFrame, condition: str) -> dict[str, pd.Series]:
    """Labelled points of a condition as axial_slices takes canal points: level -> slice row with x, y."""
    chosen = study_points[study_points["condition"] == condition]
    return {row.level: pd.Series(row._asdict()) for row in chosen.itertuples(index=False)}


def test_each_level_gets_the_labelled_axial_slice_of_the_series_that_reaches_it(split_axial):
    points, store = split_axial
    canal_errors = []
    for study_id, study_points in points.groupby("study_id"):
        index = store.index[store.index["study_id"] == study_id]
        axial_ids = sorted(index.loc[index["series_description"] == AXIAL_T2, "series_id"].unique())
        assert len(axial_ids) == 2
        # Anchored at the labelled axial points themselves, the geometry must give back their slices.
        anchors = _anchors(study_points, "left_subarticular_stenosis")
        canal = _anchors(study_points, SPINAL_CONDITION)
        for series_id in axial_ids:  # each series alone: a series that misses some levels
            alone = index[(index["series_description"] != AXIAL_T2) | (index["series_id"] == series_id)]
            chosen = axial_slices(alone, anchors)
            carried = {level: row for level, row in anchors.items() if row.series_id == series_id}
            assert set(carried) <= set(chosen), (study_id, series_id)
            for level, row in carried.items():
                assert (chosen[level].series_id, chosen[level].slice_index) == (series_id, row.slice_index)
            assert len(chosen) < len(anchors)  # levels beyond its ends get no slice
            # From the canal points (annotation jitter of 2.4 mm against slice gaps of about 11 mm):
            from_canal = axial_slices(alone, canal)
            canal_errors += [
                abs(from_canal[lv].slice_index - r.slice_index) for lv, r in carried.items() if lv in from_canal
            ]
        # A study with two axial series that overlap by a level: every level reached, on the series
        # that carries its points (the one it lies deepest inside), not at the edge of the other.
        both = axial_slices(index, anchors)
        assert set(both) == set(anchors)
        for level, row in anchors.items():
            assert (both[level].series_id, both[level].slice_index) == (row.series_id, row.slice_index), level
        assert {int(row.series_id) for row in axial_slices(index, canal).values()} == set(axial_ids)
    assert canal_errors and max(canal_errors) <= 1


@pytest.fixture(scope="module")
def trained(module_tmp):
    points, store = _stored(
        module_tmp.mktemp("localiser"), n_studies=20, image_size=48, n_slices=8, axial_slices=(14, 18), seed=3
    )
    split = split_by_study(points, 0.2, 42)
    config = TrainConfig(
        model_family="localiser", pretrained=False, store_size=64, image_size=48, epochs=6, batch_size=4, lr=1e-3,
        num_workers=0, augment=True,
    )  # fmt: skip
    model, _ = train_model(points, split, store, config, progress=False)
    return Localiser(model.eval(), config, "cpu"), points, split, store


def test_the_localiser_finds_points_closer_than_the_coordinate_prior(trained):
    localiser, points, split, store = trained
    prior = CoordinatePrior.fit(split.select(points, "train"))
    evaluation = evaluate_localiser(localiser, points, split, store, prior)
    mine, theirs = (
        evaluation.table("localiser").set_index("condition"),
        evaluation.table("prior").set_index("condition"),
    )
    assert mine.loc["all", "distance_share"] < theirs.loc["all", "distance_share"], evaluation.describe()
    assert mine.loc[SPINAL_CONDITION, "slice_error"] <= theirs.loc[SPINAL_CONDITION, "slice_error"]
    assert mine.loc["all", "found"] > 0.8
    # The axial slice is the model's pick among the geometry's slice and its neighbours, not the
    # geometry's alone: with the search window shut, some axial points land on other slices. (Whether
    # the pick beats the geometry is a quality claim, measured by `make bench-quality` on enough
    # studies; on these few it is a coin toss.)
    every = StudySplit(split.train_study_ids, split.train_study_ids + split.val_study_ids)
    geometry_only = pytest.MonkeyPatch()
    geometry_only.setattr(locate, "AXIAL_SEARCH_WINDOW", 0)
    try:
        from_geometry = evaluate_localiser(localiser, points, every, store, prior).found
    finally:
        geometry_only.undo()
    searched = evaluate_localiser(localiser, points, every, store, prior).found
    key = ["study_id", "condition", "level"]
    axial = searched[searched["condition"].str.contains("subarticular")].merge(
        from_geometry, on=key, suffixes=("", "_geometry")
    )
    assert len(axial) > 0 and (axial["instance_number"] != axial["instance_number_geometry"]).any()
    found = evaluation.found
    assert set(found["condition"]) == set(CONDITIONS) and (found["source"] == "localiser").all()
    assert not found.duplicated(["study_id", "condition", "level"]).any()
    metrics = evaluation.metrics()
    assert {"val_loc_distance_share", "val_prior_loc_distance_share", f"val_loc_slice_error_{SPINAL_CONDITION}"} <= set(
        metrics
    )


def test_predictions_use_the_localiser_and_else_fall_back_to_the_prior_and_say_so(trained, caplog):
    localiser, points, split, store = trained
    prior = CoordinatePrior.fit(split.select(points, "train"))
    config = TrainConfig(model_family="crops", pretrained=False, store_size=64, crop_size=16, batch_size=8)
    model = get_family("crops").create_model(config).eval()
    data_dir = store.root.parent / "data"
    frame = inference_frame(data_dir, "train")
    frame = frame[frame["study_id"].isin(split.val_study_ids)]
    with caplog.at_level(logging.INFO, logger="spine_model.inference.predictor"):
        without = Predictor(model, config, prior, np.tile([0.7, 0.2, 0.1], (5, 1)), device="cpu")
        assert set(without.points(frame, store)["source"]) == {"prior"}
    assert any("points from prior (25)" in message for message in caplog.messages)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="spine_model.inference.predictor"):
        with_localiser = Predictor(
            model, config, prior, np.tile([0.7, 0.2, 0.1], (5, 1)), device="cpu", localiser=localiser
        )
        used = with_localiser.points(frame, store)
    per_study = used.groupby("study_id").size()
    assert (per_study == 25).all() and "localiser" in set(used["source"])
    assert any("localiser (" in message for message in caplog.messages)
    # A study without any sagittal series: the localiser places nothing, the prior everything.
    no_sagittal = frame[(frame["study_id"] != frame["study_id"].iloc[0]) | (frame["series_description"] == AXIAL_T2)]
    alone = with_localiser.points(no_sagittal, store)
    first = alone[alone["study_id"] == frame["study_id"].iloc[0]]
    assert set(first["source"]) == {"prior"} and SAGITTAL_T2 not in set(first["series_description"])
