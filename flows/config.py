"""The pipeline's parameters: one pydantic model, the Prefect UI form, the CLI options and the MLflow params.

Kept free of Prefect imports so that `spine --help` stays fast.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from spine_model.core.catalog import DEFAULT_WORKDIR, DEMO_DATA, LOCALISER_URI, MODEL_NAME
from spine_model.core.config import FAMILY_DEFAULTS, TrainConfig
from spine_model.tracking import DEFAULT_EXPERIMENT

GPU_DEPLOYMENT = "train-on-gpu/spine-train-gpu"
LOCALISER_DEPLOYMENT = "train-localiser/spine-localiser-gpu"


# The run form (Prefect UI), `spine train --help` and the README list the settings in this order,
# as a person fills them: data, model, localiser, training, hardware, dispatch, tracking. Each
# field's title (its `Field(title=...)`) follows its section's name in the form.
FORM: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Data", (
        "data_dir", "val_fraction", "split_seed", "validate_first", "store_size", "preprocess_workers",
    )),
    ("Model", (
        "model_family", "backbone", "pretrained", "image_size", "crop_slices", "crop_size", "crop_fraction",
        "crop_mm", "crop_pooling", "crop_jitter", "crop_jitter_slices",
    )),
    ("Localiser", (
        "localiser", "localiser_uri", "localiser_backbone", "localiser_image_size", "localiser_epochs",
        "localiser_lr", "localiser_batch_size",
    )),
    ("Training", (
        "epochs", "batch_size", "lr", "weight_decay", "class_weights", "augment", "lr_patience", "lr_factor",
        "grad_clip", "seed", "restore_best",
    )),
    ("Hardware", (
        "device", "gpus", "num_workers", "amp", "channels_last", "compile", "cudnn_benchmark",
    )),
    ("Dispatch", (
        "dispatch", "gpu_deployment", "localiser_deployment", "dispatch_timeout_s",
    )),
    ("Tracking", (
        "experiment", "tracking_uri", "model_name", "compare_after", "champion_margin", "workdir", "resume",
        "parent_run_id", "run_name",
    )),
)  # fmt: skip
FORM_ORDER = tuple(name for _, fields in FORM for name in fields)
# Not in the run form: the Prefect run's own name names the run folder and the MLflow run.
CLI_ONLY = ("run_name",)
EMPTY_MEANS_NONE = {
    "run_name": "", "tracking_uri": "", "resume": "", "preprocess_workers": 0, "lr": 0, "batch_size": 0,
    "parent_run_id": "",
}  # fmt: skip


def form_order(form=FORM) -> tuple[str, ...]:
    return tuple(name for _, fields in form for name in fields)


def _form_schema(schema: dict, model: type) -> None:
    """The JSON schema Prefect renders as the run form: fields in the model's form order with their
    section and title, a `position` each, no str/None switch (an empty value or 0 stands for "the
    default", said in the title), and no item-count hint under the class weights."""
    properties = schema["properties"]
    sections = {name: section for section, fields in model.form for name in fields}
    ordered = {}
    for position, name in enumerate(name for name in form_order(model.form) if name not in CLI_ONLY):
        field = properties[name]
        if "anyOf" in field:  # Optional[X]: shown as X, its empty value meaning None
            field.update(next(option for option in field.pop("anyOf") if option.get("type") != "null"))
            field["default"] = EMPTY_MEANS_NONE[name]
            if "minimum" in field or "exclusiveMinimum" in field:  # 0 itself stands for the default
                field["minimum"] = min(field.get("minimum", 0), field.pop("exclusiveMinimum", 0), 0)
        field.pop("minItems", None), field.pop("maxItems", None)
        ordered[name] = {**field, "title": f"{sections[name]}: {field['title']}", "position": position}
    schema["properties"] = ordered
    # The settings the form does not show (run_name) may still come through the API; pydantic
    # refuses unknown ones when the flow starts.
    schema.pop("additionalProperties", None)


def section_of(name: str, form=FORM) -> str:
    return next(section for section, fields in form if name in fields)


def settings_markdown() -> str:
    """The README's table of settings, in the form's order (a test keeps the README in step)."""
    rows = ["| section | setting (`spine train` option) | default | what |", "|---|---|---|---|"]
    for section, fields in FORM:
        for name in fields:
            field = PipelineConfig.model_fields[name]
            default = field.default if field.default is not None else ""
            what = (field.description or "").replace("|", "/")
            rows.append(f"| {section} | `--{name.replace('_', '-')}` | `{default}` | {what} |")
    return "\n".join(rows)


class PipelineConfig(TrainConfig):
    """Everything one pipeline run takes: the training settings plus data, outputs and dispatch."""

    model_config = ConfigDict(**TrainConfig.model_config, json_schema_extra=_form_schema)
    form: ClassVar = FORM  # the run form's sections, in the order a person fills them

    data_dir: str = Field(str(DEMO_DATA), title="data folder (Kaggle layout)", description="Kaggle-layout data folder")
    workdir: str = Field(str(DEFAULT_WORKDIR), title="outputs folder", description="folder for caches and run folders")
    experiment: str = Field(DEFAULT_EXPERIMENT, title="MLflow experiment", description="MLflow experiment")
    run_name: str | None = Field(
        None, title="run name", description="run folder and MLflow run name (default: time + flow run name)"
    )
    tracking_uri: str | None = Field(
        None,
        title="MLflow tracking URI (empty: default)",
        description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)",
    )
    dispatch: Literal["local", "work-pool"] = Field(
        "local", title="where training runs", description="train in-process, or on the GPU work pool"
    )

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

    parent_run_id: str | None = Field(
        None, title="nest in MLflow run (empty: none)",
        description="MLflow run id to nest this run in (a sweep's trials are nested in the sweep's run)",
    )  # fmt: skip
    gpu_deployment: str = Field(
        GPU_DEPLOYMENT,
        title="GPU deployment (classifier)",
        description="deployment that trains when dispatch='work-pool'",
    )
    dispatch_timeout_s: float = Field(
        6 * 3600,
        gt=0,
        title="wait for the GPU runs (seconds)",
        description="how long to wait for the GPU flow runs, in seconds (default 6 hours)",
    )
    compare_after: bool = Field(
        True,
        title="compare and update the registry after",
        description="rank the experiment's runs and update the registry afterwards",
    )
    validate_first: bool = Field(
        True,
        title="check the data first",
        description="run `spine validate`'s checks before ingesting, counts to MLflow (reads each DICOM header)",
    )
    resume: str | None = Field(
        None,
        title="resume a run folder (empty: a new run)",
        description="run folder of an interrupted run: go on from its last saved epoch, in its MLflow run, with "
        "its own settings (the other settings given are not used)",
    )
    model_name: str = Field(
        MODEL_NAME,
        title="registered model name",
        description="registered model name for the champion/challenger aliases",
    )
    champion_margin: float = Field(
        0.0, ge=0,
        title="champion margin over the prior baseline",
        description="champion only for a run whose validation score is below its own prior baseline's by more "
        "than this (competition-metric units); otherwise it stays challenger",
    )  # fmt: skip
    preprocess_workers: int | None = Field(
        None,
        ge=1,
        title="store-building processes (0: all cores)",
        description="processes that build the volume store (default: all cores)",
    )
    localiser: Literal["auto", "train", "reuse", "off"] = Field(
        "auto",
        title="localiser (stage 1)",
        description="stage 1 for test-time points: 'train' a localiser beside the classifier, 'reuse' a "
        "registered one (localiser_uri), 'off' (coordinate prior only); 'auto': train for crops, off for seed",
    )
    localiser_uri: str = Field(
        LOCALISER_URI,
        title="registered localiser to reuse",
        description="the registered localiser that localiser='reuse' takes",
    )
    localiser_backbone: str = Field("resnet18", title="localiser backbone", description="localiser: ResNet trunk")
    localiser_image_size: int = Field(
        256, ge=32, le=1024, title="localiser slice size (pixels)", description="localiser: input slice size in pixels"
    )
    localiser_epochs: int = Field(10, ge=1, title="localiser epochs", description="localiser: training epochs")
    localiser_lr: float = Field(
        FAMILY_DEFAULTS["localiser"]["lr"],
        gt=0,
        title="localiser learning rate",
        description="localiser: Adam learning rate",
    )
    localiser_batch_size: int = Field(
        FAMILY_DEFAULTS["localiser"]["batch_size"], ge=1,
        title="localiser batch size", description="localiser: series (sagittal) or labelled slices (axial) per batch",
    )  # fmt: skip
    localiser_deployment: str = Field(
        LOCALISER_DEPLOYMENT,
        title="GPU deployment (localiser)",
        description="deployment that trains the localiser when dispatch='work-pool'",
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


# `cross-validate`'s form: the pipeline's, with the folds after the data.
CV_FORM = (FORM[0], ("Cross-validation", ("folds",)), *FORM[1:])


class CVConfig(PipelineConfig):
    """A cross-validation: the pipeline's settings, trained once per fold."""

    form: ClassVar = CV_FORM

    folds: int = Field(
        5, ge=2, le=20, title="folds",
        description="folds by study, stratified on the studies' severity profiles (split_seed); each trains "
        "as `spine train` does, validated on its own studies; val_fraction is not used",
    )  # fmt: skip
