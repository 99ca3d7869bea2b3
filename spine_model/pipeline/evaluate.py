"""Evaluation steps: a run folder's checkpoint scored on its validation studies, its reports and
pictures written to its evaluation/ folder."""

from __future__ import annotations

import json
from pathlib import Path

from spine_model.core.catalog import RunFolder, RunRecord
from spine_model.core.files import atomic_write_csv, atomic_write_text
from spine_model.data.grades import read_posteriors
from spine_model.evaluation.localiser import LocaliserEvaluation, evaluate_localiser, with_slice_index
from spine_model.evaluation.metric import solution_from_labels
from spine_model.evaluation.plots import plot_confusion_matrix, plot_localiser_examples, plot_reliability
from spine_model.evaluation.reports import Evaluation, evaluate_model
from spine_model.inference.localiser import Localiser
from spine_model.inference.prior import load_priors
from spine_model.pipeline.run import RunInputs, role_of
from spine_model.training.checkpoints import load_checkpoint


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
    _, class_prior = load_priors(folder.priors)  # the train split's, fitted when the run was prepared
    posteriors = read_posteriors(run.record.data_dir, run.record.split.val_study_ids)  # synthetic data only
    evaluation = evaluate_model(
        model, run.points, run.labels, run.record.split, run.store, config, class_prior, progress, posteriors
    )
    solution = solution_from_labels(run.record.split.select(run.labels, "val"))
    evaluation = evaluation.calibrated(solution)  # the served model applies these temperatures
    files = folder.evaluation_files()
    paths = evaluation.save(files)
    paths["confusion_png"] = plot_confusion_matrix(evaluation.confusion, files["confusion_png"])
    paths["reliability_png"] = plot_reliability(evaluation.reliability, files["reliability_png"])
    payload = json.dumps({"temperatures": evaluation.temperatures, "fitted_on": "validation studies"}, indent=2)
    paths["calibration"] = atomic_write_text(files["calibration"], payload)
    paths["calibrated_submission"] = atomic_write_csv(files["calibrated_submission"], evaluation.calibrated_submission)
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


def read_metrics(run_dir: str | Path) -> dict[str, float]:
    """The flat metrics the run folder's evaluation wrote (a classifier's or a localiser's)."""
    files = role_of(RunRecord.load(run_dir).config).evaluation_files(RunFolder(run_dir))
    return json.loads(files["metrics"].read_text())
