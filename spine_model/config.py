"""One configuration object per training run; its defaults are the seed notebook's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Backbone = Literal["resnet18", "resnet34", "resnet50"]


class TrainConfig(BaseModel):
    """Model, optimisation and data-loading settings of one training run.

    Defaults reproduce the seed notebook (resnet18 SpineNet at 224 px, Adam lr 0.01, batch 64,
    10 epochs, ReduceLROnPlateau(patience 2, factor 0.1), clipping at 1.0, class weights 1/2/4,
    a 90/10 study split with random_state 42), meant for real data on a GPU.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: Backbone = Field("resnet18", description="torchvision ResNet trunk of SpineNet")
    pretrained: bool = Field(True, description="start the trunk from ImageNet weights")
    image_size: int = Field(224, ge=32, le=1024, description="square input size in pixels")
    batch_size: int = Field(64, ge=1, description="training and evaluation batch size")
    epochs: int = Field(10, ge=1, description="training epochs")
    lr: float = Field(0.01, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    class_weights: tuple[float, float, float] = Field(
        (1.0, 2.0, 4.0), description="cross-entropy weights for Normal/Mild, Moderate, Severe"
    )
    augment: bool = Field(False, description="random shift/contrast/noise on training images")
    lr_patience: int = Field(2, ge=0, description="ReduceLROnPlateau patience (epochs)")
    lr_factor: float = Field(0.1, gt=0, lt=1, description="ReduceLROnPlateau factor")
    grad_clip: float = Field(1.0, ge=0, description="gradient norm clipping; 0 disables")
    num_workers: int = Field(4, ge=0, description="DataLoader worker processes")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of studies held out")
    split_seed: int = Field(42, description="GroupShuffleSplit random_state")
    seed: int = Field(42, description="seed for weights init and shuffling")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1'")
    amp: bool = Field(True, description="bfloat16 autocast on CUDA (ignored on CPU)")
    restore_best: bool = Field(True, description="evaluate the lowest-val-loss epoch's weights")
