"""A tracking server that goes away mid-training: training goes on, and once a real `mlflow server`
is back every epoch's metrics are there, each once; the checkpoints never depended on it."""

from __future__ import annotations

import mlflow
import pytest

from flows.stack import LocalStack, free_port
from spine_model import tracking
from spine_model.core.catalog import checkpoint_files
from spine_model.core.config import TrainConfig
from spine_model.core.split import split_by_study
from spine_model.training.checkpoints import saved_epoch
from spine_model.training.loop import train_model

pytestmark = pytest.mark.integration

SETTINGS = {
    "model_family": "crops", "crop_pooling": "channels", "pretrained": False, "store_size": 32, "crop_size": 16,
    "epochs": 3, "batch_size": 16, "num_workers": 0, "lr": 1e-3, "val_fraction": 0.25,
}  # fmt: skip


def test_training_goes_on_through_a_tracking_server_outage_and_loses_no_metric(tiny_store, tmp_path):
    points, _, store, _ = tiny_store
    config = TrainConfig(**SETTINGS)
    split = split_by_study(points, config.val_fraction, config.split_seed)
    stack = LocalStack(tmp_path / "stack", mlflow_port=free_port())
    stack.start_mlflow_server()
    try:
        run_id = tracking.start_run("outage", "through-an-outage", tracking_uri=stack.mlflow_url)
        buffer = tracking.MetricBuffer(run_id, stack.mlflow_url, tmp_path / "run" / "pending_metrics.jsonl")
        taken = []

        def on_epoch_end(stats):
            if stats.epoch == 1:
                stack.stop()  # the server goes away ...
            taken.append(buffer.log({"train_loss": stats.train_loss, "val_loss": stats.val_loss}, stats.epoch))
            if stats.epoch == 2:
                stack.start_mlflow_server()  # ... and comes back, on the same store

        _, result = train_model(points, split, store, config, tmp_path / "ckpt", on_epoch_end, progress=False)
        assert [s.epoch for s in result.history] == [1, 2, 3]  # training never stopped
        assert taken == [False, False, True]  # kept while the server was away, all sent once it answered
        assert buffer.pending() == [] and buffer.flush()
        client = mlflow.MlflowClient(stack.mlflow_url)
        for key in ("train_loss", "val_loss"):
            history = client.get_metric_history(run_id, key)
            assert sorted(m.step for m in history) == [1, 2, 3], key
            expected = [getattr(s, key) for s in result.history]
            assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(expected)
        assert saved_epoch(tmp_path / "ckpt") == 3 and all(p.is_file() for p in checkpoint_files(tmp_path / "ckpt"))
    finally:
        stack.stop()
