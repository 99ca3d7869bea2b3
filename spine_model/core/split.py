"""Train/validation split by study, so no study's rows land on both sides."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit


@dataclass(frozen=True)
class StudySplit:
    train_study_ids: tuple[int, ...]
    val_study_ids: tuple[int, ...]

    def val_fingerprint(self) -> str:
        """Short hash of the validation study ids: runs with equal fingerprints are comparable."""
        text = ",".join(str(s) for s in sorted(self.val_study_ids))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def select(self, frame: pd.DataFrame, side: str) -> pd.DataFrame:
        """The rows of `frame` (anything with a study_id column) on one side: 'train' or 'val'."""
        if side not in ("train", "val"):
            raise ValueError(f"side must be 'train' or 'val', got {side!r}")
        study_ids = self.train_study_ids if side == "train" else self.val_study_ids
        return frame[frame["study_id"].isin(study_ids)]

    def to_dict(self) -> dict[str, list[int]]:
        return {"train_study_ids": list(self.train_study_ids), "val_study_ids": list(self.val_study_ids)}

    @classmethod
    def from_dict(cls, data: dict[str, list[int]]) -> StudySplit:
        return cls(tuple(int(s) for s in data["train_study_ids"]), tuple(int(s) for s in data["val_study_ids"]))


def split_by_study(table: pd.DataFrame, val_fraction: float = 0.1, seed: int = 42) -> StudySplit:
    """GroupShuffleSplit of the long table's rows grouped by study_id (the seed's split)."""
    n_studies = table["study_id"].nunique()
    if n_studies < 2:
        raise ValueError(f"need at least 2 studies to split into train and validation, got {n_studies}")
    splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_index, val_index = next(splitter.split(table, groups=table["study_id"]))
    train_ids = np.unique(table["study_id"].to_numpy()[train_index])
    val_ids = np.unique(table["study_id"].to_numpy()[val_index])
    return StudySplit(tuple(int(s) for s in train_ids), tuple(int(s) for s in val_ids))


@dataclass(frozen=True)
class Folds:
    """K folds of the studies, each study in exactly one: fold k's validation studies are its own,
    its training studies all the others'."""

    fold_of: dict[int, int]  # study id -> fold

    @property
    def count(self) -> int:
        return max(self.fold_of.values()) + 1

    def split(self, fold: int) -> StudySplit:
        """The train/validation split of one fold."""
        if not 0 <= fold < self.count:
            raise ValueError(f"fold {fold} does not exist: there are {self.count} (0 to {self.count - 1})")
        val = tuple(sorted(s for s, k in self.fold_of.items() if k == fold))
        train = tuple(sorted(s for s, k in self.fold_of.items() if k != fold))
        return StudySplit(train, val)

    def fingerprint(self) -> str:
        """Short hash of the assignment: cross-validations with equal fingerprints are comparable."""
        text = ";".join(f"{s}:{k}" for s, k in sorted(self.fold_of.items()))
        return "folds-" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {"fold_of": {str(s): k for s, k in sorted(self.fold_of.items())}}

    @classmethod
    def from_dict(cls, data: dict) -> Folds:
        return cls({int(s): int(k) for s, k in data["fold_of"].items()})


def severity_profile(labels: pd.DataFrame) -> pd.Series:
    """Per study, a stratum of its severity profile: the highest grade of its spinal cells and of all
    its other cells (0 Normal/Mild, 1 Moderate, 2 Severe), as one number 0-8. Folds stratified on it
    hold the same mix of severe, moderate and normal spines."""
    columns = [c for c in labels.columns if c != "study_id"]
    spinal = [c for c in columns if c.startswith("spinal")]
    highest_spinal = labels[spinal].max(axis=1).clip(lower=0)
    highest_other = labels[[c for c in columns if c not in spinal]].max(axis=1).clip(lower=0)
    return pd.Series((3 * highest_spinal + highest_other).to_numpy(), index=labels["study_id"].to_numpy())


def assign_folds(labels: pd.DataFrame, k: int = 5, seed: int = 42) -> Folds:
    """K folds by study, stratified on each study's severity profile (StratifiedGroupKFold, one group per
    study); deterministic per seed. `labels`: study_id and the 25 label columns (as ingested)."""
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    if labels["study_id"].nunique() < k:
        raise ValueError(f"{labels['study_id'].nunique()} studies cannot make {k} folds")
    profile = severity_profile(labels)
    study_ids = profile.index.to_numpy()
    # Strata rarer than the folds are merged into their neighbour, so that every fold can hold some.
    strata = profile.to_numpy().copy()
    counts = pd.Series(strata).value_counts()
    for rare in counts[counts < k].index:
        strata[strata == rare] = strata[strata != rare][np.argmin(np.abs(strata[strata != rare] - rare))]
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold_of = {}
    for fold, (_, val_index) in enumerate(splitter.split(study_ids, strata, groups=study_ids)):
        fold_of.update({int(study_ids[i]): fold for i in val_index})
    return Folds(fold_of)
