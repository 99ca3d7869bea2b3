"""A trained localiser applied to studies: points (slice and x, y) for every cell it can place.

- Sagittal T2/STIR: the 5 spinal canal points, one heatmap per level over all slices.
- Sagittal T1: the 10 foraminal points (left and right on their own slices), likewise.
- Axial T2: per level, the slice nearest to that level's canal point in patient coordinates (an
  axial series may cover some levels or all; of several, the one the level lies deepest inside),
  then the left and right subarticular points, each a peak over that slice and AXIAL_SEARCH_WINDOW
  slices either side: the canal point is a few millimetres off, about half a slice gap, and the
  model, trained on each labelled slice beside its neighbours, tells which of them shows the level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from spine_model.core.config import TrainConfig
from spine_model.core.constants import (
    AXIAL_T2,
    CONDITION_SERIES,
    CONDITIONS,
    LEVELS,
    SAGITTAL_T1,
    SAGITTAL_T2,
    SPINAL_CONDITION,
)
from spine_model.core.geometry import nearest_slice, to_patient
from spine_model.data.volumes import SLICE_KEY, VolumeReader
from spine_model.families import get_family
from spine_model.families.localiser.data import peak, relative_positions, slice_stack
from spine_model.families.localiser.model import STRIDE, channel
from spine_model.training.checkpoints import load_checkpoint
from spine_model.training.devices import resolve_device

log = logging.getLogger(__name__)

LOCATED_COLUMNS = [*SLICE_KEY, "series_description", "condition", "level", "x", "y", "source", "confidence"]
SLICES_PER_FORWARD = 64
AXIAL_SEARCH_WINDOW = 2  # slices either side of the geometry's axial slice that a level's peak may move to


@dataclass
class Localiser:
    """A localiser model and the config it was trained with."""

    model: nn.Module
    config: TrainConfig
    device: str = "auto"

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "auto") -> Localiser:
        model, config = load_checkpoint(checkpoint)
        if config.model_family != "localiser":
            raise ValueError(f"{checkpoint} holds a {config.model_family!r} model, not a localiser")
        return cls(model.eval(), config, device)

    def points(self, store: VolumeReader, index: pd.DataFrame | None = None) -> pd.DataFrame:
        """Located points (LOCATED_COLUMNS, source 'localiser') of every study of `index` (default:
        the whole store); x, y are pixels of each point's own DICOM frame."""
        index = store.index if index is None else index
        rows: list[tuple] = []
        device = resolve_device(self.device)
        self.model.to(device).eval()
        for study_id, study in index.groupby("study_id", sort=True):
            rows += self._study(int(study_id), study, store, device)
        return pd.DataFrame(rows, columns=LOCATED_COLUMNS)

    @torch.no_grad()
    def _heatmaps(self, store: VolumeReader, study_id: int, series_id: int, slices: np.ndarray, device) -> torch.Tensor:
        volume = store.volume(study_id, series_id)
        stack = slice_stack(volume, np.asarray(slices), self.config.image_size)
        positions = relative_positions(np.asarray(slices), volume.shape[0])
        outputs = []
        for start in range(0, len(stack), SLICES_PER_FORWARD):
            batch = [
                stack[start : start + SLICES_PER_FORWARD].to(device),
                positions[start : start + SLICES_PER_FORWARD].to(device),
            ]
            batch = get_family(self.config.model_family).prepare(batch, self.config, train=False)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.config.amp and device.type == "cuda"):
                outputs.append(self.model(*batch).float().cpu())
        return torch.cat(outputs)

    def _to_frame(self, cell_x: float, cell_y: float, slice_row) -> tuple[float, float]:
        """Heatmap cell coordinates -> pixels of the slice's DICOM frame."""
        pixels_per_cell = STRIDE / self.config.image_size
        return cell_x * pixels_per_cell * slice_row.columns, cell_y * pixels_per_cell * slice_row.rows

    def _study(self, study_id: int, study: pd.DataFrame, store: VolumeReader, device) -> list[tuple]:
        found: list[tuple] = []
        canal: dict[str, pd.Series] = {}  # level -> the canal point's slice row, with its x, y
        for description in (SAGITTAL_T2, SAGITTAL_T1):
            series_ids = study.loc[study["series_description"] == description, "series_id"]
            if series_ids.empty:
                continue
            series_id = int(series_ids.min())  # the first such series, as the coordinate prior does
            slices = study[study["series_id"] == series_id].sort_values("slice_index")
            heatmaps = self._heatmaps(store, study_id, series_id, slices["slice_index"].to_numpy(), device)
            for condition in (c for c in CONDITIONS if CONDITION_SERIES[c] == description):
                for level in LEVELS:
                    at = peak(heatmaps[:, channel(condition, level)])
                    row = slices.iloc[at.slice]
                    x, y = self._to_frame(at.x, at.y, row)
                    found.append(
                        (
                            study_id,
                            series_id,
                            int(row.instance_number),
                            description,
                            condition,
                            level,
                            x,
                            y,
                            "localiser",
                            at.probability,
                        )
                    )
                    if condition == SPINAL_CONDITION:
                        canal[level] = row.copy()
                        canal[level]["x"], canal[level]["y"] = x, y
        return found + self._axial(study_id, study, store, canal, device)

    def _axial(self, study_id: int, study: pd.DataFrame, store, canal: dict[str, pd.Series], device) -> list[tuple]:
        """Per level, the left and right points: peaks over the slices around the level's slice from
        the geometry (see axial_slices), each side on the slice its peak lies on."""
        chosen: dict[int, list[tuple[str, pd.Series]]] = {}  # series -> (level, slice row)
        for level, row in axial_slices(study, canal).items():
            chosen.setdefault(int(row.series_id), []).append((level, row))
        missing = sorted(set(canal) - {level for picks in chosen.values() for level, _ in picks})
        if missing:
            log.info("study %s: no axial series reaches level(s) %s", study_id, ", ".join(missing))
        found = []
        sides = [c for c in CONDITIONS if CONDITION_SERIES[c] == AXIAL_T2]
        for series_id, picks in chosen.items():
            series = study[study["series_id"] == series_id].sort_values("slice_index").reset_index(drop=True)
            windows = [(level, search_window(series, int(row.slice_index))) for level, row in picks]
            slices = np.unique(np.concatenate([window for _, window in windows]))
            heatmaps = self._heatmaps(store, study_id, series_id, series["slice_index"].to_numpy()[slices], device)
            at = {int(k): j for j, k in enumerate(slices)}
            for level, window in windows:
                for condition in sides:
                    hit = peak(heatmaps[[at[int(k)] for k in window], channel(condition, level)])
                    row = series.iloc[int(window[hit.slice])]
                    x, y = self._to_frame(hit.x, hit.y, row)
                    found.append(
                        (
                            study_id,
                            series_id,
                            int(row.instance_number),
                            AXIAL_T2,
                            condition,
                            level,
                            x,
                            y,
                            "localiser",
                            hit.probability,
                        )
                    )
        return found


def search_window(series: pd.DataFrame, slice_index: int) -> np.ndarray:
    """Rows (positions in `series`, its index rows in slice order) within AXIAL_SEARCH_WINDOW of a slice."""
    position = int(np.flatnonzero(series["slice_index"].to_numpy() == slice_index)[0])
    return np.arange(max(position - AXIAL_SEARCH_WINDOW, 0), min(position + AXIAL_SEARCH_WINDOW + 1, len(series)))


def axial_slices(study: pd.DataFrame, canal: dict[str, pd.Series]) -> dict[str, pd.Series]:
    """Per level, the axial slice (its index row) nearest to the level's canal point in patient coordinates.

    study: the store index rows of one study; canal: level -> the canal point's slice row with its
    x, y (pixels of that frame). Of several axial series that reach it, the one the point lies
    deepest inside wins (where two stacks overlap by a level, that level is read on the stack that
    covers it with room to spare, not at the other's edge); a level that no axial series reaches
    (beyond half a slice gap from its ends) gets none.
    """
    axial = study[study["series_description"] == AXIAL_T2]
    chosen = {}
    for level, point in canal.items():
        patient = to_patient(point.to_frame().T, [point["x"]], [point["y"]])[0]
        best = None
        for _, series in axial.groupby("series_id", sort=True):
            series = series.sort_values("slice_index")
            hit = nearest_slice(series, patient)
            if hit.inside and (best is None or hit.depth_mm > best[1].depth_mm):
                best = (series.iloc[hit.row], hit)
        if best is not None:
            chosen[level] = best[0]
    return chosen
