"""One run folder: prepared from the ingested data (points on the store, split, priors), read back by
any process that trains or evaluates it, what it trains (its role), and the state a pipeline run
keeps there so that `spine train --resume` can go on with it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from spine_model.core.catalog import CVFolder, RunFolder, RunRecord
from spine_model.core.config import TrainConfig
from spine_model.core.files import atomic_write
from spine_model.core.split import Folds, StudySplit, assign_folds, split_by_study
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


@dataclass(frozen=True)
class RunData:
    """What run folders are prepared from: the data folder, its ingest, the coordinate table and
    labels read from it once, and the volume store built from it."""

    data_dir: str | Path
    ingested: IngestOutputs
    table: pd.DataFrame = field(repr=False)
    labels: pd.DataFrame = field(repr=False)
    store: StoreReport


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
    data: RunData, config: TrainConfig, run_dir: str | Path, localiser_config: TrainConfig | None = None
) -> PreparedRun:
    """Locate the coordinate rows on the store, split by study, fit the priors; write the run folder.

    Points whose image could not be stored are dropped, counted and logged. Writes run.json, the training
    points and priors.json; returns the record and the data facts worth logging. With
    `localiser_config`, the run folder's `localiser/` gets the same points, priors and split for
    training a localiser beside the classifier.
    """
    points, unplaced = locate_table(data.table, data.store)
    split = split_by_study(points, config.val_fraction, config.split_seed)
    prepared = write_run(RunFolder(run_dir), data, points, config, split)
    if localiser_config is not None:
        prepared.localiser = write_run(prepared.folder.localiser, data, points, localiser_config, split).record
    prepared.facts = run_facts(prepared, data, unplaced)
    return prepared


def locate_table(table: pd.DataFrame, store: StoreReport) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(points: the coordinate rows placed on stored slices, unplaced: those that were not, with why);
    what is dropped is logged."""
    volumes = VolumeStore(store.root)
    points, unplaced = locate_points(table, volumes.index, volumes.size)
    for line in describe_unplaced(unplaced):
        log.warning("dropping %s", line)
    return points, unplaced


def write_run(
    folder: RunFolder, data: RunData, points: pd.DataFrame, config: TrainConfig, split: StudySplit
) -> PreparedRun:
    """One run folder for a given split: its points (those placed on the store), priors (of its
    training side) and record."""
    write_table(points, folder.points)
    prior = class_prior(split.select(data.labels, "train"))
    save_priors(folder.priors, CoordinatePrior.fit(split.select(points, "train")), prior)
    record = RunRecord(str(Path(data.data_dir).resolve()), data.ingested.labels_path, data.store.root, config, split)
    record.save(folder.root)
    return PreparedRun(folder, record, {}, points, data.labels)


def run_facts(prepared: PreparedRun, data: RunData, unplaced: pd.DataFrame) -> dict:
    """The data facts of a prepared run and the few words on its model: its MLflow params."""
    record = prepared.record
    facts = data_facts(prepared.points, prepared.labels, record.split, data.store, unplaced, data.ingested.skipped)
    facts[MODEL_SUMMARY] = get_family(record.config.model_family).describe(record.config)
    return facts


@dataclass
class PreparedCV:
    """A cross-validation's folders made ready: one run folder per fold, the localiser's, the folds."""

    folder: CVFolder
    folds: Folds
    runs: list[PreparedRun]
    localiser: PreparedRun | None
    facts: dict[str, int | str]


def prepare_cv(
    data: RunData, config: TrainConfig, cv_dir: str | Path, k: int, localiser_config: TrainConfig | None = None
) -> PreparedCV:
    """K folds by study, stratified on the studies' severity profiles (config.split_seed), each a run
    folder as `prepare_run` writes one; one localiser for all folds (trained on fold 0's split: it only
    places test-time points, and the folds' scores use the labelled ones). The assignment and its
    fingerprint go to folds.json."""
    folder = CVFolder(cv_dir)
    points, unplaced = locate_table(data.table, data.store)
    labels = data.labels
    folds = assign_folds(labels[labels["study_id"].isin(points["study_id"])], k, config.split_seed)
    payload = json.dumps({**folds.to_dict(), "fingerprint": folds.fingerprint(), "k": k}, indent=2).encode()
    atomic_write(folder.folds, lambda handle: handle.write(payload))
    runs = [write_run(folder.fold(fold), data, points, config, folds.split(fold)) for fold in range(k)]
    localiser = None
    if localiser_config is not None:
        localiser = write_run(folder.localiser, data, points, localiser_config, folds.split(0))
    facts = run_facts(runs[0], data, unplaced)
    facts.pop("data_train_studies"), facts.pop("data_val_studies")
    facts.update({VAL_FINGERPRINT: folds.fingerprint(), "cv_folds": k, "data_studies": len(folds.fold_of)})
    return PreparedCV(folder, folds, runs, localiser, facts)


def read_folds(cv_dir: str | Path) -> Folds:
    path = CVFolder(cv_dir).folds
    if not path.is_file():
        raise ValueError(f"{cv_dir} is not a cross-validation folder: it has no {path.name}")
    return Folds.from_dict(json.loads(path.read_text()))


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
    fold_run_ids: list[str] = field(default_factory=list)  # a cross-validation's nested runs, by fold
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
        folder, cv = RunFolder(self.run_dir), CVFolder(self.run_dir)
        folds = [(run_id, str(cv.fold(k).root)) for k, run_id in enumerate(self.fold_run_ids)]
        runs = [(self.localiser_run_id, str(folder.localiser.root)), *folds, (self.run_id, self.run_dir)]
        return [(run_id, run_dir) for run_id, run_dir in runs if run_id is not None]
