"""The pipeline's steps as plain functions, files in and files out.

Each step is what one Prefect task runs (tasks/ only adds retries, caching and artifacts), and
what a notebook can call directly. Steps exchange paths, never in-memory objects, so that a step
can run in another process or on another machine that sees the same folders.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spine_model import tracking
from spine_model.compare import VAL_FINGERPRINT
from spine_model.constants import SOLUTION_CSV
from spine_model.dataset import SpineDataset
from spine_model.evaluate import Evaluation, evaluate_model, label_counts
from spine_model.image_store import PngImageStore
from spine_model.inference import CoordinatePrior, index_slices, list_series_files, save_priors
from spine_model.ingest import build_long_table, write_table
from spine_model.metrics import class_prior, score_against_prior
from spine_model.plots import plot_confusion_matrix, plot_training_curves
from spine_model.preprocess import dicom_path, preprocess_instances
from spine_model.split import StudySplit, split_by_study
from spine_model.train import EpochStats, FitResult, load_checkpoint, train_spinenet
from spine_model.workspace import RunRecord

log = logging.getLogger(__name__)

INSTANCE_COLUMNS = ["study_id", "series_id", "instance_number"]
MODEL_URIS_FILE = "mlflow_models.json"
PRIORS_FILE = "priors.json"


@dataclass
class IngestOutputs:
    table_path: str
    labels_path: str
    rows: int
    studies: int
    skipped: dict[str, int] = field(default_factory=dict)
    summary: str = ""


def ingest_step(data_dir: str | Path, out_dir: str | Path) -> IngestOutputs:
    """Kaggle CSVs -> `{out_dir}/train_long.parquet` and `{out_dir}/train_labels.parquet`."""
    result = build_long_table(data_dir)
    out_dir = Path(out_dir)
    table_path = write_table(result.table, out_dir / "train_long.parquet")
    labels_path = write_table(result.labels, out_dir / "train_labels.parquet")
    return IngestOutputs(
        str(table_path), str(labels_path), len(result.table), int(result.table["study_id"].nunique()),
        dict(result.skipped), result.describe(),
    )  # fmt: skip


def split_step(table_path: str | Path, val_fraction: float, seed: int, out_path: str | Path) -> StudySplit:
    """Study-grouped train/validation split of the long table, written as JSON."""
    split = split_by_study(pd.read_parquet(table_path, columns=["study_id"]), val_fraction, seed)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(split.to_dict(), indent=2))
    return split


@dataclass
class PreprocessOutputs:
    store_root: str
    table_path: str  # the long table without rows whose image could not be read
    written: int
    already_done: int
    failed: dict[str, str] = field(default_factory=dict)  # "study/series/instance" -> reason
    dropped_rows: int = 0


def preprocess_step(
    data_dir: str | Path,
    table_path: str | Path,
    store_root: str | Path,
    image_size: int,
    out_table_path: str | Path,
    workers: int | None = None,
    progress: bool = True,
) -> PreprocessOutputs:
    """Images of the table's instances into the PNG store; rows of unreadable images dropped and counted."""
    table = pd.read_parquet(table_path)
    rows_before = len(table)
    keys = table[INSTANCE_COLUMNS].itertuples(index=False, name=None)
    report = preprocess_instances(keys, data_dir, store_root, image_size, workers=workers, progress=progress)
    if report.failed:
        failed = pd.DataFrame(list(report.failed), columns=INSTANCE_COLUMNS).assign(_failed=True)
        flagged = table.merge(failed, on=INSTANCE_COLUMNS, how="left")
        readable = flagged["_failed"].isna().to_numpy()
        log.warning("dropping %d row(s) whose image could not be read", int((~readable).sum()))
        table = table[readable]
    write_table(table.reset_index(drop=True), out_table_path)
    return PreprocessOutputs(
        str(store_root), str(out_table_path), report.written, report.already_done,
        {"/".join(map(str, key)): reason for key, reason in report.failed.items()},
        rows_before - len(table),
    )  # fmt: skip


def index_step(data_dir: str | Path, table_path: str | Path, out_path: str | Path, workers: int | None = None) -> str:
    """Slice order (ImagePositionPatient) of every file of the table's series, as parquet."""
    series = pd.read_parquet(table_path, columns=["study_id", "series_id", "series_description"])
    files = list_series_files(data_dir, "train", series)
    write_table(index_slices(files, workers, progress=sys.stderr.isatty()), out_path)
    return str(out_path)


def priors_step(run_dir: str | Path) -> Path:
    """Coordinate prior and class prior of the run's training studies -> run_dir/priors.json."""
    record = RunRecord.load(run_dir)
    table = pd.read_parquet(record.table_path)
    labels = pd.read_parquet(record.labels_path)
    train_rows = table[table["study_id"].isin(record.split.train_study_ids)]
    coordinate_prior = CoordinatePrior.fit(train_rows, pd.read_parquet(record.slices_path))
    prior = class_prior(labels[labels["study_id"].isin(record.split.train_study_ids)])
    return save_priors(Path(run_dir) / PRIORS_FILE, coordinate_prior, prior)


def data_facts(ingest: IngestOutputs, preprocess: PreprocessOutputs, split: StudySplit) -> dict[str, int | str]:
    """Counts worth logging beside the config: studies and rows per split, labels, skips."""
    table = pd.read_parquet(preprocess.table_path, columns=["study_id"])
    labels = pd.read_parquet(ingest.labels_path)
    facts: dict[str, int | str] = {
        "data_train_studies": len(split.train_study_ids),
        "data_val_studies": len(split.val_study_ids),
        VAL_FINGERPRINT: split.val_fingerprint(),
        "data_train_rows": int(table["study_id"].isin(split.train_study_ids).sum()),
        "data_val_rows": int(table["study_id"].isin(split.val_study_ids).sum()),
        "data_rows_skipped_at_ingest": sum(ingest.skipped.values()),
        "data_rows_dropped_unreadable": preprocess.dropped_rows,
        "data_images_unreadable": len(preprocess.failed),
    }
    for reason, count in ingest.skipped.items():
        facts[f"data_skipped_{reason.replace(' ', '_')}"] = count
    for name, count in label_counts(labels[labels["study_id"].isin(split.train_study_ids)]).items():
        facts[f"data_train_labels_{name.lower().replace('/', '_')}"] = count
    return facts


def train_step(
    run_dir: str | Path,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train as the run folder's run.json says; writes checkpoints/, history.csv, the curves PNG."""
    run_dir = Path(run_dir)
    record = RunRecord.load(run_dir)
    _, result = train_spinenet(
        pd.read_parquet(record.table_path), record.split, PngImageStore(record.store_root), record.config,
        run_dir / "checkpoints", on_epoch_end, progress,
    )  # fmt: skip
    history = result.history_frame()
    history.to_csv(run_dir / "history.csv", index=False)
    plot_training_curves(history, run_dir / "training_curves.png")
    (run_dir / "fit.json").write_text(
        json.dumps({"best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss})
    )
    return result


def evaluate_step(
    run_dir: str | Path, checkpoint: str = "best.pt", progress: bool = True
) -> tuple[Evaluation, dict[str, Path]]:
    """Evaluate a run folder's checkpoint on its validation split; writes evaluation/ and returns the paths."""
    run_dir = Path(run_dir)
    record = RunRecord.load(run_dir)
    model, _ = load_checkpoint(run_dir / "checkpoints" / checkpoint)
    config = record.config
    evaluation = evaluate_model(
        model, pd.read_parquet(record.table_path), pd.read_parquet(record.labels_path), record.split,
        PngImageStore(record.store_root), config, progress,
    )  # fmt: skip
    out_dir = run_dir / "evaluation"
    paths = evaluation.save(out_dir)
    paths["confusion_png"] = plot_confusion_matrix(evaluation.confusion, out_dir / "confusion_matrix.png")
    return evaluation, paths


def log_run_outputs(run_id: str, run_dir: str | Path, tracking_uri: str | None = None) -> dict[str, str]:
    """Log a finished run folder to MLflow: final metrics, reports, plots, split, config, weights,
    the PyTorch model and the serving (pyfunc) model; the URIs become run tags and are returned.

    The PyTorch model's input example is two real validation rows.
    """
    run_dir = Path(run_dir)
    record = RunRecord.load(run_dir)
    tracking.log_metrics(run_id, read_metrics(run_dir), tracking_uri=tracking_uri)
    fit = json.loads((run_dir / "fit.json").read_text())
    tracking.log_metrics(run_id, {"best_epoch": fit["best_epoch"]}, tracking_uri=tracking_uri)
    evaluation_dir = run_dir / "evaluation"
    tracking.log_artifacts(
        run_id, sorted(p for p in evaluation_dir.iterdir() if p.suffix != ".png"), "reports", tracking_uri
    )
    tracking.log_artifacts(
        run_id, [evaluation_dir / "confusion_matrix.png", run_dir / "training_curves.png"], "plots", tracking_uri
    )
    tracking.log_artifacts(
        run_id,
        [run_dir / RunRecord.FILE, run_dir / "split.json", run_dir / "history.csv", run_dir / PRIORS_FILE],
        "run",
        tracking_uri,
    )
    tracking.log_artifacts(run_id, [run_dir / "checkpoints" / "best.pt"], "weights", tracking_uri)

    model, config = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    table = pd.read_parquet(record.table_path)
    val_rows = table[table["study_id"].isin(record.split.val_study_ids)].head(2)
    dataset = SpineDataset(val_rows, PngImageStore(record.store_root), config.image_size)
    images, coords = zip(*[(image.numpy(), xy.numpy()) for image, xy, _ in dataset], strict=True)
    from spine_model.tracking.pyfunc import log_pyfunc_model  # imports mlflow: only when logging

    with tracking.active_run(run_id, tracking_uri):
        uris = {
            "model_uri": tracking.log_pytorch_model(model, np.stack(images), np.stack(coords)),
            "serving_model_uri": log_pyfunc_model(
                run_dir / "checkpoints" / "best.pt", run_dir / PRIORS_FILE, _serving_example(val_rows, record.data_dir)
            ),
        }
    tracking.set_tags(run_id, uris, tracking_uri)
    (run_dir / MODEL_URIS_FILE).write_text(json.dumps(uris, indent=2))
    return uris


def _serving_example(rows: pd.DataFrame, data_dir: str) -> pd.DataFrame:
    """Long-table rows as the serving model's input: image references with their points."""
    paths = [str(dicom_path(data_dir, "train", key)) for key in rows[INSTANCE_COLUMNS].itertuples(index=False)]
    return rows[[*INSTANCE_COLUMNS, "series_description", "x", "y"]].assign(image_path=paths).reset_index(drop=True)


def read_model_uris(run_dir: str | Path) -> dict[str, str]:
    """The MLflow model URIs that log_run_outputs recorded for a run folder (empty before)."""
    path = Path(run_dir) / MODEL_URIS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def read_metrics(run_dir: str | Path) -> dict[str, float]:
    """The flat metrics an evaluation wrote (see Evaluation.metrics)."""
    return json.loads((Path(run_dir) / "evaluation" / "metrics.json").read_text())


def score_step(data_dir: str | Path, submission_path: str | Path, class_prior) -> dict[str, float] | None:
    """A submission's score beside the prior's, against `{data_dir}/test_solution.csv` if there is one."""
    solution_path = Path(data_dir) / SOLUTION_CSV
    if not solution_path.is_file():
        return None
    submission = pd.read_csv(submission_path)
    return score_against_prior(pd.read_csv(solution_path), submission, np.asarray(class_prior, dtype=np.float64))
