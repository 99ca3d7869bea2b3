"""The pipeline's steps as plain functions: what one Prefect task runs, and what a notebook can call.

Within one process, steps hand each other objects (tables, the volume store, a run's inputs);
across processes (the parent flow and the GPU worker's child) they share a run folder, which
`prepare_run` writes once and `RunInputs.load` reads once. tasks/ only adds retries, caching and
artifacts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spine_model import tracking
from spine_model.catalog import DatasetCache, RunFolder, RunRecord, atomic_write, atomic_write_csv, atomic_write_text
from spine_model.compare import MODEL_SUMMARY, VAL_FINGERPRINT
from spine_model.config import TrainConfig
from spine_model.constants import SOLUTION_CSV
from spine_model.distributed import SINGLE, World
from spine_model.evaluate import Evaluation, evaluate_model, label_counts
from spine_model.families import get_family
from spine_model.families.base import model_inputs
from spine_model.families.localiser.locate import Localiser
from spine_model.inference import CoordinatePrior, load_priors, save_priors
from spine_model.ingest import build_long_table, dicom_path, load_series_descriptions, write_table
from spine_model.locating import LocaliserEvaluation, evaluate_localiser, with_slice_index
from spine_model.metrics import class_prior, score_against_prior
from spine_model.plots import plot_confusion_matrix, plot_localiser_examples, plot_training_curves
from spine_model.split import StudySplit, split_by_study
from spine_model.train import EpochStats, FitResult, load_checkpoint, train_model
from spine_model.volumes import (
    SLICE_KEY,
    UNPLACED_NOT_STORED,
    UNPLACED_OUTSIDE,
    StoreReport,
    VolumeStore,
    build_volume_store,
    describe_unplaced,
    locate_points,
)

log = logging.getLogger(__name__)


# --- data ------------------------------------------------------------------------------------------


@dataclass
class IngestOutputs:
    table_path: str
    labels_path: str
    rows: int
    studies: int
    skipped: dict[str, int] = field(default_factory=dict)
    summary: str = ""

    def read(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(long table, labels), read once by the process that needs them."""
        return pd.read_parquet(self.table_path), pd.read_parquet(self.labels_path)


def ingest_step(data_dir: str | Path, cache: DatasetCache) -> IngestOutputs:
    """Kaggle CSVs -> the cache's long table and per-study labels (parquet)."""
    result = build_long_table(data_dir)
    table_path = write_table(result.table, cache.long_table)
    labels_path = write_table(result.labels, cache.labels)
    return IngestOutputs(
        str(table_path), str(labels_path), len(result.table), int(result.table["study_id"].nunique()),
        dict(result.skipped), result.describe(),
    )  # fmt: skip


def series_to_store(data_dir: str | Path, split: str, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The series a volume store needs: those of `table` (for training, the long table's labelled
    series), else every series that `{split}_series_descriptions.csv` lists."""
    series = table if table is not None else load_series_descriptions(data_dir, split)
    return series[["study_id", "series_id", "series_description"]].drop_duplicates(["study_id", "series_id"])


def store_step(
    data_dir: str | Path,
    split: str,
    series: pd.DataFrame,
    store_root: str | Path,
    size: int,
    workers: int | None = None,
    progress: bool = True,
) -> StoreReport:
    """The split's series into the volume store at `store_root` (resumable; see build_volume_store)."""
    return build_volume_store(data_dir, split, series, store_root, size, workers, progress)


# --- one run ---------------------------------------------------------------------------------------


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


def train_step(
    run: RunInputs,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
    resume: bool = False,
    world: World = SINGLE,
) -> FitResult:
    """Train as the run's record says; writes checkpoints, history, curves and the fit summary.

    `resume`: go on from the last epoch the run folder's training state holds (see `fit`). In one of
    several training processes (`world`), only rank 0 writes.
    """
    folder = run.folder
    if world.main and not resume:
        folder.epochs_log.unlink(missing_ok=True)

    def report(stats: EpochStats) -> None:
        """One line per epoch in the run folder (fit calls this on rank 0 only): whoever waits for the
        training, a parent flow on another machine or torchrun's launcher, reads it."""
        with open(folder.epochs_log, "a") as handle:
            handle.write(json.dumps(dataclasses.asdict(stats)) + "\n")
        if on_epoch_end is not None:
            on_epoch_end(stats)

    _, result = train_model(
        run.points, run.record.split, run.store, run.record.config, folder.checkpoints, report, progress,
        resume=resume, world=world,
    )  # fmt: skip
    if not world.main:
        return result
    history = result.history_frame()
    atomic_write_csv(folder.history, history)
    plot_training_curves(history, folder.curves)
    summary = {"best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss}
    atomic_write_text(folder.fit_summary, json.dumps(summary))
    return result


def evaluate_step(
    run: RunInputs, checkpoint: str | None = None, progress: bool = True
) -> tuple[Evaluation, dict[str, Path]]:
    """Evaluate a checkpoint of the run on its validation split; writes evaluation/.

    checkpoint: 'best' or 'last'; by default the run's own choice (`RunInputs.weights`).
    """
    folder = run.folder
    path = (
        run.weights
        if checkpoint is None
        else {"best": folder.best_checkpoint, "last": folder.last_checkpoint}[checkpoint]
    )
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run has not finished an epoch yet")
    model, config = load_checkpoint(path)
    evaluation = evaluate_model(model, run.points, run.labels, run.record.split, run.store, config, progress)
    files = folder.evaluation_files()
    paths = evaluation.save(files)
    paths["confusion_png"] = plot_confusion_matrix(evaluation.confusion, files["confusion_png"])
    return evaluation, paths


def evaluate_localiser_step(run: RunInputs, progress: bool = True) -> tuple[LocaliserEvaluation, dict[str, Path]]:
    """The run's localiser (best checkpoint) against the coordinate prior on its validation studies;
    writes the evaluation and a picture of a few studies."""
    folder = run.folder
    localiser = Localiser.load(run.weights, run.record.config.device)
    coordinate_prior, _ = load_priors(folder.priors)
    evaluation = evaluate_localiser(localiser, run.points, run.record.split, run.store, coordinate_prior)
    files = folder.localiser_evaluation_files()
    paths = evaluation.save(files)
    truth = run.record.split.select(run.points, "val")
    found = with_slice_index(evaluation.found, run.store.index)
    paths["examples_png"] = plot_localiser_examples(run.store, found, truth, files["examples_png"])
    return evaluation, paths


def log_run_outputs(run_id: str, run: RunInputs, tracking_uri: str | None = None) -> dict[str, str]:
    """Log a trained run folder of any family to MLflow: final metrics, reports, plots, record,
    priors, weights and the PyTorch model (input example: a real validation batch). The model URI
    becomes a run tag and is returned; the serving model is logged apart (`log_serving_model`).
    """
    folder = run.folder
    model, config = load_checkpoint(run.weights)
    family = get_family(config.model_family)
    localiser = family.produces == "points"
    files = folder.localiser_evaluation_files() if localiser else folder.evaluation_files()
    tracking.log_metrics(run_id, json.loads(files["metrics"].read_text()), tracking_uri=tracking_uri)
    fit = json.loads(folder.fit_summary.read_text())
    tracking.log_metrics(run_id, {"best_epoch": fit["best_epoch"]}, tracking_uri=tracking_uri)
    pictures = [p for key, p in files.items() if key.endswith("_png")]
    tracking.log_artifacts(run_id, [p for p in files.values() if p not in pictures], "reports", tracking_uri)
    tracking.log_artifacts(run_id, [*pictures, folder.curves], "plots", tracking_uri)
    tracking.log_artifacts(run_id, [folder.record, folder.history, folder.priors], "run", tracking_uri)
    tracking.log_artifacts(run_id, [run.weights], "weights", tracking_uri)

    examples = run.record.split.select(run.points, "val").head(2)
    inputs, _ = model_inputs(family, family.dataset(examples, run.store, config, train=False), config, 2)
    with tracking.active_run(run_id, tracking_uri):
        named = {name: tensor.numpy() for name, tensor in zip(family.input_names, inputs, strict=True)}
        uris = {"model_uri": tracking.log_pytorch_model(model, named)}
    tracking.set_tags(run_id, uris, tracking_uri)
    _record_model_uris(folder, uris)
    return uris


def log_serving_model(
    run_id: str, run: RunInputs, localiser_checkpoint: str | Path | None = None, tracking_uri: str | None = None
) -> str:
    """Log the serving pyfunc of a classifier run (weights, priors and, when given, the localiser
    that places its test-time points); its URI becomes a run tag and is returned."""
    from spine_model.tracking.pyfunc import log_pyfunc_model  # imports mlflow: only when logging

    folder = run.folder
    examples = run.record.split.select(run.points, "val").head(2)
    with tracking.active_run(run_id, tracking_uri):
        uri = log_pyfunc_model(
            run.weights, folder.priors, serving_example(examples, run.record.data_dir),
            run.record.config.store_size, localiser_checkpoint,
        )  # fmt: skip
    tracking.set_tags(
        run_id, {"serving_model_uri": uri, "localiser": "yes" if localiser_checkpoint else "no"}, tracking_uri
    )
    _record_model_uris(folder, {"serving_model_uri": uri})
    return uri


def _record_model_uris(folder: RunFolder, uris: dict[str, str]) -> None:
    known = read_model_uris(folder.root)
    payload = json.dumps({**known, **uris}, indent=2).encode()
    atomic_write(folder.model_uris, lambda handle: handle.write(payload))


def serving_example(points: pd.DataFrame, data_dir: str) -> pd.DataFrame:
    """Training points as the serving model's input: image references with their points."""
    paths = [str(dicom_path(data_dir, "train", *key)) for key in points[SLICE_KEY].itertuples(index=False)]
    columns = [*SLICE_KEY, "series_description", "x", "y", "condition", "level"]
    return points[columns].assign(image_path=paths).reset_index(drop=True)


def read_model_uris(run_dir: str | Path) -> dict[str, str]:
    """The MLflow model URIs that log_run_outputs recorded for a run folder (empty before)."""
    path = RunFolder(run_dir).model_uris
    return json.loads(path.read_text()) if path.is_file() else {}


def read_metrics(run_dir: str | Path, localiser: bool = False) -> dict[str, float]:
    """The flat metrics an evaluation wrote (Evaluation.metrics, or LocaliserEvaluation.metrics)."""
    folder = RunFolder(run_dir)
    files = folder.localiser_evaluation_files() if localiser else folder.evaluation_files()
    return json.loads(files["metrics"].read_text())


def score_step(data_dir: str | Path, submission_path: str | Path, class_prior) -> dict[str, float] | None:
    """A submission's score beside the prior's, against `{data_dir}/test_solution.csv` if there is one."""
    solution_path = Path(data_dir) / SOLUTION_CSV
    if not solution_path.is_file():
        return None
    submission = pd.read_csv(submission_path)
    return score_against_prior(pd.read_csv(solution_path), submission, np.asarray(class_prior, dtype=np.float64))
