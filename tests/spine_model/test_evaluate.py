import numpy as np
import pandas as pd
import pytest

from spine_model.core.catalog import RunFolder
from spine_model.core.constants import CONDITIONS, LABEL_COLUMNS
from spine_model.evaluation import calibration
from spine_model.evaluation.metric import (
    class_prior,
    competition_score,
    solution_from_labels,
    submission_from_probabilities,
)
from spine_model.evaluation.reports import classification_reports, evaluate_predictions, point_loss_and_accuracy


def test_reports_cover_exactly_each_cells_labelled_entries():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, (40, 25))
    targets[:, 20:25] = -1  # right subarticular entirely missing
    targets[:10, 0] = -1
    predicted = rng.integers(0, 3, (40, 25))
    reports = classification_reports(targets, predicted)
    assert len(reports) == 1 + 5 + 25
    assert reports["overall"]["macro avg"]["support"] == (targets != -1).sum()
    assert reports["spinal_canal_stenosis"]["macro avg"]["support"] == 40 * 5 - 10
    assert reports["spinal_canal_stenosis_l1_l2"]["macro avg"]["support"] == 30
    assert reports["right_subarticular_stenosis"] is None  # not counted as Normal/Mild
    # per condition x level: that column, not three flattened entries
    column = LABEL_COLUMNS.index("left_neural_foraminal_narrowing_l4_l5")
    expected_recall = (predicted[:, column][targets[:, column] == 2] == 2).mean()
    assert reports["left_neural_foraminal_narrowing_l4_l5"]["Severe"]["recall"] == pytest.approx(expected_recall)


def _labels(n_studies=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = pd.DataFrame(rng.choice(3, (n_studies, 25), p=[0.7, 0.2, 0.1]), columns=list(LABEL_COLUMNS))
    labels.insert(0, "study_id", np.arange(100, 100 + n_studies))
    return labels


def _cells(labels, confidence=4.0):
    """Study probabilities that put `confidence` logits on the true class (uniform where missing)."""
    targets = labels[list(LABEL_COLUMNS)].to_numpy()
    logits = np.where(targets[..., None] >= 0, np.eye(3)[targets.clip(0)] * confidence, 0.0)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return {int(s): p.reshape(5, 5, 3) for s, p in zip(labels["study_id"], probabilities, strict=True)}


def test_confident_correct_cells_beat_the_prior():
    labels = _labels()
    evaluation = evaluate_predictions(_cells(labels), labels, class_prior(labels), loss=0.1, n_points=30)
    assert evaluation.accuracy == 1.0
    assert evaluation.score < evaluation.prior_score
    assert evaluation.n_studies == 6 and len(evaluation.submission) == 6 * 25
    assert evaluation.confusion.sum() == 6 * 25
    text = evaluation.describe()
    assert "beats the prior" in text and "spinal_canal_stenosis" in text and "30 points" in text
    metrics = evaluation.metrics()
    assert metrics["val_competition_score"] == evaluation.score and metrics["final_val_loss"] == 0.1
    assert set(metrics) >= {"val_prior_score", "val_severe_f1", "val_log_loss_spinal_canal_stenosis"}


def test_the_prior_scores_as_the_prior_and_missing_labels_count_nowhere():
    labels = _labels()
    labels.loc[0, "spinal_canal_stenosis_l1_l2"] = -1
    prior = class_prior(labels)
    cells = {int(s): np.repeat(prior[:, None, :], 5, axis=1) for s in labels["study_id"]}
    evaluation = evaluate_predictions(cells, labels, prior)
    # The metric written out by hand: per group, the sample-weighted log loss of the labelled cells;
    # then any_severe_spinal per study; the mean of the four.
    weights = np.array([1.0, 2.0, 4.0])
    groups = {"spinal": [0], "foraminal": [1, 2], "subarticular": [3, 4]}
    table = labels[list(LABEL_COLUMNS)].to_numpy().reshape(-1, 5, 5)  # study, condition, level
    losses = []
    for conditions in groups.values():
        y = table[:, conditions].reshape(len(table), -1)
        c = np.repeat(conditions, 5)[None].repeat(len(table), 0)
        labelled = y >= 0
        loss = -np.log(prior[c[labelled], y[labelled]])
        losses.append(np.average(loss, weights=weights[y[labelled]]))
    spinal = table[:, 0]
    severe = np.array([(row[row >= 0] == 2).any() for row in spinal])
    weight = np.array([weights[row[row >= 0]].max() for row in spinal])
    p = prior[0, 2]
    losses.append(np.average(-np.where(severe, np.log(p), np.log(1 - p)), weights=weight))
    assert evaluation.score == pytest.approx(np.mean(losses))
    assert evaluation.prior_score == pytest.approx(np.mean(losses))
    assert evaluation.confusion.sum() == 6 * 25 - 1
    with pytest.raises(ValueError, match="no labels"):
        evaluate_predictions({999: cells[100]}, labels, prior)


def test_point_loss_weights_classes_and_ignores_missing():
    outputs = np.zeros((4, 3))
    loss, accuracy = point_loss_and_accuracy(outputs, np.array([0, 2, -1, 1]))
    assert loss == pytest.approx(np.log(3))
    outputs[1, 2] = 10.0  # the severe point predicted confidently right
    loss, accuracy = point_loss_and_accuracy(outputs, np.array([0, 2, -1, 1]))
    assert loss == pytest.approx((np.log(3) + 4 * np.log(1 + 2 * np.exp(-10)) + 2 * np.log(3)) / 7)
    with pytest.raises(ValueError, match="no labelled targets"):
        point_loss_and_accuracy(outputs, np.full(4, -1))


def test_saved_reports(tmp_path):
    labels = _labels()
    evaluation = evaluate_predictions(_cells(labels, 0.0), labels, class_prior(labels))
    paths = evaluation.save(RunFolder(tmp_path).evaluation_files())
    assert all(p.is_file() for p in paths.values())
    assert "== spinal_canal_stenosis_l1_l2 ==" in paths["reports_text"].read_text()


def _half_then_stop(self, target, *args, **kwargs):
    """A writer stopped halfway (Ctrl-C, a full disk): half a file, then the exception."""
    if hasattr(target, "write"):
        target.write(b"half a fi")
    else:
        with open(target, "wb") as handle:
            handle.write(b"half a fi")
    raise KeyboardInterrupt


def test_an_interrupted_save_keeps_the_files_written_before(tmp_path, monkeypatch):
    """Reports, submissions and figures are written whole or not at all: a reader never meets half a file."""
    from matplotlib.figure import Figure

    from spine_model.evaluation.plots import plot_training_curves

    labels = _labels()
    evaluation = evaluate_predictions(_cells(labels, 0.0), labels, class_prior(labels))
    paths = evaluation.save(RunFolder(tmp_path).evaluation_files())
    before = {key: path.read_bytes() for key, path in paths.items()}
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "val_loss": [1.1, 0.6],
                            "train_accuracy": [0.5, 0.6], "val_accuracy": [0.5, 0.6], "lr": [1e-3, 1e-3]})  # fmt: skip
    curves = plot_training_curves(history, tmp_path / "curves.png")
    png = curves.read_bytes()
    monkeypatch.setattr(pd.DataFrame, "to_csv", _half_then_stop)
    with pytest.raises(KeyboardInterrupt):
        evaluation.save(RunFolder(tmp_path).evaluation_files())
    monkeypatch.setattr(Figure, "savefig", _half_then_stop)
    with pytest.raises(KeyboardInterrupt):
        plot_training_curves(history, curves)
    assert {key: path.read_bytes() for key, path in paths.items()} == before
    assert curves.read_bytes() == png
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left over


def test_the_limit_and_the_share_of_the_attainable_gain_stand_beside_the_score():
    labels = _labels(20, seed=3)
    prior = class_prior(labels)
    truth = {s: 0.6 * c + 0.4 / 3 for s, c in _cells(labels, 2.0).items()}  # what the data knows
    model = {s: 0.5 * c + 0.5 * truth[s] for s, c in _cells(labels, 0.5).items()}  # halfway there
    posteriors = submission_from_probabilities(truth)
    evaluation = evaluate_predictions(model, labels, prior, posteriors=posteriors)
    solution = solution_from_labels(labels)
    assert evaluation.limit == pytest.approx(competition_score(solution, posteriors))
    assert evaluation.limit < evaluation.score < evaluation.prior_score
    share = (evaluation.prior_score - evaluation.score) / (evaluation.prior_score - evaluation.limit)
    assert evaluation.share_of_attainable_gain == pytest.approx(share) and 0 < share < 1
    metrics = evaluation.metrics()
    assert metrics["val_limit"] == evaluation.limit and metrics["val_share_of_attainable_gain"] == pytest.approx(share)
    assert "limit" in evaluation.describe() and f"{100 * share:.1f} %" in evaluation.describe()
    assert "limit (true posteriors)" in evaluation.markdown()
    # Real data knows no posteriors: nothing of the limit is shown or logged.
    plain = evaluate_predictions(model, labels, prior)
    assert plain.limit is None and "val_limit" not in plain.metrics() and "limit" not in plain.describe()


def test_an_overconfident_model_shows_a_larger_calibration_error():
    rng = np.random.default_rng(4)
    probabilities = rng.dirichlet([1, 1, 1], size=20_000)
    truthful = np.array([rng.choice(3, p=p) for p in probabilities])  # labels drawn from the predictions
    calibrated = calibration.expected_calibration_error(calibration.reliability(probabilities, truthful))
    sharpened = probabilities**3 / (probabilities**3).sum(axis=1, keepdims=True)  # the same, over-confident
    overconfident = calibration.expected_calibration_error(calibration.reliability(sharpened, truthful))
    assert calibrated < 0.02 < 0.05 < overconfident
    labels = _labels(30, seed=5)
    evaluation = evaluate_predictions(_cells(labels, 8.0), labels, class_prior(labels))
    assert set(evaluation.calibration_error) == set(CONDITIONS) and set(evaluation.reliability) == set(CONDITIONS)
    assert (
        evaluation.metrics()["val_ece_spinal_canal_stenosis"] == evaluation.calibration_error["spinal_canal_stenosis"]
    )
