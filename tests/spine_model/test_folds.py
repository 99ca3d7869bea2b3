"""Folds by study, stratified on the studies' severity profiles, deterministic per seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spine_model.core.constants import LABEL_COLUMNS
from spine_model.core.split import Folds, assign_folds, severity_profile


def _labels(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = pd.DataFrame(rng.choice([-1, 0, 1, 2], (n, 25), p=[0.01, 0.83, 0.12, 0.04]), columns=list(LABEL_COLUMNS))
    labels.insert(0, "study_id", np.arange(5000, 5000 + n))
    return labels


def test_every_study_is_in_exactly_one_fold_and_the_folds_are_even_and_stratified():
    labels = _labels()
    folds = assign_folds(labels, 5, seed=3)
    assert set(folds.fold_of) == set(labels["study_id"]) and folds.count == 5
    sizes = pd.Series(folds.fold_of).value_counts()
    assert sizes.max() - sizes.min() <= 2
    for k in range(5):
        split = folds.split(k)
        assert not set(split.train_study_ids) & set(split.val_study_ids)
        assert len(split.train_study_ids) + len(split.val_study_ids) == 60
    # Stratified: the studies with a severe cell spread over the folds, not piled into one.
    profile = severity_profile(labels)
    severe = [s for s, p in profile.items() if p % 3 == 2 or p >= 6]
    per_fold = pd.Series([folds.fold_of[s] for s in severe]).value_counts()
    assert per_fold.max() - per_fold.min() <= 2


def test_folds_are_deterministic_per_seed_and_round_trip_with_their_fingerprint():
    labels = _labels()
    first, again, other = assign_folds(labels, 4, 1), assign_folds(labels, 4, 1), assign_folds(labels, 4, 2)
    assert first == again and first != other
    assert first.fingerprint() == again.fingerprint() != other.fingerprint()
    assert Folds.from_dict(first.to_dict()) == first
    with pytest.raises(ValueError, match="fold 4 does not exist"):
        first.split(4)
    with pytest.raises(ValueError, match="at least 2 folds"):
        assign_folds(labels, 1)
