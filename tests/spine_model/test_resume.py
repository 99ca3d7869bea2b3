"""Checkpoint and resume: a training process killed after its first epoch goes on where it stopped
and ends where an uninterrupted run ends; a loss that is not finite stops training cleanly."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from spine_model.core.catalog import checkpoint_files
from spine_model.core.config import TrainConfig
from spine_model.core.split import split_by_study
from spine_model.families import get_family
from spine_model.training.loaders import make_loader
from spine_model.training.loop import TrainingDiverged, TrainingStopped, fit, train_model

SETTINGS = {
    "model_family": "crops", "crop_pooling": "channels", "pretrained": False, "store_size": 32, "crop_size": 16,
    "epochs": 2,
    "batch_size": 16, "num_workers": 0, "lr": 1e-3, "val_fraction": 0.25, "augment": True, "seed": 5,
}  # fmt: skip

# Trains in a process of its own and hangs after the first epoch, until it is killed.
TRAINER = textwrap.dedent(
    """
    import sys, time
    import pandas as pd
    from spine_model.core.config import TrainConfig
    from spine_model.core.split import split_by_study
    from spine_model.training.loop import train_model
    from spine_model.data.volumes import VolumeStore

    points_path, store_root, checkpoints, settings = sys.argv[1:5]
    points = pd.read_parquet(points_path)
    config = TrainConfig(**eval(settings))
    split = split_by_study(points, config.val_fraction, config.split_seed)

    def hang(stats):
        if stats.epoch == 1:
            print("epoch 1 done", flush=True)
            time.sleep(600)

    train_model(points, split, VolumeStore(store_root), config, checkpoints, hang, progress=False)
    """
)


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if process.poll() is not None:
            raise AssertionError(f"the trainer exited early:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {path} after {timeout_s} s")
        time.sleep(0.2)


def test_a_killed_training_resumes_and_ends_as_an_uninterrupted_one(tiny_store, tmp_path):
    points, _, store, _ = tiny_store
    config = TrainConfig(**SETTINGS)
    split = split_by_study(points, config.val_fraction, config.split_seed)
    points.to_parquet(tmp_path / "points.parquet")
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(tmp_path / "points.parquet"), str(store.root), str(killed), repr(SETTINGS)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        _wait_for(checkpoint_files(killed).state, process)
        assert process.stdout.readline().strip() == "epoch 1 done"  # the state was written before the callback
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert torch.load(checkpoint_files(killed).state, weights_only=True)["epoch"] == 1

    seen = []
    resumed_model, resumed = train_model(points, split, store, config, killed, seen.append, False, resume=True)
    assert [s.epoch for s in seen] == [2]  # only the epochs not done before
    assert [s.epoch for s in resumed.history] == [1, 2]

    whole_model, whole = train_model(points, split, store, config, tmp_path / "whole", progress=False)
    for a, b in zip(resumed.history, whole.history, strict=True):
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-4, abs=1e-6), (a.epoch, key)
    assert resumed.best_epoch == whole.best_epoch
    for (name, mine), theirs in zip(resumed_model.state_dict().items(), whole_model.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-4, msg=name)


def test_resume_without_a_state_starts_from_the_first_epoch(tiny_store, tmp_path):
    points, _, store, _ = tiny_store
    config = TrainConfig(**{**SETTINGS, "epochs": 1})
    split = split_by_study(points, config.val_fraction, config.split_seed)
    _, result = train_model(points, split, store, config, tmp_path / "fresh", progress=False, resume=True)
    assert [s.epoch for s in result.history] == [1]
    other = TrainConfig(**{**SETTINGS, "lr": 0.5})
    with pytest.raises(ValueError, match=r"other settings \(lr\): cannot resume"):
        train_model(points, split, store, other, tmp_path / "fresh", progress=False, resume=True)


def test_a_loss_that_is_not_finite_stops_training_and_keeps_the_last_good_checkpoint(tiny_store, tmp_path):
    points, _, store, _ = tiny_store
    config = TrainConfig(**SETTINGS)
    split = split_by_study(points, config.val_fraction, config.split_seed)
    family = get_family(config.model_family)
    model = family.create_model(config)
    device = torch.device("cpu")
    loaders = [
        make_loader(family.dataset(split.select(points, side), store, config, train), config, train, device)
        for side, train in (("train", True), ("val", False))
    ]

    def poison(stats):  # after the first epoch the weights turn NaN, as an exploding step leaves them
        if stats.epoch == 1:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.fill_(math.nan)

    with pytest.raises(TrainingDiverged, match=r"epoch 2: train loss nan.*not finite.*holds epoch 1"):
        fit(model, family, *loaders, config, tmp_path / "ckpt", poison, progress=False)
    last = checkpoint_files(tmp_path / "ckpt").last
    kept = torch.load(last, weights_only=True)
    assert kept["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
    assert torch.load(checkpoint_files(tmp_path / "ckpt").state, weights_only=True)["epoch"] == 1


def test_a_stop_request_ends_training_after_the_epoch_it_is_in_and_keeps_its_checkpoints(tiny_store, tmp_path):
    points, _, store, _ = tiny_store
    config = TrainConfig(**{**SETTINGS, "epochs": 3})
    split = split_by_study(points, config.val_fraction, config.split_seed)
    asked = []
    with pytest.raises(TrainingStopped, match="after epoch 1 of 3"):
        train_model(
            points, split, store, config, tmp_path / "ckpt", progress=False, on_epoch_end=asked.append,
            should_stop=lambda: bool(asked),  # asked to stop once the first epoch was reported
        )  # fmt: skip
    files = checkpoint_files(tmp_path / "ckpt")
    assert [stats.epoch for stats in asked] == [1]
    assert torch.load(files.last, weights_only=True)["epoch"] == 1 and files.state.is_file()
    # The run resumes from there when it is wanted after all.
    _, result = train_model(points, split, store, config, tmp_path / "ckpt", progress=False, resume=True)
    assert [stats.epoch for stats in result.history] == [1, 2, 3]
