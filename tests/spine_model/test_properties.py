"""Property-based tests (hypothesis): ingestion never fails but with a DataError, whatever the CSVs
hold; the competition metric keeps its invariants on any valid submission."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from spine_model.core.constants import (
    COORDINATES_CSV,
    LABEL_COLUMNS,
    MISSING_LABEL,
    SEVERITY_COLUMNS,
    TRAIN_CSV,
)
from spine_model.data.ingest import DataError, load_coordinates, load_labels
from spine_model.evaluation.metric import competition_score, solution_from_labels, submission_from_probabilities

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEVERITIES = ["Normal/Mild", "Moderate", "Severe", ""]
COORDINATE_HEADER = "study_id,series_id,instance_number,condition,level,x,y"


def _load(name: str, content: bytes, loader):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / name).write_bytes(content)
        return loader(folder)


def _train_csv(rows: list[list[str]]) -> bytes:
    lines = [",".join(["study_id", *LABEL_COLUMNS])] + [",".join(row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


@FAST
@given(st.binary(max_size=400))
def test_any_bytes_as_train_csv_load_or_raise_a_data_error(content):
    try:
        labels = _load(TRAIN_CSV, content, load_labels)
    except DataError:
        return
    assert labels["study_id"].is_unique and labels[list(LABEL_COLUMNS)].isin([0, 1, 2, MISSING_LABEL]).all().all()


@FAST
@given(st.text(max_size=30), st.lists(st.sampled_from(SEVERITIES), min_size=25, max_size=25))
def test_an_id_loads_as_its_integer_or_is_a_data_error(study_id, severities):
    content = _train_csv([[study_id.replace(",", "").replace("\n", ""), *severities]])
    try:
        labels = _load(TRAIN_CSV, content, load_labels)
    except DataError as error:
        # A quote in the id opens a quoted field the line never closes: the file is not a CSV.
        reasons = ("study_id", "no rows", "UTF-8", "not a readable CSV file")
        assert any(reason in str(error) for reason in reasons), error
        return
    text = study_id.replace(",", "").replace("\n", "").strip()
    assert text.isdigit() and int(text) <= np.iinfo(np.int64).max
    assert labels["study_id"].tolist() == [int(text)]
    expected = [{"Normal/Mild": 0, "Moderate": 1, "Severe": 2, "": MISSING_LABEL}[s] for s in severities]
    assert labels[list(LABEL_COLUMNS)].iloc[0].tolist() == expected


@FAST
@given(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=12)),
    st.floats(min_value=-1e6, max_value=1e6).map(repr),
)
def test_a_coordinate_loads_as_a_finite_number_or_is_a_data_error(x, y):
    x = x.replace(",", "").replace("\n", "").replace("\r", "").replace('"', "")
    row = f"1,2,3,Spinal Canal Stenosis,L1/L2,{x},{y}"
    try:
        table = _load(COORDINATES_CSV, f"{COORDINATE_HEADER}\n{row}\n".encode(), load_coordinates)
    except DataError as error:
        assert "column x" in str(error)
        assert not np.isfinite(pd.to_numeric(pd.Series([x.strip()]), errors="coerce")).all()
        return
    assert np.isfinite(table["x"]).all() and table["x"].iloc[0] == float(x)


# --- the metric ----------------------------------------------------------------------------------

labels_strategy = arrays(np.int8, (3, 25), elements=st.sampled_from([0, 1, 2, MISSING_LABEL]))
# Zero, or at least 1e-3: with a share of 1e-15 against 1, 1 - p (the any-severe term's binary log
# loss) is all rounding, in the official metric as here, and scaling a row moves it.
probabilities_strategy = arrays(
    np.float64, (3, 5, 5, 3), elements=st.one_of(st.just(0.0), st.floats(min_value=1e-3, max_value=1.0))
)


def _solution(labels: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(labels, columns=list(LABEL_COLUMNS)).assign(study_id=[11, 12, 13])
    return solution_from_labels(frame[["study_id", *LABEL_COLUMNS]])


def _scorable(solution: pd.DataFrame) -> bool:
    """Every metric group has a labelled row (else the metric refuses, by design)."""
    groups = solution["row_id"].str.contains("spinal"), solution["row_id"].str.contains("foraminal")
    return all(g.any() for g in groups) and solution["row_id"].str.contains("subarticular").any()


@FAST
@given(labels_strategy, probabilities_strategy, st.floats(min_value=0.01, max_value=100.0), st.randoms())
def test_the_score_is_finite_positive_and_blind_to_row_scale_and_order(labels, probabilities, scale, random):
    solution = _solution(labels)
    if not _scorable(solution):
        return
    submission = submission_from_probabilities(dict(zip([11, 12, 13], probabilities, strict=True)))
    score = competition_score(solution, submission)
    assert np.isfinite(score) and score >= 0
    scaled = submission.assign(**{c: submission[c] * scale for c in SEVERITY_COLUMNS})
    shuffled = scaled.sample(frac=1.0, random_state=random.randint(0, 2**31 - 1)).reset_index(drop=True)
    assert competition_score(solution, shuffled) == pytest.approx(score, rel=1e-9, abs=1e-12)


@FAST
@given(labels_strategy, probabilities_strategy)
def test_the_true_labels_score_no_worse_than_any_submission(labels, probabilities):
    solution = _solution(labels)
    if not _scorable(solution):
        return
    guessed = submission_from_probabilities(dict(zip([11, 12, 13], probabilities, strict=True)))
    truth = solution[["row_id", *SEVERITY_COLUMNS]].astype({c: np.float64 for c in SEVERITY_COLUMNS})
    # Unlabelled cells have no solution row: any value is fine there.
    perfect = guessed.set_index("row_id")
    perfect.loc[truth["row_id"], list(SEVERITY_COLUMNS)] = truth[list(SEVERITY_COLUMNS)].to_numpy()
    best = competition_score(solution, perfect.reset_index())
    assert best <= competition_score(solution, guessed) + 1e-12
    assert best < 1e-6
