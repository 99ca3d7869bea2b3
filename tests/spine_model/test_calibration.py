"""Temperature scaling per condition group: an over-confident model's temperature is found, and the
score it gives is better."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spine_model.core.constants import LABEL_COLUMNS
from spine_model.data import grades
from spine_model.evaluation import calibration
from spine_model.evaluation.metric import competition_score, solution_from_labels, submission_from_probabilities


def test_the_temperature_of_an_overconfident_model_is_found_and_helps():
    rng = np.random.default_rng(8)
    studies = [grades.sample_study(rng) for _ in range(1500)]
    labels = pd.DataFrame([[i, *s.labels] for i, s in enumerate(studies)], columns=["study_id", *LABEL_COLUMNS])
    truth = {i: s.posteriors.reshape(5, 5, 3) for i, s in enumerate(studies)}
    sharp = {i: p**2 / (p**2).sum(axis=-1, keepdims=True) for i, p in truth.items()}  # T = 1/2 of the truth
    solution, overconfident = solution_from_labels(labels), submission_from_probabilities(sharp)
    # The truth itself is nearly calibrated for the metric (its 1/2/4 weights favour a little softness).
    for_truth = calibration.fit_temperatures(solution, submission_from_probabilities(truth))
    assert all(0.9 < t < 1.4 for t in for_truth.values()), for_truth
    temperatures = calibration.fit_temperatures(solution, overconfident)
    assert temperatures == pytest.approx({group: 2 * t for group, t in for_truth.items()}, rel=0.1)
    calibrated = calibration.with_temperatures(overconfident, temperatures)
    assert competition_score(solution, calibrated) < competition_score(solution, overconfident) - 0.05
    assert np.allclose(calibrated[["normal_mild", "moderate", "severe"]].sum(axis=1), 1.0)
    untouched = calibration.with_temperatures(overconfident, {"spinal": 1.0, "foraminal": 1.0, "subarticular": 1.0})
    assert np.allclose(untouched.iloc[:, 1:].to_numpy(), overconfident.iloc[:, 1:].to_numpy())
