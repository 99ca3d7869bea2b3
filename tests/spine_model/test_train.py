import math

import numpy as np
import pytest
import torch
from torch.utils.data import SequentialSampler

from spine_model.core.catalog import checkpoint_files
from spine_model.core.config import TrainConfig
from spine_model.core.split import split_by_study
from spine_model.data.ingest import build_long_table
from spine_model.families import get_family
from spine_model.families.base import model_inputs
from spine_model.training.checkpoints import load_checkpoint
from spine_model.training.devices import resolve_device
from spine_model.training.loaders import Batches, make_loader
from spine_model.training.loop import train_model
from tests.conftest import FAMILIES


def test_split_keeps_studies_apart(tiny_data):
    table = build_long_table(tiny_data).table
    split = split_by_study(table, 0.25, 42)
    assert not set(split.train_study_ids) & set(split.val_study_ids)
    assert set(split.train_study_ids) | set(split.val_study_ids) == set(table["study_id"])
    assert split == split_by_study(table, 0.25, 42)
    assert set(split.select(table, "val")["study_id"]) == set(split.val_study_ids)
    with pytest.raises(ValueError, match="'train' or 'val'"):
        split.select(table, "test")


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("family_name", FAMILIES)
def test_training_writes_checkpoints_that_reload_identically(family_name, tiny_store, tmp_path):
    points, _, store, split = tiny_store
    config = TrainConfig(
        model_family=family_name, pretrained=False, store_size=32, image_size=32, crop_size=16, epochs=2,
        batch_size=16, num_workers=0, lr=1e-3, val_fraction=0.25, augment=True,
    )  # fmt: skip
    seen = []
    model, result = train_model(points, split, store, config, tmp_path / "ckpt", seen.append, progress=False)
    assert [s.epoch for s in result.history] == [1, 2] == [s.epoch for s in seen]
    assert all(math.isfinite(s.train_loss) and math.isfinite(s.val_loss) for s in result.history)
    assert result.best_val_loss == min(s.val_loss for s in result.history)
    best, last, _ = checkpoint_files(tmp_path / "ckpt")
    reloaded, reloaded_config = load_checkpoint(best)
    assert reloaded_config == config and type(reloaded) is type(model)
    model.eval()
    reloaded.eval()
    family = get_family(family_name)
    inputs, _ = model_inputs(family, family.dataset(split.select(points, "val"), store, config, train=False), config, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs), reloaded(*inputs))
    assert last.is_file()


def test_batches_prepared_in_cpu_workers_train_like_batches_prepared_in_the_loop(tiny_store):
    """On the CPU, loader workers prepare the batches (resize, normalise); on a GPU the loop does, on
    the device. Without augmentation both give the same epoch (later epochs shuffle differently:
    DataLoader draws its worker seed from the same generator)."""
    points, _, store, split = tiny_store
    histories = []
    for workers in (0, 2):
        config = TrainConfig(
            model_family="crops", crop_pooling="channels", pretrained=False, store_size=32, crop_size=16,
            epochs=1, batch_size=16, num_workers=workers, lr=1e-3, val_fraction=0.25, crop_jitter=0.0,
            crop_jitter_slices=0,
        )  # fmt: skip
        _, result = train_model(points, split, store, config, progress=False)
        histories.append([(s.train_loss, s.val_loss) for s in result.history])
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-4)
    device = torch.device("cpu")
    family = get_family("crops")
    dataset = family.dataset(split.select(points, "val"), store, config, train=False)
    assert make_loader(dataset, config, False, device).prepared_in_workers
    assert not make_loader(dataset, config, False, device, prepare_in_workers=False).prepared_in_workers


@pytest.mark.parametrize(("items", "size", "expected"), [(17, 8, [8, 9]), (16, 8, [8, 8]), (18, 8, [8, 8, 2]),
                                                         (9, 8, [9]), (1, 8, [1]), (5, 1, [1] * 5)])  # fmt: skip
def test_a_last_batch_of_one_item_joins_the_batch_before(items, size, expected):
    batches = Batches(SequentialSampler(range(items)), size)
    assert [len(batch) for batch in batches] == expected and len(batches) == len(expected)
    assert sorted(i for batch in batches for i in batch) == list(range(items))  # every item, once


@pytest.mark.parametrize("family_name", FAMILIES)
def test_a_split_that_leaves_one_sample_over_trains(family_name, tiny_store):
    """BatchNorm cannot train on a batch of one ("Expected more than 1 value per channel")."""
    points, _, store, split = tiny_store
    settings = {"model_family": family_name, "pretrained": False, "store_size": 32, "image_size": 32,
                "crop_size": 16, "crop_pooling": "channels", "epochs": 1, "num_workers": 0, "lr": 1e-3}  # fmt: skip
    family = get_family(family_name)
    train_items = len(family.dataset(split.select(points, "train"), store, TrainConfig(**settings), train=True))
    config = TrainConfig(**settings, batch_size=train_items - 1)  # one full batch, then one item over
    _, result = train_model(points, split, store, config, progress=False)
    assert math.isfinite(result.history[0].train_loss)
