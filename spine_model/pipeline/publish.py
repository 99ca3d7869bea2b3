"""Publishing steps: a trained run folder logged to MLflow (metrics, reports, plots, weights, the
PyTorch model and the serving model), and a submission scored where the answers are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from spine_model import tracking
from spine_model.core.catalog import WEIGHTS_ARTIFACTS, CVFolder, RunFolder, image_file
from spine_model.core.constants import SOLUTION_CSV, study_ids_of_rows
from spine_model.core.files import atomic_write
from spine_model.core.split import Folds, StudySplit
from spine_model.data.grades import read_posteriors
from spine_model.data.ingest import data_fingerprint
from spine_model.data.volumes import SLICE_KEY
from spine_model.evaluation import calibration
from spine_model.evaluation.metric import score_against_prior
from spine_model.evaluation.plots import plot_reliability
from spine_model.families import get_family
from spine_model.families.base import model_inputs
from spine_model.pipeline.run import RunInputs, role_of
from spine_model.training.checkpoints import load_checkpoint


def log_run_outputs(run_id: str, run: RunInputs, tracking_uri: str | None = None) -> dict[str, str]:
    """Log a trained run folder of any family to MLflow: final metrics, reports, plots, record,
    priors, weights and the PyTorch model (input example: a real validation batch). The model URI
    becomes a run tag and is returned; the serving model is logged apart (`log_serving_model`).
    """
    folder = run.folder
    model, config = load_checkpoint(run.weights)
    family = get_family(config.model_family)
    files = role_of(config).evaluation_files(folder)
    tracking.log_metrics(run_id, json.loads(files["metrics"].read_text()), tracking_uri=tracking_uri)
    fit = json.loads(folder.fit_summary.read_text())
    tracking.log_metrics(run_id, {"best_epoch": fit["best_epoch"]}, tracking_uri=tracking_uri)
    pictures = [p for key, p in files.items() if key.endswith("_png")]
    tracking.log_artifacts(run_id, [p for p in files.values() if p not in pictures], "reports", tracking_uri)
    tracking.log_artifacts(run_id, [*pictures, folder.curves], "plots", tracking_uri)
    tracking.log_artifacts(run_id, [folder.record, folder.history, folder.priors], "run", tracking_uri)
    tracking.log_artifacts(run_id, [run.weights], WEIGHTS_ARTIFACTS, tracking_uri)

    examples = run.record.split.select(run.points, "val").head(2)
    inputs, _ = model_inputs(family, family.dataset(examples, run.store, config, train=False), config, 2)
    with tracking.active_run(run_id, tracking_uri):
        named = {name: tensor.numpy() for name, tensor in zip(family.input_names, inputs, strict=True)}
        uris = {"model_uri": tracking.log_pytorch_model(model, named)}
    tracking.set_tags(run_id, uris, tracking_uri)
    _record_model_uris(folder, uris)
    return uris


def log_serving_model(
    run_id: str,
    run: RunInputs,
    localiser_checkpoint: str | Path | None = None,
    tracking_uri: str | None = None,
    ensemble: list[Path] | None = None,
    temperatures: dict[str, float] | None = None,
    record_in: str | Path | None = None,
) -> str:
    """Log the serving pyfunc of a classifier run (weights, priors, its calibration and, when given,
    the localiser that places its test-time points); its URI becomes a run tag and is returned.

    By default the run's own weights and the temperatures its evaluation fitted on its validation
    studies; `ensemble` (checkpoints, e.g. the folds of a cross-validation) and `temperatures`
    (fitted out of fold) say otherwise. `record_in`: the folder that notes the URI (the run's).
    """
    from spine_model.serving.pyfunc import log_pyfunc_model  # imports mlflow: only when logging

    folder = run.folder
    if temperatures is None:
        calibration = folder.evaluation_files()["calibration"]
        temperatures = json.loads(calibration.read_text())["temperatures"] if calibration.is_file() else {}
    examples = run.record.split.select(run.points, "val").head(2)
    with tracking.active_run(run_id, tracking_uri):
        uri = log_pyfunc_model(
            ensemble or run.weights, folder.priors, serving_example(examples, run.record.data_dir),
            run.record.config.store_size, localiser_checkpoint, temperatures=temperatures,
        )  # fmt: skip
    tags = {"serving_model_uri": uri, "localiser": "yes" if localiser_checkpoint else "no"}
    tracking.set_tags(run_id, {**tags, "ensemble_members": len(ensemble or [run.weights])}, tracking_uri)
    _record_model_uris(RunFolder(record_in) if record_in else folder, {"serving_model_uri": uri})
    return uri


def _record_model_uris(folder: RunFolder, uris: dict[str, str]) -> None:
    known = read_model_uris(folder.root)
    payload = json.dumps({**known, **uris}, indent=2).encode()
    atomic_write(folder.model_uris, lambda handle: handle.write(payload))


def serving_example(points: pd.DataFrame, data_dir: str) -> pd.DataFrame:
    """Training points as the serving model's input: image references with their points."""
    paths = [str(image_file(data_dir, "train", *key)) for key in points[SLICE_KEY].itertuples(index=False)]
    columns = [*SLICE_KEY, "series_description", "x", "y", "condition", "level"]
    return points[columns].assign(image_path=paths).reset_index(drop=True)


def read_model_uris(run_dir: str | Path) -> dict[str, str]:
    """The MLflow model URIs that log_run_outputs recorded for a run folder (empty before)."""
    path = RunFolder(run_dir).model_uris
    return json.loads(path.read_text()) if path.is_file() else {}


def score_step(data_dir: str | Path, submission_path: str | Path, class_prior) -> dict[str, float] | None:
    """A submission's score beside the prior's, against `{data_dir}/test_solution.csv` if there is one
    (synthetic data): with the limit and the share of the attainable gain where the data knows its true
    posteriors, and the calibration per condition (ECE, and a reliability diagram written beside the
    submission, `<name>_reliability.png`)."""
    solution_path = Path(data_dir) / SOLUTION_CSV
    if not solution_path.is_file():
        return None
    solution, submission = pd.read_csv(solution_path), pd.read_csv(submission_path)
    posteriors = read_posteriors(data_dir, study_ids_of_rows(solution["row_id"]))
    scores = score_against_prior(solution, submission, np.asarray(class_prior, dtype=np.float64), posteriors)
    tables = calibration.by_condition(solution, submission)
    scores.update({f"ece_{condition}": error for condition, error in calibration.condition_errors(tables).items()})
    picture = Path(submission_path).with_name(f"{Path(submission_path).stem}_reliability.png")
    plot_reliability(tables, picture, title=f"{Path(submission_path).name} against {SOLUTION_CSV}")
    return scores


def log_lineage(
    run_id: str,
    data_dir: str | Path,
    table: pd.DataFrame,
    assignment: pd.DataFrame,
    assignment_digest: str,
    tracking_uri: str | None = None,
) -> None:
    """The run's data as MLflow dataset inputs: the ingested table (context `training`, digest: the data
    folder's fingerprint) and the studies' split or folds (context `validation`, digest: its
    fingerprint), so that MLflow shows which data and which evaluation studies stand behind a model."""
    source = str(Path(data_dir).resolve())
    name = Path(data_dir).resolve().name
    tracking.log_dataset(run_id, table, name, source, data_fingerprint(data_dir), "training", tracking_uri)
    tracking.log_dataset(run_id, assignment, f"{name}-studies", source, assignment_digest, "validation", tracking_uri)


def study_assignment(split: StudySplit | None = None, folds: Folds | None = None) -> tuple[pd.DataFrame, str]:
    """(study_id and its side or fold, the fingerprint) of a split or of folds, for `log_lineage`."""
    if folds is not None:
        frame = pd.DataFrame(sorted(folds.fold_of.items()), columns=["study_id", "fold"])
        return frame, folds.fingerprint()
    rows = [(s, "train") for s in split.train_study_ids] + [(s, "val") for s in split.val_study_ids]
    return pd.DataFrame(rows, columns=["study_id", "side"]), split.val_fingerprint()


def log_cv_outputs(run_id: str, cv_dir: str | Path, metrics: dict[str, float], tracking_uri: str | None = None) -> None:
    """A cross-validation's parent run: the out-of-fold metrics and its files (predictions before and
    after calibration, the fold table, the reliability diagrams, the summary)."""
    files = CVFolder(cv_dir).summary_files()
    tracking.log_metrics(run_id, metrics, tracking_uri=tracking_uri)
    pictures = [path for key, path in files.items() if key.endswith("_png")]
    tracking.log_artifacts(run_id, [p for p in files.values() if p not in pictures], "out_of_fold", tracking_uri)
    tracking.log_artifacts(run_id, pictures, "plots", tracking_uri)
    tracking.log_artifacts(run_id, [CVFolder(cv_dir).folds], "run", tracking_uri)
