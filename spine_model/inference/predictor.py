"""Predictions for studies: points from given coordinates, the localiser or the coordinate prior,
then the model family.

The input is one frame of image references (spine_model.inference.frames), the same for the CLI,
the Prefect flow and the MLflow pyfunc model. A study with given points (x and y) is predicted
from them; a study without (the Kaggle test set gives none) gets, for each of the 25 condition x
level cells, the localiser's point, else the slice and point of the coordinate prior. Pixels come
from a volume store: one built beforehand by `spine predict`, or the same decoding done in memory
for the frame's series.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from spine_model.core.cells import CELLS_SHAPE, prior_cells
from spine_model.core.config import TrainConfig
from spine_model.data.volumes import (
    SERIES_KEY,
    MemoryVolumeStore,
    VolumeReader,
    describe_unplaced,
    locate_points,
)
from spine_model.evaluation import calibration
from spine_model.evaluation.metric import submission_from_probabilities
from spine_model.evaluation.reports import predict_outputs
from spine_model.families import get_family
from spine_model.families.base import batches
from spine_model.inference.frames import given_points, validate_frame
from spine_model.inference.localiser import Localiser
from spine_model.inference.prior import POINT_COLUMNS, CoordinatePrior, load_priors
from spine_model.training.checkpoints import load_checkpoint
from spine_model.training.devices import resolve_device

log = logging.getLogger(__name__)


@dataclass
class Predictor:
    """Trained models of any family (one, or an ensemble whose probabilities are averaged) plus what
    places points on studies without coordinates: a localiser when there is one, and the coordinate
    prior for the cells it cannot place; optionally a temperature per condition group (calibration)."""

    model: nn.Module
    config: TrainConfig
    coordinate_prior: CoordinatePrior
    class_prior: np.ndarray  # (5 conditions, 3) train-split class frequencies
    device: str = "auto"
    studies_per_chunk: int = 16  # decoded together when no store is given: bounds memory
    localiser: Localiser | None = None
    members: list[tuple[nn.Module, TrainConfig]] = field(default_factory=list)  # the others of an ensemble
    temperatures: dict[str, float] = field(default_factory=dict)  # metric group -> T (none: 1)

    @classmethod
    def load(
        cls,
        checkpoint: str | Path | list[str | Path],
        priors: str | Path,
        device: str = "auto",
        localiser: str | Path | None = None,
        temperatures: dict[str, float] | None = None,
    ) -> Predictor:
        """One checkpoint, or several (an ensemble: the fold models of a cross-validation, ...)."""
        paths = checkpoint if isinstance(checkpoint, list | tuple) else [checkpoint]
        models = [load_checkpoint(path) for path in paths]
        sizes = {config.store_size for _, config in models}
        if len(sizes) > 1:
            raise ValueError(f"an ensemble's models must read one volume store size, not {sorted(sizes)}")
        coordinate_prior, class_prior = load_priors(priors)
        found = Localiser.load(localiser, device) if localiser else None
        (model, config), others = models[0], [(m.eval(), c) for m, c in models[1:]]
        return cls(model.eval(), config, coordinate_prior, class_prior, device, localiser=found, members=others,
                   temperatures=dict(temperatures or {}))  # fmt: skip

    def points(self, frame: pd.DataFrame, store: VolumeReader) -> pd.DataFrame:
        """The points the model sees: a study's given points; else, per cell, the localiser's point,
        or the coordinate prior's where there is no localiser or it places none. The source of each
        study's points is logged."""
        given = given_points(frame)
        listed = pd.MultiIndex.from_frame(frame[SERIES_KEY].drop_duplicates())
        index = store.index[pd.MultiIndex.from_frame(store.index[SERIES_KEY]).isin(listed)]
        bare = index[~index["study_id"].isin(given["study_id"])]
        from_prior = self.coordinate_prior.points(bare)
        located = self.localiser.points(store, bare)[POINT_COLUMNS] if self.localiser is not None else from_prior[:0]
        cell = ["study_id", "condition", "level"]
        uncovered = ~pd.MultiIndex.from_frame(from_prior[cell]).isin(pd.MultiIndex.from_frame(located[cell]))
        points = pd.concat([given, located, from_prior[uncovered]], ignore_index=True)
        for study_id, sources in points.groupby("study_id")["source"]:
            counts = sources.value_counts()
            log.info("study %s: points from %s", study_id, ", ".join(f"{source} ({n})" for source, n in counts.items()))
        return points

    def predict(self, frame: pd.DataFrame, store: VolumeReader | None = None) -> pd.DataFrame:
        """Kaggle submission rows (row_id, normal_mild, moderate, severe): 25 per study of `frame`.

        Without `store`, the frame's image files are decoded here, a few studies at a time.
        """
        frame = validate_frame(frame)
        study_ids = sorted(int(s) for s in frame["study_id"].unique())
        cells: dict[int, np.ndarray] = {}
        if store is not None:
            if store.size != self.config.store_size:
                raise ValueError(
                    f"the volume store holds {store.size} px slices; this model was trained on "
                    f"{self.config.store_size} px (build a store of that size, or give none)"
                )
            cells = self.predict_cells(frame, store)
        else:
            for start in range(0, len(study_ids), self.studies_per_chunk):
                chunk = frame[frame["study_id"].isin(study_ids[start : start + self.studies_per_chunk])]
                memory = MemoryVolumeStore.from_files(chunk, self.config.store_size)
                for _, reason in memory.unreadable:
                    log.warning("skipped unreadable image %s", reason)
                cells.update(self.predict_cells(chunk, memory))
        prior = prior_cells(self.class_prior)
        for study_id in study_ids:
            if study_id not in cells:
                log.warning("study %s: no readable image for any condition; predicting the class prior", study_id)
        return submission_from_probabilities({s: cells.get(s, prior) for s in study_ids})

    def predict_cells(self, frame: pd.DataFrame, store: VolumeReader) -> dict[int, np.ndarray]:
        """Per study of `frame` with a readable image, probabilities (5 conditions, 5 levels, 3)."""
        points = self.points(frame, store)
        located, unplaced = locate_points(points, store.index, store.size)
        for line in describe_unplaced(unplaced):
            log.warning("not predicted from %s", line)
        if located.empty:
            return {}
        members = [(self.model, self.config), *self.members]
        each = [self._member_cells(model, config, located, store) for model, config in members]
        averaged = {study_id: np.mean([cells[study_id] for cells in each], axis=0) for study_id in each[0]}
        return calibration.scale_cells(averaged, self.temperatures) if self.temperatures else averaged

    def _member_cells(self, model, config: TrainConfig, located, store: VolumeReader) -> dict[int, np.ndarray]:
        family = get_family(config.model_family)
        loader = batches(family.dataset(located, store, config, train=False), config.batch_size)
        outputs, _ = predict_outputs(model, loader, config, resolve_device(self.device), progress=False)
        cells = family.cell_probabilities(outputs, located, self.class_prior)
        return {study_id: probabilities.reshape(CELLS_SHAPE) for study_id, probabilities in cells.items()}
