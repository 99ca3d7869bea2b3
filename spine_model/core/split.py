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
