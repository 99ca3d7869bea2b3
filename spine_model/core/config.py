"""One configuration object per training run; its defaults are the seed notebook's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

# The model families (spine_model/families registers one module per name): a plain type here, so
# that the configuration sits below everything that reads it.
FamilyName = Literal["seed", "crops", "localiser"]
FAMILY_NAMES: tuple[str, ...] = FamilyName.__args__
# Families that reuse a ResNet's stem and layers by name (seed's SpineNet, the localiser) take these.
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

# What a setting left unset takes, by model family: the seed notebook's for `seed`; for `crops` the
# settings measured in benchmarks/QUALITY.md (the notebook's lr 0.01 sent its first validation loss
# into the thousands and ended 44 % below the prior on hidden data, where 1e-3 reached 91 %); the
# localiser's own come from the pipeline's localiser_* settings.
FAMILY_DEFAULTS: dict[str, dict[str, float | int]] = {
    "seed": {"lr": 0.01, "batch_size": 64},
    "crops": {"lr": 1e-3, "batch_size": 32},
    "localiser": {"lr": 1e-3, "batch_size": 8},
}


def _defaults(setting: str) -> str:
    return ", ".join(f"{family} {defaults[setting]:g}" for family, defaults in FAMILY_DEFAULTS.items())


class TrainConfig(BaseModel):
    """Model family, model, optimisation and data-loading settings of one training run.

    Defaults reproduce the seed notebook (family `seed`: resnet18 SpineNet at 224 px, Adam lr 0.01,
    batch 64, 10 epochs, ReduceLROnPlateau(patience 2, factor 0.1), clipping at 1.0, class weights
    1/2/4, a 90/10 study split with random_state 42), meant for real data on a GPU. Fields named
    `crop_*` belong to the `crops` family; what a family cannot use is refused here, when a config is made.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_family: FamilyName = Field(
        "seed",
        title="model family",
        description="'seed': the notebook's SpineNet, one slice + point -> all 25 cells; "
        "'crops': k adjacent slices around each point -> that point's cell (recommended); "
        "'localiser': finds the points of unlabelled studies (stage 1)",
    )
    backbone: str = Field(
        "resnet18",
        title="backbone (torchvision model)",
        description="torchvision model name: seed and localiser take a ResNet (resnet18/34/50); crops any "
        "torchvision classification model (e.g. resnet18, efficientnet_b0, convnext_tiny)",
    )
    pretrained: bool = Field(True, title="ImageNet weights", description="start the backbone from ImageNet weights")
    store_size: int = Field(
        256,
        ge=16,
        le=1024,
        title="volume store size (pixels)",
        description="in-plane size of the volume store in pixels",
    )
    image_size: int = Field(
        224,
        ge=32,
        le=1024,
        title="slice size (pixels, seed)",
        description="seed and localiser: input slice size in pixels",
    )
    crop_slices: int = Field(
        5,
        ge=1,
        le=31,
        title="slices per crop (crops)",
        description="crops: adjacent slices per crop, the point's in the middle",
    )
    crop_size: int = Field(
        128, ge=16, le=512, title="crop size (pixels, crops)", description="crops: crop side in pixels after resizing"
    )
    crop_fraction: float = Field(
        0.2,
        gt=0,
        le=1,
        title="crop side, share of the image (crops)",
        description="crops: crop side as a share of the image side",
    )
    crop_mm: float = Field(
        0.0,
        ge=0,
        title="crop side (millimetres, crops; 0: use the share)",
        description="crops: crop side in millimetres via PixelSpacing (0: use crop_fraction)",
    )
    crop_pooling: Literal["attention", "channels"] = Field(
        "attention",
        title="slice pooling (crops)",
        description="crops: each slice encoded alone and the slices pooled by attention (better on "
        "benchmarks/QUALITY.md), or the slices as input channels of one 2-D backbone (faster)",
    )
    crop_jitter: float = Field(
        0.1,
        ge=0,
        le=0.5,
        title="point jitter, share of the crop (crops)",
        description="crops: random shift of the point in training, share of the crop side",
    )
    crop_jitter_slices: int = Field(
        1, ge=0, le=5, title="slice jitter (crops)", description="crops: random shift of the centre slice in training"
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        title="batch size (0: the family's)",
        description=f"training and evaluation batch size; unset: the family's ({_defaults('batch_size')})",
    )
    epochs: int = Field(10, ge=1, title="training epochs", description="training epochs")
    lr: float | None = Field(
        None,
        gt=0,
        title="learning rate (0: the family's)",
        description=f"Adam learning rate; unset: the family's ({_defaults('lr')})",
    )
    weight_decay: float = Field(0.0, ge=0, title="weight decay", description="Adam weight decay")
    class_weights: tuple[float, float, float] = Field(
        (1.0, 2.0, 4.0),
        title="class weights (Normal/Mild, Moderate, Severe)",
        description="cross-entropy weights for Normal/Mild, Moderate, Severe",
    )
    augment: bool = Field(
        False,
        title="augmentation",
        description="random augmentation in training: intensity (both families) and shift (seed)",
    )
    lr_patience: int = Field(
        2, ge=0, title="learning-rate patience (epochs)", description="ReduceLROnPlateau patience (epochs)"
    )
    lr_factor: float = Field(
        0.1, gt=0, lt=1, title="learning-rate decay factor", description="ReduceLROnPlateau factor"
    )
    grad_clip: float = Field(
        1.0, ge=0, title="gradient clipping (norm; 0: off)", description="gradient norm clipping; 0 disables"
    )
    num_workers: int = Field(4, ge=0, title="loader worker processes", description="DataLoader worker processes")
    val_fraction: float = Field(
        0.1, gt=0, lt=1, title="validation share of studies", description="share of studies held out"
    )
    split_seed: int = Field(42, title="split seed", description="GroupShuffleSplit random_state")
    seed: int = Field(42, title="random seed", description="seed for weights init and shuffling")
    device: str = Field(
        "auto",
        title="device (auto, cpu, cuda, cuda:N)",
        description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1'",
    )
    gpus: int = Field(
        1, ge=1, le=64,
        title="GPUs (one node)",
        description="GPUs of one node to train on: more than 1 launches torchrun, one process per GPU "
        "(DistributedDataParallel; batch_size stays the global batch and must divide evenly); on a "
        "machine without CUDA that many CPU processes (gloo), for testing",
    )  # fmt: skip
    amp: bool = Field(True, title="bfloat16 autocast (CUDA)", description="bfloat16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = Field(
        True, title="channels-last memory order", description="NHWC memory order for the model and its image inputs"
    )
    compile: bool = Field(
        False,
        title="torch.compile",
        description="torch.compile the model for training (slower first epoch; worth it for long GPU runs)",
    )
    cudnn_benchmark: bool = Field(
        True, title="cuDNN autotuning", description="let cuDNN pick the fastest convolution per input size (CUDA)"
    )
    restore_best: bool = Field(
        True, title="keep the best epoch's weights", description="evaluate the lowest-val-loss epoch's weights"
    )

    # The settings that took their family's default (FAMILY_DEFAULTS) because they were left unset.
    _from_family: tuple[str, ...] = PrivateAttr(())

    @property
    def family_defaults(self) -> tuple[str, ...]:
        """The settings this config took from its family's defaults (left unset when it was made)."""
        return self._from_family

    @model_validator(mode="after")
    def _family_accepts_settings(self) -> TrainConfig:
        unset = []
        for setting, value in FAMILY_DEFAULTS[self.model_family].items():
            if getattr(self, setting) is None:  # frozen: filled in once, here, while the config is made
                object.__setattr__(self, setting, value)
                unset.append(setting)
        if unset:  # validated again later (Prefect does, on the same instance): what was filled stays known
            self._from_family = tuple(unset)

        _check_family_settings(self)
        if self.gpus > 1 and self.batch_size % self.gpus:
            raise ValueError(f"batch_size {self.batch_size} does not split evenly over gpus={self.gpus}")
        if self.gpus > 1 and self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"gpus={self.gpus} takes the node's first GPUs: device must be 'auto', not {self.device}")
        return self


def classification_models() -> list[str]:
    """torchvision's classification model names (what a `crops` backbone may be)."""
    import torchvision  # only when a crops config is checked: `spine --help` stays fast

    return torchvision.models.list_models(module=torchvision.models)


def _check_family_settings(config: TrainConfig) -> None:
    """Refuse settings the config's family cannot use, naming the setting and what it takes."""
    family = config.model_family
    if family in ("seed", "localiser") and config.backbone not in RESNETS:
        what = "model family 'seed' (SpineNet)" if family == "seed" else "model family 'localiser'"
        raise ValueError(f"{what} needs a ResNet backbone {RESNETS}, not {config.backbone!r}")
    if family == "crops":
        if config.crop_slices % 2 == 0:
            raise ValueError(f"crop_slices must be odd (the point's slice in the middle), got {config.crop_slices}")
        if config.backbone not in classification_models():
            raise ValueError(
                f"unknown backbone {config.backbone!r} for model family 'crops': use a torchvision "
                "classification model, e.g. resnet18, resnet34, efficientnet_b0, convnext_tiny"
            )
