"""One run folder: prepared from the ingested data (points on the store, split, priors), read back by
any process that trains or evaluates it, what it trains (its role), and the state a pipeline run
keeps there so that `spine train --resume` can go on with it."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from spine_model.core.catalog import RunFolder, RunRecord
from spine_model.core.config import TrainConfig
from spine_model.core.files import atomic_write
from spine_model.core.split import StudySplit, split_by_study
from spine_model.data.ingest import write_table
from spine_model.data.volumes import (
    UNPLACED_NOT_STORED,
    UNPLACED_OUTSIDE,
    StoreReport,
    VolumeStore,
    describe_unplaced,
    locate_points,
)
from spine_model.evaluation.compare import MODEL_SUMMARY, VAL_FINGERPRINT
from spine_model.evaluation.metric import class_prior
from spine_model.evaluation.reports import label_counts
from spine_model.families import get_family
from spine_model.inference.prior import CoordinatePrior, save_priors
from spine_model.pipeline.data import IngestOutputs

log = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    """A run folder made ready for training, and what the parent logs about its data."""

    folder: RunFolder
    record: RunRecord
    facts: dict[str, int | str]
    points: pd.DataFrame = field(repr=False)
    labels: pd.DataFrame = field(repr=False)
    localiser: RunRecord | None = None  # the record of the localiser's run folder, when one is trained

    def inputs(self) -> RunInputs:
        """The run's inputs, from what preparing it already holds (nothing read again)."""
        return RunInputs(self.folder, self.record, self.points, self.labels, VolumeStore(self.record.store_root))


def prepare_run(
    data_dir: str | Path,
    ingested: IngestOutputs,
    table: pd.DataFrame,
    labels: pd.DataFrame,
    store: StoreReport,
    config: TrainConfig,
    run_dir: str | Path,
    localiser_config: TrainConfig | None = None,
) -> PreparedRun:
    """Locate the coordinate rows on the store, split by study, fit the priors; write the run folder.

    table and labels are `ingested.read()`, passed in so that the caller reads them once. Points
    whose image could not be stored are dropped, counted and logged. Writes run.json, the training
    points and priors.json; returns the record and the data facts worth logging. With
    `localiser_config`, the run folder's `localiser/` gets the same points, priors and split for
    training a localiser beside the classifier.
    """
    folder = RunFolder(run_dir)
    volumes = VolumeStore(store.root)
    points, unplaced = locate_points(table, volumes.index, volumes.size)
    for line in describe_unplaced(unplaced):
        log.warning("dropping %s", line)
    split = split_by_study(points, config.val_fraction, config.split_seed)
    write_table(points, folder.points)
    train_points = split.select(points, "train")
    prior = class_prior(split.select(labels, "train"))
    save_priors(folder.priors, CoordinatePrior.fit(train_points), prior)
    record = RunRecord(str(Path(data_dir).resolve()), ingested.labels_path, store.root, config, split)
    record.save(folder.root)
    localiser = None
    if localiser_config is not None:
        localiser = dataclasses.replace(record, config=localiser_config)
        write_table(points, folder.localiser.points)
        shutil.copyfile(folder.priors, folder.localiser.priors)
        localiser.save(folder.localiser.root)
    facts = data_facts(points, labels, split, store, unplaced, ingested.skipped)
    facts[MODEL_SUMMARY] = get_family(config.model_family).describe(config)
    return PreparedRun(folder, record, facts, points, labels, localiser)


def data_facts(
    points: pd.DataFrame,
    labels: pd.DataFrame,
    split: StudySplit,
    store: StoreReport,
    unplaced: pd.DataFrame,
    ingest_skipped: dict[str, int],
) -> dict[str, int | str]:
    """Counts worth logging beside the config: studies and points per split, labels, skips."""
    facts: dict[str, int | str] = {
        "data_train_studies": len(split.train_study_ids),
        "data_val_studies": len(split.val_study_ids),
        VAL_FINGERPRINT: split.val_fingerprint(),
        "data_train_points": len(split.select(points, "train")),
        "data_val_points": len(split.select(points, "val")),
        "data_rows_skipped_at_ingest": sum(ingest_skipped.values()),
        "data_points_dropped_unreadable": int((unplaced["reason"] == UNPLACED_NOT_STORED).sum()),
        "data_points_dropped_outside_image": int((unplaced["reason"] == UNPLACED_OUTSIDE).sum()),
        "data_images_unreadable": len(store.unreadable_files),
        "data_series_skipped": len(store.skipped_series),
    }
    for reason, count in ingest_skipped.items():
        facts[f"data_skipped_{reason.replace(' ', '_')}"] = count
    for name, count in label_counts(split.select(labels, "train")).items():
        facts[f"data_train_labels_{name.lower().replace('/', '_')}"] = count
    return facts


@dataclass
class RunInputs:
    """Everything a process needs to train, evaluate and log a run folder, read once."""

    folder: RunFolder
    record: RunRecord
    points: pd.DataFrame  # located training points of both sides of the split
    labels: pd.DataFrame
    store: VolumeStore

    @classmethod
    def load(cls, run_dir: str | Path) -> RunInputs:
        folder = RunFolder(run_dir)
        record = RunRecord.load(folder.root)
        return cls(
            folder, record, pd.read_parquet(folder.points), pd.read_parquet(record.labels_path),
            VolumeStore(record.store_root),
        )  # fmt: skip

    @property
    def weights(self) -> Path:
        """The checkpoint this run is evaluated, logged and served with (its config's restore_best)."""
        return self.folder.weights(self.record.config.restore_best)


@dataclass(frozen=True)
class Role:
    """What a run folder trains, by what its model family produces: the classifier (severity
    probabilities per cell) or the localiser (points for studies without coordinates). How it is
    evaluated, the files that evaluation writes and the progress shown follow from it."""

    name: str
    progress_key: str  # the Prefect progress artifact of its training
    evaluation_files: Callable[[RunFolder], dict[str, Path]]


CLASSIFIER = Role("classifier", "spine-training-progress", RunFolder.evaluation_files)
LOCALISER = Role("localiser", "spine-localiser-progress", RunFolder.localiser_evaluation_files)


def role_of(config: TrainConfig) -> Role:
    return LOCALISER if get_family(config.model_family).produces == "points" else CLASSIFIER


@dataclass
class PipelineRun:
    """One pipeline run once its run folder is prepared: what the training and the steps after it
    need, kept in the run folder (pipeline.json) so that `spine train --resume` goes on with it.
    `config` is the pipeline's own settings model (the flows' PipelineConfig)."""

    config: BaseModel
    run_dir: str
    run_id: str
    tracking_uri: str
    mode: str  # localiser mode: train, reuse or off
    localiser_run_id: str | None = None
    localiser_checkpoint: str | None = None  # a reused localiser's weights
    result: dict | None = field(default=None, repr=False)  # the flow's result, once trained

    def save(self) -> None:
        state: dict[str, Any] = {**asdict(self), "config": self.config.model_dump()}
        state.pop("result")
        payload = json.dumps(state, indent=2).encode()
        atomic_write(RunFolder(self.run_dir).pipeline_state, lambda handle: handle.write(payload))

    @classmethod
    def load(cls, run_dir: str | Path, config_type: type[BaseModel]) -> PipelineRun:
        path = RunFolder(run_dir).pipeline_state
        if not path.is_file():
            raise ValueError(f"{run_dir} is not a run folder of train-pipeline: it has no {path.name}")
        saved = json.loads(path.read_text())
        run_dir = str(Path(run_dir).resolve())
        return cls(**{**saved, "config": config_type(**saved["config"]), "run_dir": run_dir})

    def mlflow_runs(self) -> list[tuple[str, str]]:
        """(MLflow run id, run folder) of the pipeline's runs: the localiser's first, when it has one."""
        folder = RunFolder(self.run_dir)
        runs = [(self.localiser_run_id, str(folder.localiser.root)), (self.run_id, self.run_dir)]
        return [(run_id, run_dir) for run_id, run_dir in runs if run_id is not None]
