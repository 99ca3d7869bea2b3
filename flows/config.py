"""The pipeline's parameters: one pydantic model, the Prefect UI form, the CLI options and the MLflow params.

Kept free of Prefect imports so that `spine --help` stays fast.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from spine_model.config import FAMILY_DEFAULTS, TrainConfig
from spine_model.tracking import DEFAULT_EXPERIMENT

GPU_DEPLOYMENT = "train-on-gpu/spine-train-gpu"
LOCALISER_DEPLOYMENT = "train-localiser/spine-localiser-gpu"
LOCALISER_URI = "models:/spine-localiser@champion"


# The run form (Prefect UI), `spine train --help` and the README list the settings in this order,
# as a person fills them: data, model, localiser, training, hardware, dispatch, tracking. Each is
# (field, title); the section is the title's prefix in the form.
FORM: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Data", (
        ("data_dir", "data folder (Kaggle layout)"), ("val_fraction", "validation share of studies"),
        ("split_seed", "split seed"), ("validate_first", "check the data first"),
        ("store_size", "volume store size (pixels)"), ("preprocess_workers", "store-building processes (0: all cores)"),
    )),
    ("Model", (
        ("model_family", "model family"), ("backbone", "backbone (torchvision model)"),
        ("pretrained", "ImageNet weights"),
        ("image_size", "slice size (pixels, seed)"), ("crop_slices", "slices per crop (crops)"),
        ("crop_size", "crop size (pixels, crops)"), ("crop_fraction", "crop side, share of the image (crops)"),
        ("crop_mm", "crop side (millimetres, crops; 0: use the share)"), ("crop_pooling", "slice pooling (crops)"),
        ("crop_jitter", "point jitter, share of the crop (crops)"), ("crop_jitter_slices", "slice jitter (crops)"),
    )),
    ("Localiser", (
        ("localiser", "localiser (stage 1)"), ("localiser_uri", "registered localiser to reuse"),
        ("localiser_backbone", "localiser backbone"), ("localiser_image_size", "localiser slice size (pixels)"),
        ("localiser_epochs", "localiser epochs"), ("localiser_lr", "localiser learning rate"),
        ("localiser_batch_size", "localiser batch size"),
    )),
    ("Training", (
        ("epochs", "training epochs"), ("batch_size", "batch size (0: the family's)"),
        ("lr", "learning rate (0: the family's)"),
        ("weight_decay", "weight decay"), ("class_weights", "class weights (Normal/Mild, Moderate, Severe)"),
        ("augment", "augmentation"), ("lr_patience", "learning-rate patience (epochs)"),
        ("lr_factor", "learning-rate decay factor"), ("grad_clip", "gradient clipping (norm; 0: off)"),
        ("seed", "random seed"), ("restore_best", "keep the best epoch's weights"),
    )),
    ("Hardware", (
        ("device", "device (auto, cpu, cuda, cuda:N)"), ("gpus", "GPUs (one node)"),
        ("num_workers", "loader worker processes"),
        ("amp", "bfloat16 autocast (CUDA)"), ("channels_last", "channels-last memory order"),
        ("compile", "torch.compile"), ("cudnn_benchmark", "cuDNN autotuning"),
    )),
    ("Dispatch", (
        ("dispatch", "where training runs"), ("gpu_deployment", "GPU deployment (classifier)"),
        ("localiser_deployment", "GPU deployment (localiser)"),
        ("dispatch_timeout_s", "wait for the GPU runs (seconds)"),
    )),
    ("Tracking", (
        ("experiment", "MLflow experiment"), ("tracking_uri", "MLflow tracking URI (empty: default)"),
        ("model_name", "registered model name"), ("compare_after", "compare and update the registry after"),
        ("champion_margin", "champion margin over the prior baseline"), ("workdir", "outputs folder"),
        ("resume", "resume a run folder (empty: a new run)"), ("run_name", "run name"),
    )),
)  # fmt: skip
FORM_ORDER = tuple(name for _, fields in FORM for name, _ in fields)
# Not in the run form: the Prefect run's own name names the run folder and the MLflow run.
CLI_ONLY = ("run_name",)
EMPTY_MEANS_NONE = {
    "run_name": "", "tracking_uri": "", "resume": "", "preprocess_workers": 0, "lr": 0, "batch_size": 0,
}  # fmt: skip


def _form_schema(schema: dict, model: type) -> None:
    """The JSON schema Prefect renders as the run form: fields in FORM order with their section and
    title, a `position` each, no str/None switch (an empty value or 0 stands for "the default",
    said in the title), and no item-count hint under the class weights."""
    properties = schema["properties"]
    titles = {name: f"{section}: {title}" for section, fields in FORM for name, title in fields}
    ordered = {}
    for position, name in enumerate(name for name in FORM_ORDER if name not in CLI_ONLY):
        field = properties[name]
        if "anyOf" in field:  # Optional[X]: shown as X, its empty value meaning None
            field.update(next(option for option in field.pop("anyOf") if option.get("type") != "null"))
            field["default"] = EMPTY_MEANS_NONE[name]
            if "minimum" in field or "exclusiveMinimum" in field:  # 0 itself stands for the default
                field["minimum"] = min(field.get("minimum", 0), field.pop("exclusiveMinimum", 0), 0)
        field.pop("minItems", None), field.pop("maxItems", None)
        ordered[name] = {**field, "title": titles[name], "position": position}
    schema["properties"] = ordered
    # The settings the form does not show (run_name) may still come through the API; pydantic
    # refuses unknown ones when the flow starts.
    schema.pop("additionalProperties", None)


def section_of(name: str) -> str:
    return next(section for section, fields in FORM if any(field == name for field, _ in fields))


def settings_markdown() -> str:
    """The README's table of settings, in the form's order (a test keeps the README in step)."""
    rows = ["| section | setting (`spine train` option) | default | what |", "|---|---|---|---|"]
    for section, fields in FORM:
        for name, _ in fields:
            field = PipelineConfig.model_fields[name]
            default = field.default if field.default is not None else ""
            what = (field.description or "").replace("|", "/")
            rows.append(f"| {section} | `--{name.replace('_', '-')}` | `{default}` | {what} |")
    return "\n".join(rows)


class PipelineConfig(TrainConfig):
    """Everything one pipeline run takes: the training settings plus data, outputs and dispatch."""

    model_config = ConfigDict(**TrainConfig.model_config, json_schema_extra=_form_schema)

    data_dir: str = Field("spine_outputs/demo_data", description="Kaggle-layout data folder")
    workdir: str = Field("spine_outputs", description="folder for caches and run folders")
    experiment: str = Field(DEFAULT_EXPERIMENT, description="MLflow experiment")
    run_name: str | None = Field(None, description="run folder and MLflow run name (default: time + flow run name)")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)"
    )
    dispatch: Literal["local", "work-pool"] = Field("local", description="train in-process, or on the GPU work pool")

    @field_validator(*EMPTY_MEANS_NONE, mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        """The form's empty value (or 0 workers, 0 lr, batch size 0) for "the default"."""
        return None if value in ("", 0) else value

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
    dispatch_timeout_s: float = Field(
        6 * 3600, gt=0, description="how long to wait for the GPU flow runs, in seconds (default 6 hours)"
    )
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
    localiser_lr: float = Field(FAMILY_DEFAULTS["localiser"]["lr"], gt=0, description="localiser: Adam learning rate")
    localiser_batch_size: int = Field(
        FAMILY_DEFAULTS["localiser"]["batch_size"], ge=1,
        description="localiser: series (sagittal) or labelled slices (axial) per batch",
    )  # fmt: skip
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
