import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from spine_model.core.constants import CONDITIONS, LABEL_COLUMNS, LEVELS, SEVERITY_COLUMNS
from spine_model.evaluation.metric import (
    ScoringError,
    class_prior,
    competition_score,
    prior_submission,
    solution_from_labels,
    submission_from_probabilities,
    weighted_log_loss,
)


def _labels(rows: dict[int, list[int]]) -> pd.DataFrame:
    return pd.DataFrame([[s, *cells] for s, cells in rows.items()], columns=["study_id", *LABEL_COLUMNS])


def _uniform_submission(study_ids, probs=(0.5, 0.25, 0.25)) -> pd.DataFrame:
    return submission_from_probabilities({s: np.tile(probs, (5, 5, 1)) for s in study_ids})


def test_all_normal_study_hand_computed():
    solution = solution_from_labels(_labels({1: [0] * 25}))
    score = competition_score(solution, _uniform_submission([1]))
    # three groups: -log(0.5) each; any_severe: label 0, p = 0.25, weight 1 -> -log(0.75)
    expected = (3 * -math.log(0.5) - math.log(0.75)) / 4
    assert score == pytest.approx(expected, rel=1e-12)


def test_weights_and_any_severe_hand_computed():
    # study 1: spinal l1_l2 severe (weight 4), rest normal; study 2: spinal l2_l3 moderate, rest normal
    cells1, cells2 = [0] * 25, [0] * 25
    cells1[0], cells2[1] = 2, 1
    solution = solution_from_labels(_labels({1: cells1, 2: cells2}))
    submission = _uniform_submission([1, 2], probs=(0.6, 0.3, 0.1))
    ln = math.log
    # spinal: 10 rows, weights 4 (severe) + 2 (moderate) + 8 x 1 (normal)
    spinal = (4 * -ln(0.1) + 2 * -ln(0.3) + 8 * -ln(0.6)) / (4 + 2 + 8)
    foraminal = subarticular = -ln(0.6)
    # any_severe: study 1 label 1 weight 4 (max sample weight), study 2 label 0 weight 2
    any_severe = (4 * -ln(0.1) + 2 * -ln(0.9)) / (4 + 2)
    expected = (spinal + foraminal + subarticular + any_severe) / 4
    assert competition_score(solution, submission) == pytest.approx(expected, rel=1e-12)


def test_rows_are_normalised_and_order_and_extra_rows_do_not_matter():
    rng = np.random.default_rng(0)
    labels = _labels({s: list(rng.integers(0, 3, 25)) for s in (5, 6, 7)})
    solution = solution_from_labels(labels)
    submission = submission_from_probabilities({s: rng.dirichlet([1, 1, 1], (5, 5)) for s in (5, 6, 7, 8)})
    base = competition_score(solution, submission)
    scaled = submission.copy()
    scaled[list(SEVERITY_COLUMNS)] *= 3.0
    shuffled = scaled.sample(frac=1.0, random_state=1)
    assert competition_score(solution, shuffled) == pytest.approx(base, rel=1e-12)


def test_weighted_log_loss_matches_scikit_learn_on_normalised_rows():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    proba = rng.dirichlet([2, 1, 1], 200)
    weights = rng.uniform(0.5, 4, 200)
    ours = weighted_log_loss(np.eye(3)[y], proba, weights)
    assert ours == pytest.approx(log_loss(y, proba, sample_weight=weights, labels=[0, 1, 2]), rel=1e-9)


@pytest.mark.parametrize("bad, message", [(np.nan, "finite"), (np.inf, "finite"), (-0.1, "at least zero")])
def test_rejects_bad_predictions(bad, message):
    solution = solution_from_labels(_labels({1: [0] * 25}))
    submission = _uniform_submission([1])
    submission.loc[3, "moderate"] = bad
    with pytest.raises(ScoringError, match=message) as error:
        competition_score(solution, submission)
    assert submission.loc[3, "row_id"] in str(error.value)


def test_rejects_missing_rows_naming_them():
    solution = solution_from_labels(_labels({1: [0] * 25}))
    submission = _uniform_submission([1]).iloc[1:]
    with pytest.raises(ScoringError, match="lacks 1 of the solution's 25 rows") as error:
        competition_score(solution, submission)
    assert "1_spinal_canal_stenosis_l1_l2" in str(error.value)


def test_missing_labels_get_no_solution_rows():
    cells = [0] * 25
    cells[LABEL_COLUMNS.index("left_subarticular_stenosis_l4_l5")] = -1
    solution = solution_from_labels(_labels({9: cells}))
    assert len(solution) == 24
    assert "9_left_subarticular_stenosis_l4_l5" not in set(solution["row_id"])
    assert set(solution["sample_weight"]) == {1.0}


def test_class_prior_ignores_missing_and_is_per_condition():
    cells = [0] * 25
    cells[0:5] = [2, 2, 1, 0, -1]  # spinal: 1 normal, 1 moderate, 2 severe; one missing
    prior = class_prior(_labels({1: cells}))
    np.testing.assert_allclose(prior[0], [0.25, 0.25, 0.5])
    np.testing.assert_allclose(prior[1:], np.tile([1.0, 0.0, 0.0], (4, 1)))


def test_prior_submission_shape():
    prior = np.tile([0.7, 0.2, 0.1], (5, 1))
    submission = prior_submission(prior, [3, 4])
    assert len(submission) == 2 * len(CONDITIONS) * len(LEVELS)
    np.testing.assert_allclose(submission[list(SEVERITY_COLUMNS)].sum(axis=1), 1.0)
    assert submission["row_id"].iloc[0] == "3_spinal_canal_stenosis_l1_l2"
