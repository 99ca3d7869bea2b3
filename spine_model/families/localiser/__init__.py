"""`localiser`: stage 1. Finds, on unlabelled studies, the slice and point of every condition x level.

Heatmaps (CenterNet-style, a softmax per point over all slices of a sagittal series, so the slice
and the position are found together) from a ResNet with a small feature pyramid; the axial slice
of each level starts from the sagittal canal point through the DICOM geometry, and the heatmaps
pick it among that slice and its neighbours. See `locate.py` for
how a study is read and `data.py` for training. It trains through the same loop as the classifiers;
its outputs are points, not probabilities, so `cell_probabilities` does not apply.
"""

from __future__ import annotations

import logging

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from spine_model.families.base import ModelFamily
from spine_model.families.localiser.data import LocaliserDataset, heatmap_loss, hits, training_groups
from spine_model.families.localiser.model import LocaliserNet

log = logging.getLogger(__name__)


class LocaliserFamily(ModelFamily):
    name = "localiser"
    input_names = ("slices", "position")
    produces = "points"

    def describe(self, config) -> str:
        return f"localiser {config.backbone} {config.image_size}px heatmaps"

    def create_model(self, config, pretrained: bool = False, allow_download: bool = True) -> nn.Module:
        return LocaliserNet(config.backbone, pretrained, allow_download)

    def dataset(self, points: pd.DataFrame, store, config, train: bool) -> Dataset:
        groups, unusual = training_groups(points)
        if unusual:
            log.warning("localiser: %d point(s) lie on a series their condition is not read on; not used", unusual)
        return LocaliserDataset(groups, store, config.image_size)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor):
        return heatmap_loss(outputs, targets)

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
        return hits(outputs, targets)


FAMILY = LocaliserFamily()
