"""The pipeline's parameters: one pydantic model, the Prefect UI form, the CLI options and the MLflow params.

Kept free of Prefect imports so that `spine --help` stays fast.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from spine_model.config import TrainConfig
from spine_model.tracking import DEFAULT_EXPERIMENT

GPU_DEPLOYMENT = "train-on-gpu/spine-train-gpu"
LOCALISER_DEPLOYMENT = "train-localiser/spine-localiser-gpu"
LOCALISER_URI = "models:/spine-localiser@champion"


class PipelineConfig(TrainConfig):
    """Everything one pipeline run takes: the training settings plus data, outputs and dispatch."""

    data_dir: str = Field("spine_outputs/demo_data", description="Kaggle-layout data folder")
    workdir: str = Field("spine_outputs", description="folder for caches and run folders")
    experiment: str = Field(DEFAULT_EXPERIMENT, description="MLflow experiment")
    run_name: str | None = Field(None, description="run folder and MLflow run name (default: time + flow run name)")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)"
    )
    dispatch: Literal["local", "work-pool"] = Field("local", description="train in-process, or on the GPU work pool")

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        """A URI is logged as a param and kept in the run folder: credentials come from the environment."""
        if value and re.match(r"^[a-z+]+://[^/@]+@", value):
            raise ValueError(
                "tracking_uri must not hold credentials (they would be logged with the run): set "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN instead"
            )
        return value

    gpu_deployment: str = Field(GPU_DEPLOYMENT, description="deployment that trains when dispatch='work-pool'")
    dispatch_timeout_s: float = Field(6 * 3600, gt=0, description="how long to wait for the GPU flow run")
    compare_after: bool = Field(True, description="rank the experiment's runs and update the registry afterwards")
    validate_first: bool = Field(
        True, description="run `spine validate`'s checks before ingesting, counts to MLflow (reads each DICOM header)"
    )
    resume: str | None = Field(
        None,
        description="run folder of an interrupted run: go on from its last saved epoch, in its MLflow run, with "
        "its own settings (the other settings given are not used)",
    )
    model_name: str = Field("spine-net", description="registered model name for the champion/challenger aliases")
    champion_margin: float = Field(
        0.0, ge=0,
        description="champion only for a run whose validation score is below its own prior baseline's by more "
        "than this (competition-metric units); otherwise it stays challenger",
    )  # fmt: skip
    preprocess_workers: int | None = Field(
        None, ge=1, description="processes that build the volume store (default: all cores)"
    )
    localiser: Literal["auto", "train", "reuse", "off"] = Field(
        "auto",
        description="stage 1 for test-time points: 'train' a localiser beside the classifier, 'reuse' a "
        "registered one (localiser_uri), 'off' (coordinate prior only); 'auto': train for crops, off for seed",
    )
    localiser_uri: str = Field(LOCALISER_URI, description="the registered localiser that localiser='reuse' takes")
    localiser_backbone: str = Field("resnet18", description="localiser: ResNet trunk")
    localiser_image_size: int = Field(256, ge=32, le=1024, description="localiser: input slice size in pixels")
    localiser_epochs: int = Field(10, ge=1, description="localiser: training epochs")
    localiser_lr: float = Field(1e-3, gt=0, description="localiser: Adam learning rate")
    localiser_batch_size: int = Field(
        8, ge=1, description="localiser: series (sagittal) or labelled slices (axial) per batch"
    )
    localiser_deployment: str = Field(
        LOCALISER_DEPLOYMENT, description="deployment that trains the localiser when dispatch='work-pool'"
    )

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.model_dump(include=set(TrainConfig.model_fields)))

    def localiser_mode(self) -> str:
        """'train', 'reuse' or 'off', with 'auto' resolved by the model family."""
        if self.localiser != "auto":
            return self.localiser
        return "train" if self.model_family == "crops" else "off"

    def localiser_config(self) -> TrainConfig:
        """The localiser's training settings: its own fields, the rest shared with the classifier."""
        shared = self.model_dump(include=set(TrainConfig.model_fields))
        own = {
            "model_family": "localiser", "backbone": self.localiser_backbone, "image_size": self.localiser_image_size,
            "epochs": self.localiser_epochs, "lr": self.localiser_lr, "batch_size": self.localiser_batch_size,
            "gpus": 1,  # small batches of whole series: one GPU, beside the classifier's
        }  # fmt: skip
        return TrainConfig(**{**shared, **own})


class TrainRequest(BaseModel):
    """What the GPU flow needs: a run folder holding run.json, and where to log."""

    run_dir: str
    mlflow_run_id: str
    tracking_uri: str
    resume: bool = False  # go on from the run folder's last saved epoch
