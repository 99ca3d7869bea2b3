import numpy as np
import pandas as pd
import pytest

from spine_model.constants import LABEL_COLUMNS
from spine_model.evaluate import classification_reports, evaluate_predictions, study_probabilities
from spine_model.metrics import class_prior


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


def test_study_probabilities_average_rows():
    probs = np.zeros((3, 5, 5, 3))
    probs[0, ..., 0] = 1.0
    probs[1, ..., 1] = 1.0
    probs[2, ..., 2] = 1.0
    result = study_probabilities(np.array([7, 7, 8]), probs)
    np.testing.assert_allclose(result[7][0, 0], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(result[8][4, 4], [0.0, 0.0, 1.0])


def _rows_and_labels(n_studies=6, rows_per_study=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = pd.DataFrame(rng.choice(3, (n_studies, 25), p=[0.7, 0.2, 0.1]), columns=list(LABEL_COLUMNS))
    labels.insert(0, "study_id", np.arange(100, 100 + n_studies))
    rows = labels.loc[labels.index.repeat(rows_per_study)].reset_index(drop=True)
    return rows, labels


def test_confident_correct_logits_beat_the_prior():
    rows, labels = _rows_and_labels()
    targets = rows[list(LABEL_COLUMNS)].to_numpy()
    logits = np.eye(3)[targets].reshape(len(rows), 5, 5, 3) * 4.0
    prior = class_prior(labels)
    evaluation = evaluate_predictions(logits, rows, labels, prior)
    assert evaluation.accuracy == 1.0
    assert evaluation.score < evaluation.prior_score
    assert evaluation.n_studies == 6 and len(evaluation.submission) == 6 * 25
    assert evaluation.confusion.sum() == (targets != -1).sum()
    text = evaluation.describe()
    assert "beats the prior" in text and "spinal_canal_stenosis" in text
    metrics = evaluation.metrics()
    assert metrics["val_competition_score"] == evaluation.score
    assert set(metrics) >= {"val_prior_score", "val_severe_f1", "val_log_loss_spinal_canal_stenosis"}


def test_uniform_logits_score_log3_and_loss_ignores_missing():
    rows, labels = _rows_and_labels()
    rows.loc[:, "spinal_canal_stenosis_l1_l2"] = -1
    evaluation = evaluate_predictions(np.zeros((len(rows), 5, 5, 3)), rows, labels, class_prior(labels))
    assert evaluation.loss == pytest.approx(np.log(3))


def test_saved_reports(tmp_path):
    rows, labels = _rows_and_labels()
    evaluation = evaluate_predictions(np.zeros((len(rows), 5, 5, 3)), rows, labels, class_prior(labels))
    paths = evaluation.save(tmp_path)
    assert all(p.is_file() for p in paths.values())
    assert "== spinal_canal_stenosis_l1_l2 ==" in paths["reports_text"].read_text()
