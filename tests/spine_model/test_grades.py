"""The realistic benchmark: labels a noisy read of continuous grades, at the real class shares, with a
best attainable score (the limit) where the real leaderboard is, and posteriors that are the truth."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from spine_model.core.constants import LABEL_COLUMNS, POSTERIORS_CSV, SEVERITY_COLUMNS, SOLUTION_CSV, TRAIN_CSV
from spine_model.data import grades
from spine_model.data.synth import generate_dataset
from spine_model.evaluation.metric import class_prior
from spine_model.evaluation.reports import evaluate_predictions

STUDIES = 20_000


@pytest.fixture(scope="module")
def sample() -> tuple[pd.DataFrame, dict[int, np.ndarray], np.ndarray]:
    """(labels as train.csv is read, posteriors per study (5, 5, 3), grades (studies, 25))."""
    rng = np.random.default_rng(11)
    studies = [grades.sample_study(rng) for _ in range(STUDIES)]
    labels = pd.DataFrame([[i, *s.labels] for i, s in enumerate(studies)], columns=["study_id", *LABEL_COLUMNS])
    return (
        labels,
        {i: s.posteriors.reshape(5, 5, 3) for i, s in enumerate(studies)},
        np.stack([s.grades for s in studies]),
    )


def test_labels_come_at_the_real_datas_shares(sample):
    labels, _, _ = sample
    cells = labels[list(LABEL_COLUMNS)].to_numpy().ravel()
    shares = [float((cells == k).mean()) for k in (0, 1, 2, -1)]
    assert shares == pytest.approx([0.765, 0.161, 0.063, 0.012], abs=0.006)
    subarticular = labels[[c for c in LABEL_COLUMNS if "subarticular" in c]].to_numpy()
    assert (subarticular == -1).mean() > 5 * (
        labels[[c for c in LABEL_COLUMNS if "spinal" in c]].to_numpy() == -1
    ).mean()


def test_the_limit_lies_where_the_real_leaderboard_is_spinal_easiest_subarticular_hardest(sample):
    labels, posteriors, _ = sample
    evaluation = evaluate_predictions(posteriors, labels, class_prior(labels))
    assert 0.30 <= evaluation.score <= 0.40, evaluation.score
    assert evaluation.prior_score > 1.0  # far above: there is much to gain
    losses = evaluation.condition_log_loss
    spinal, foraminal, subarticular = (
        losses["spinal_canal_stenosis"], losses["left_neural_foraminal_narrowing"], losses["left_subarticular_stenosis"]
    )  # fmt: skip
    assert spinal < foraminal < subarticular


def test_the_posteriors_are_calibrated_against_the_labels_they_generate(sample):
    labels, posteriors, _ = sample
    p = np.stack([posteriors[s] for s in labels["study_id"]]).reshape(-1, 3)
    y = labels[list(LABEL_COLUMNS)].to_numpy().ravel()
    p, y = p[y >= 0], y[y >= 0]
    for k in range(3):
        bins = np.clip((p[:, k] * 10).astype(int), 0, 9)
        for b in range(10):
            chosen = bins == b
            if chosen.sum() < 2000:
                continue
            assert (y[chosen] == k).mean() == pytest.approx(p[chosen, k].mean(), abs=0.02), (k, b)


def test_grades_are_correlated_within_a_study_higher_below_and_sides_related(sample):
    _, _, cell_grades = sample
    by_cell = cell_grades.reshape(-1, 5, 5)  # study, condition, level
    assert by_cell[:, :, 3:].mean() > by_cell[:, :, 2].mean() > by_cell[:, :, 0].mean()
    spinal_l1, spinal_l5 = by_cell[:, 0, 0], by_cell[:, 0, 4]
    assert 0.2 < np.corrcoef(spinal_l1, spinal_l5)[0, 1] < 0.8  # the same spine, not the same cell
    left, right = by_cell[:, 1, 2], by_cell[:, 2, 2]  # foramina at L3/L4
    assert np.corrcoef(left, right)[0, 1] > np.corrcoef(left, by_cell[:, 0, 2])[0, 1]
    assert not np.allclose(left, right)


def test_a_realistic_dataset_writes_the_truth_beside_the_labels_for_both_splits(tmp_path):
    generate_dataset(tmp_path / "a", 6, 3, 64, 6, seed=3, difficulty="realistic")
    generate_dataset(tmp_path / "b", 6, 3, 64, 6, seed=3, difficulty="realistic")
    posteriors = pd.read_csv(tmp_path / "a" / POSTERIORS_CSV)
    assert posteriors.equals(pd.read_csv(tmp_path / "b" / POSTERIORS_CSV))  # deterministic per seed
    assert posteriors.groupby("split").size().to_dict() == {"test": 3 * 25, "train": 6 * 25}
    assert np.allclose(posteriors[list(SEVERITY_COLUMNS)].sum(axis=1), 1.0)
    # The labels are reads of these posteriors: a severe label never where severe had no chance.
    train = pd.read_csv(tmp_path / "a" / TRAIN_CSV).melt(id_vars="study_id", var_name="cell", value_name="label")
    train["row_id"] = train["study_id"].astype(str) + "_" + train["cell"]
    merged = train.dropna().merge(posteriors, on="row_id")
    read = merged["label"].map({"Normal/Mild": "normal_mild", "Moderate": "moderate", "Severe": "severe"})
    chance = merged[list(SEVERITY_COLUMNS)].to_numpy()[np.arange(len(merged)), read.map(list(SEVERITY_COLUMNS).index)]
    assert (chance > 1e-6).all()
    solution = pd.read_csv(tmp_path / "a" / SOLUTION_CSV)
    assert set(solution["row_id"]) <= set(posteriors.loc[posteriors["split"] == "test", "row_id"])


def test_the_easy_data_is_what_it_was(tmp_path):
    """`--difficulty easy` (the default) keeps the data the tests were written for, byte for byte."""
    summary = generate_dataset(tmp_path, 6, 2, 64, 6, seed=7)
    digest = {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()[:16] for name in
              (TRAIN_CSV, "train_label_coordinates.csv")}  # fmt: skip
    assert digest == {TRAIN_CSV: "c3152dfbfbfec118", "train_label_coordinates.csv": "689539469cda144d"}
    assert not (tmp_path / POSTERIORS_CSV).exists() and summary.train_studies == 6


def test_an_unknown_difficulty_is_refused(tmp_path):
    with pytest.raises(ValueError, match="difficulty must be one of"):
        generate_dataset(tmp_path, 2, 1, 64, 6, difficulty="hard")
