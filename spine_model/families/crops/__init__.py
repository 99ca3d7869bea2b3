"""`crops`: per point, a crop of k adjacent slices around it -> the severity of that point's cell.

Study level: per (condition, level) cell the mean of its points' softmax; a cell without a point
gets the class prior. The top solutions of the competition all classify such crops.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from spine_model.core.cells import CELLS_SHAPE, cell_index, prior_cells
from spine_model.families.base import ModelFamily, jitter_intensity, softmax
from spine_model.families.crops.data import CropDataset, crop_sides, prepare_crops
from spine_model.families.crops.model import CropNet


class CropsFamily(ModelFamily):
    name = "crops"
    input_names = ("crop", "cell")

    def describe(self, config) -> str:
        side = f"{config.crop_mm:g}mm" if config.crop_mm > 0 else f"{config.crop_fraction:g} of the image"
        return (
            f"crops {config.backbone} {config.crop_slices}x{config.crop_size}px {config.crop_pooling} "
            f"(side {side}, store {config.store_size}px)"
        )

    def create_model(self, config, pretrained: bool = False, allow_download: bool = True) -> nn.Module:
        return CropNet(config.backbone, config.crop_slices, config.crop_pooling, pretrained, allow_download)

    def dataset(self, points: pd.DataFrame, store, config, train: bool) -> Dataset:
        sides = crop_sides(points, store.size, config.crop_fraction, config.crop_mm)
        return CropDataset(
            points, store, config.crop_slices, sides,
            jitter=config.crop_jitter if train else 0.0, jitter_slices=config.crop_jitter_slices if train else 0,
        )  # fmt: skip

    def prepare(self, inputs: list[torch.Tensor], config, train: bool) -> list[torch.Tensor]:
        crops, sides, cells = inputs
        crop = prepare_crops(crops, sides, config.crop_size)
        if train and config.augment:
            crop = jitter_intensity(crop)
        return [crop, cells]

    def cell_probabilities(self, outputs: np.ndarray, points: pd.DataFrame, class_prior: np.ndarray) -> dict:
        probabilities = softmax(outputs)
        frame = pd.DataFrame(probabilities).assign(study_id=points["study_id"].to_numpy(), cell=cell_index(points))
        means = frame.groupby(["study_id", "cell"]).mean()
        prior = prior_cells(class_prior)
        by_study = {}
        for study_id, cells in means.groupby(level="study_id"):
            study = prior.copy().reshape(-1, CELLS_SHAPE[-1])
            study[cells.index.get_level_values("cell")] = cells.to_numpy()
            by_study[int(study_id)] = study.reshape(CELLS_SHAPE)
        return by_study


FAMILY = CropsFamily()
