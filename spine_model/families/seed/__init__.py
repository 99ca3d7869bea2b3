"""`seed`: the notebook's SpineNet. One point's slice and (x, y) in, all 25 cells of its study out.

Study level: the mean of the softmax over the study's points. Defaults are the seed's settings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from spine_model.families.base import ModelFamily, mean_by_study, softmax
from spine_model.families.seed.data import SeedDataset, prepare_seed
from spine_model.families.seed.model import create_spinenet


class SeedFamily(ModelFamily):
    name = "seed"
    input_names = ("image", "coords")

    def describe(self, config) -> str:
        return f"seed {config.backbone} {config.image_size}px"

    def create_model(self, config, pretrained: bool = False, allow_download: bool = True) -> nn.Module:
        return create_spinenet(config.backbone, pretrained, config.image_size, allow_download)

    def dataset(self, points: pd.DataFrame, store, config, train: bool) -> Dataset:
        return SeedDataset(points, store)

    def prepare(self, inputs: list[torch.Tensor], config, train: bool) -> list[torch.Tensor]:
        return list(prepare_seed(*inputs, config.image_size, augment=train and config.augment))

    def cell_probabilities(self, outputs: np.ndarray, points: pd.DataFrame, class_prior: np.ndarray) -> dict:
        return mean_by_study(points["study_id"].to_numpy(), softmax(outputs))


FAMILY = SeedFamily()
