import math

import pytest
import torch

from spine_model.config import TrainConfig
from spine_model.image_store import PngImageStore
from spine_model.ingest import build_long_table
from spine_model.preprocess import preprocess_instances
from spine_model.split import split_by_study
from spine_model.train import load_checkpoint, masked_cross_entropy, resolve_device, train_spinenet


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


def test_split_keeps_studies_apart(tiny_data):
    table = build_long_table(tiny_data).table
    split = split_by_study(table, 0.25, 42)
    assert not set(split.train_study_ids) & set(split.val_study_ids)
    assert set(split.train_study_ids) | set(split.val_study_ids) == set(table["study_id"])
    assert split == split_by_study(table, 0.25, 42)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_training_writes_checkpoints_that_reload_identically(tiny_data, tmp_path):
    ingest = build_long_table(tiny_data)
    keys = ingest.table[["study_id", "series_id", "instance_number"]].itertuples(index=False, name=None)
    preprocess_instances(keys, tiny_data, tmp_path / "png", 32, workers=1, progress=False)
    store = PngImageStore(tmp_path / "png")
    config = TrainConfig(
        pretrained=False,
        image_size=32,
        epochs=2,
        batch_size=16,
        num_workers=0,
        lr=1e-3,
        val_fraction=0.25,
        augment=True,
    )
    split = split_by_study(ingest.table, config.val_fraction, config.split_seed)
    seen = []
    model, result = train_spinenet(ingest.table, split, store, config, tmp_path / "ckpt", seen.append, progress=False)
    assert [s.epoch for s in result.history] == [1, 2] == [s.epoch for s in seen]
    assert all(math.isfinite(s.train_loss) and math.isfinite(s.val_loss) for s in result.history)
    assert result.best_val_loss == min(s.val_loss for s in result.history)
    reloaded, reloaded_config = load_checkpoint(tmp_path / "ckpt" / "best.pt")
    assert reloaded_config == config
    model.eval()
    reloaded.eval()
    image, coords = torch.randn(3, 1, 32, 32), torch.rand(3, 2)
    torch.testing.assert_close(model(image, coords), reloaded(image, coords))
    assert (tmp_path / "ckpt" / "last.pt").is_file()
