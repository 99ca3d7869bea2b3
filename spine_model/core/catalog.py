"""The catalog: every file of a dataset cache and of a run folder is named here, and only here, as
are the paths of the Kaggle layout's images and the names of registered models and their artifacts.

    {workdir}/cache/{data-name}-{hash}/                   DatasetCache: one per data folder
        train_long.parquet, train_labels.parquet          ingested coordinate rows and study labels
        volumes_{split}_{size}/                           a VolumeStore (see StoreFiles)
    {workdir}/runs/{run-name}/                            RunFolder: one per training run
        run.json, points.parquet, priors.json, checkpoints/, history.csv, evaluation/, ...

Real Kaggle data is often read-only, so the default workdir is ./spine_outputs in the current
working directory, never the data folder. Other modules ask these objects for paths; none spells a
file name of its own (the Kedro catalog idea).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from spine_model.core.config import TrainConfig
from spine_model.core.constants import images_dir
from spine_model.core.files import atomic_write
from spine_model.core.split import StudySplit

DEFAULT_WORKDIR = Path("spine_outputs")
DEMO_DATA = DEFAULT_WORKDIR / "demo_data"  # `make demo`'s synthetic data

# Registered models (MLflow's registry) and the artifact folders of a run.
MODEL_NAME = "spine-net"  # the serving model: classifier, priors and localiser
LOCALISER_NAME = "spine-localiser"
CHAMPION_ALIAS = "champion"
CHAMPION_URI = f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}"
LOCALISER_URI = f"models:/{LOCALISER_NAME}@{CHAMPION_ALIAS}"
WEIGHTS_ARTIFACTS = "weights"  # a run's checkpoint among its MLflow artifacts


class CheckpointFiles(NamedTuple):
    """A checkpoint folder's files: the lowest validation loss's weights, the latest epoch's, and the
    full training state a run resumes from."""

    best: Path
    last: Path
    state: Path


class CVFolder:
    """The files of one cross-validation: a run folder per fold (`fold-K/`), one localiser, the fold
    assignment, and what the folds give together (out-of-fold predictions, their calibration)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    name = property(lambda self: self.root.name)
    folds = property(lambda self: self.root / "folds.json")  # study -> fold, and its fingerprint
    localiser = property(lambda self: RunFolder(self.root / "localiser"))  # one for all folds
    pipeline_state = property(lambda self: self.root / "pipeline.json")  # what `spine cv --resume` reads
    guard_log = property(lambda self: self.root / "guard.log")
    out_of_fold = property(lambda self: self.root / "out_of_fold")

    def fold(self, k: int) -> RunFolder:
        return RunFolder(self.root / f"fold-{k}")

    def summary_files(self) -> dict[str, Path]:
        """What the summary of the folds writes, by role."""
        out = self.out_of_fold
        return {
            "summary": out / "summary.txt", "summary_markdown": out / "summary.md", "metrics": out / "metrics.json",
            "fold_table": out / "folds.csv", "predictions": out / "oof_submission.csv",
            "calibrated_predictions": out / "oof_submission_calibrated.csv", "calibration": out / "calibration.json",
            "reliability_png": out / "reliability_before.png",
            "reliability_calibrated_png": out / "reliability_after.png",
        }  # fmt: skip


def is_cv_folder(folder: str | Path) -> bool:
    return CVFolder(folder).folds.is_file()


def checkpoint_files(checkpoint_dir: str | Path) -> CheckpointFiles:
    folder = Path(checkpoint_dir)
    return CheckpointFiles(folder / "best.pt", folder / "last.pt", folder / "state.pt")


def images_root(data_dir: str | Path, split: str) -> Path:
    """`{data_dir}/train_images` or `test_images` of the Kaggle layout."""
    return Path(data_dir) / images_dir(split)


def series_folder(data_dir: str | Path, split: str, study_id: int, series_id: int) -> Path:
    """The folder of one series' DICOM files."""
    return images_root(data_dir, split) / str(study_id) / str(series_id)


def image_file(data_dir: str | Path, split: str, study_id: int, series_id: int, instance_number: int) -> Path:
    """One DICOM file of the Kaggle layout: `{split}_images/{study}/{series}/{instance}.dcm`."""
    return series_folder(data_dir, split, study_id, series_id) / f"{instance_number}.dcm"


class StoreFiles:
    """The files of one volume store: an index, a manifest, and per series an array and its record."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def index(self) -> Path:
        return self.root / "index.parquet"

    @property
    def manifest(self) -> Path:
        return self.root / "store.json"

    def volume(self, study_id: int, series_id: int) -> Path:
        return self.root / str(study_id) / f"{series_id}.npy"

    def series_record(self, study_id: int, series_id: int) -> Path:
        return self.root / str(study_id) / f"{series_id}.json"


class DatasetCache:
    """What the pipeline derives from one data folder: tables and volume stores."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def long_table(self) -> Path:
        return self.root / "train_long.parquet"

    @property
    def labels(self) -> Path:
        return self.root / "train_labels.parquet"

    def volume_store(self, split: str, size: int) -> Path:
        """One store per split and in-plane size."""
        return self.root / f"volumes_{split}_{size}"


class RunFolder:
    """The files of one training run."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    name = property(lambda self: self.root.name)
    record = property(lambda self: self.root / "run.json")
    points = property(lambda self: self.root / "points.parquet")  # training points, unreadable images dropped
    priors = property(lambda self: self.root / "priors.json")
    checkpoints = property(lambda self: self.root / "checkpoints")
    best_checkpoint = property(lambda self: checkpoint_files(self.checkpoints).best)
    last_checkpoint = property(lambda self: checkpoint_files(self.checkpoints).last)
    training_state = property(lambda self: checkpoint_files(self.checkpoints).state)

    def weights(self, restore_best: bool = True) -> Path:
        """The checkpoint a run is evaluated, logged and served with: the lowest-validation-loss
        epoch's when `restore_best` (TrainConfig.restore_best), else the last epoch's."""
        return self.best_checkpoint if restore_best else self.last_checkpoint

    history = property(lambda self: self.root / "history.csv")
    curves = property(lambda self: self.root / "training_curves.png")
    fit_summary = property(lambda self: self.root / "fit.json")
    epochs_log = property(lambda self: self.root / "epochs.jsonl")  # one line per epoch, for whoever waits
    distributed_log = property(lambda self: self.root / "distributed.log")  # torchrun's processes' output
    pipeline_state = property(lambda self: self.root / "pipeline.json")  # what `spine train --resume` goes on with
    pending_metrics = property(lambda self: self.root / "pending_metrics.jsonl")  # not yet taken by MLflow
    guard_log = property(lambda self: self.root / "guard.log")  # what the run's watchman did (flows/guard.py)
    stop_request = property(lambda self: self.root / "STOP")  # training ends after the epoch it is in
    model_uris = property(lambda self: self.root / "mlflow_models.json")
    evaluation = property(lambda self: self.root / "evaluation")
    localiser = property(lambda self: RunFolder(self.root / "localiser"))  # the stage-1 run of this run

    def _summary_files(self) -> dict[str, Path]:
        """What every evaluation writes: its summary (text and Markdown) and flat metrics."""
        out = self.evaluation
        return {"summary": out / "summary.txt", "summary_markdown": out / "summary.md", "metrics": out / "metrics.json"}

    def evaluation_files(self) -> dict[str, Path]:
        """Everything a classifier's evaluation writes, by role."""
        out = self.evaluation
        return {
            **self._summary_files(),
            "reports_json": out / "classification_reports.json",
            "reports_text": out / "classification_reports.txt",
            "submission": out / "val_submission.csv",
            "confusion_png": out / "confusion_matrix.png",
            "reliability_png": out / "reliability.png",
            "calibration": out / "calibration.json",  # temperatures fitted on the validation studies
            "calibrated_submission": out / "val_submission_calibrated.csv",
        }

    def localiser_evaluation_files(self) -> dict[str, Path]:
        """Everything a localiser's evaluation writes, by role."""
        out = self.evaluation
        return {
            **self._summary_files(),
            "points": out / "val_points.csv",
            "examples_png": out / "localiser_examples.png",
        }


class Workspace:
    """Dataset caches and run folders under one working folder."""

    def __init__(self, root: str | Path = DEFAULT_WORKDIR) -> None:
        self.root = Path(root).resolve()

    def dataset(self, data_dir: str | Path) -> DatasetCache:
        """The cache of one data folder: its name plus a hash of its absolute path."""
        data_dir = Path(data_dir).resolve()
        digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:8]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", data_dir.name) or "data"
        return DatasetCache(self.root / "cache" / f"{name}-{digest}")

    def run(self, run_name: str) -> RunFolder:
        return RunFolder(self.root / "runs" / run_name)

    def cross_validation(self, run_name: str) -> CVFolder:
        return CVFolder(self.root / "runs" / run_name)


@dataclass
class RunRecord:
    """A run folder's inputs, so that any process can train or evaluate it again.

    The model family is `config.model_family`; `store_root` is the volume store it reads.
    """

    data_dir: str
    labels_path: str
    store_root: str
    config: TrainConfig
    split: StudySplit

    def save(self, run_dir: str | Path) -> Path:
        payload = {
            "data_dir": self.data_dir,
            "labels_path": self.labels_path,
            "store_root": self.store_root,
            "model_family": self.config.model_family,
            "config": self.config.model_dump(mode="json"),
            **self.split.to_dict(),
        }
        path = RunFolder(run_dir).record
        atomic_write(path, lambda handle: handle.write(json.dumps(payload, indent=2).encode()))
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> RunRecord:
        path = RunFolder(run_dir).record
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {run_dir} is not a run folder written by `spine train`")
        data = json.loads(path.read_text())
        return cls(
            data["data_dir"], data["labels_path"], data["store_root"], TrainConfig(**data["config"]),
            StudySplit.from_dict(data),
        )  # fmt: skip


def resume_command(run_dir: str | Path) -> str:
    """The command that goes on with a stopped run: `spine cv --resume` for a cross-validation (or
    a fold of one), `spine train --resume` otherwise."""
    folder = resume_folder(run_dir)
    return f"spine {'cv' if is_cv_folder(folder) else 'train'} --resume {folder}"


def resume_folder(run_dir: str | Path) -> Path:
    """The run folder `spine train --resume` takes for a run folder: itself, or for a localiser's
    folder inside a pipeline run (which has no pipeline.json of its own), the pipeline's."""
    folder = Path(run_dir).resolve()
    if not RunFolder(folder).pipeline_state.is_file() and RunFolder(folder.parent).pipeline_state.is_file():
        return folder.parent  # a localiser's folder in a pipeline run, or a fold of a cross-validation
    return folder
