"""The watch a dispatching flow keeps on its GPU runs: a resumed run's earlier epochs are not shown again."""

import dataclasses
import json
import logging

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from spine_model.core.catalog import RunFolder, RunRecord
from spine_model.core.config import TrainConfig
from spine_model.core.split import StudySplit
from spine_model.training.history import EpochStats
from tasks.training import TrainingWatch


def _epoch(folder: RunFolder, epoch: int) -> None:
    stats = EpochStats(epoch, 1.0 / epoch, 0.5, 2.0 / epoch, 0.5, 1e-3, 1.0)
    with open(folder.epochs_log, "a") as handle:
        handle.write(json.dumps(dataclasses.asdict(stats)) + "\n")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_watch_of_a_resumed_run_starts_after_its_earlier_epochs(prefect_harness, tmp_path):
    run_dir = tmp_path / "run"
    config = TrainConfig(model_family="crops", epochs=4)
    RunRecord("data", "labels.csv", "store", config, StudySplit((1, 2), (3,))).save(run_dir)
    folder = RunFolder(run_dir)
    _epoch(folder, 1)
    _epoch(folder, 2)  # the run that was stopped got this far
    lines = _Lines()
    logging.getLogger("prefect.flow_runs").addHandler(lines)

    @flow
    def waits() -> None:
        watch = TrainingWatch({"classifier": str(run_dir)})
        watch.poll()  # nothing new yet
        _epoch(folder, 3)  # the resumed run trains on
        watch.poll()

    try:
        waits()
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(lines)
    epochs = [m for m in lines.messages if m.startswith("classifier: epoch")]
    assert epochs == ["classifier: epoch 3/4, train loss 0.3333, validation loss 0.6667"], lines.messages
    with get_client(sync_client=True) as client:
        key = ArtifactFilter(key=ArtifactFilterKey(any_=["spine-training-progress"]))
        found = client.read_artifacts(artifact_filter=key)
    progress = max(found, key=lambda artifact: artifact.created)
    assert progress.data == 75.0 and progress.description.startswith("classifier: epoch 3/4")
