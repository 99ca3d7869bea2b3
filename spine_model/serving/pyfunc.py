"""The serving model: an MLflow pyfunc that turns a frame of image references into submission rows.

Input columns: study_id, series_id, instance_number, image_path (a DICOM file the server can
read), and optional series_description, x, y, condition, level. Output: row_id, normal_mild,
moderate, severe, 25 rows per study. Works for every model family. It loads with
`mlflow.pyfunc.load_model` and serves with `mlflow models serve`. The optional param
`volume_store` names a volume store built beforehand (`spine preprocess --split test`); without
it the model decodes the frame's DICOM files itself, through the same code.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from spine_model.core.catalog import MODEL_NAME
from spine_model.core.constants import SEVERITY_COLUMNS
from spine_model.tracking.models import pinned_requirements
from spine_model.tracking.runs import resolve_tracking_uri

PYFUNC_NAME = MODEL_NAME  # the serving model's name within its run
STORE_SIZE = "store_size"
SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("long", "study_id"),
            ColSpec("long", "series_id"),
            ColSpec("long", "instance_number"),
            ColSpec("string", "image_path"),
            ColSpec("string", "series_description", required=False),
            ColSpec("double", "x", required=False),
            ColSpec("double", "y", required=False),
            ColSpec("string", "condition", required=False),
            ColSpec("string", "level", required=False),
        ]
    ),
    outputs=Schema([ColSpec("string", "row_id"), *(ColSpec("double", column) for column in SEVERITY_COLUMNS)]),
    params=ParamSchema([ParamSpec("volume_store", "string", "")]),
)


class SpineModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around spine_model.inference.predictor.Predictor (any model family)."""

    def load_context(self, context) -> None:
        from spine_model.inference.predictor import Predictor

        artifacts = context.artifacts
        members = sorted((key for key in artifacts if key.startswith("weights")), key=lambda key: (len(key), key))
        temperatures = json.loads(Path(artifacts["calibration"]).read_text()) if "calibration" in artifacts else {}
        self.predictor = Predictor.load(
            [artifacts[key] for key in members], artifacts["priors"], localiser=artifacts.get("localiser"),
            temperatures=temperatures,
        )  # fmt: skip

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from spine_model.data.volumes import VolumeStore

        store_root = (params or {}).get("volume_store")
        return self.predictor.predict(model_input, VolumeStore(store_root) if store_root else None)


def log_pyfunc_model(
    checkpoint: Path | list[Path],
    priors: Path,
    input_example: pd.DataFrame,
    store_size: int,
    localiser: Path | None = None,
    name: str = PYFUNC_NAME,
    temperatures: dict[str, float] | None = None,
) -> str:
    """Log the serving model into the active MLflow run (the caller opens it); returns its URI.

    The library's code travels with the model (code_paths), so a serving host needs only the
    pinned requirements, not this repository; the model itself is that code (MLflow models-from-
    code, `model.py`), not a pickled object. With `localiser` (a localiser checkpoint), studies
    without given points get the localiser's points, the coordinate prior's where it finds none.
    The model's metadata records the volume store size it reads (see `serving_store_size`). Several
    checkpoints make an ensemble (their probabilities averaged: the folds of `spine cv`), and
    `temperatures` (per condition group) calibrate what it predicts.
    """
    requirements = pinned_requirements()
    checkpoints = checkpoint if isinstance(checkpoint, list | tuple) else [checkpoint]
    weights = {("weights" if i == 0 else f"weights_{i}"): str(path) for i, path in enumerate(checkpoints)}
    calibration = {}
    if temperatures:
        path = Path(tempfile.mkdtemp(prefix="spine-calibration-")) / "calibration.json"
        path.write_text(json.dumps(temperatures, indent=2))
        calibration = {"calibration": str(path)}
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("model.py")),  # models-from-code: no cloudpickle
        artifacts={
            **weights,
            "priors": str(priors),
            **({"localiser": str(localiser)} if localiser else {}),
            **calibration,
        },
        signature=SIGNATURE,
        input_example=input_example,
        code_paths=[str(Path(__file__).resolve().parents[1])],
        pip_requirements=requirements,
        metadata={
            STORE_SIZE: store_size,
            "localiser": localiser is not None,
            "members": len(checkpoints),
            "temperatures": dict(temperatures or {}),
        },  # fmt: skip
    )
    return info.model_uri


def serving_store_size(model_uri: str, tracking_uri: str | None = None) -> int:
    """The volume store size a serving model reads, from its metadata (without loading the model)."""
    from mlflow.models import get_model_info

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    metadata = get_model_info(model_uri).metadata or {}
    if STORE_SIZE not in metadata:
        raise ValueError(f"{model_uri} records no {STORE_SIZE}: it was logged before volume stores; retrain it")
    return int(metadata[STORE_SIZE])


def load_serving_model(model_uri: str, tracking_uri: str | None = None):
    """A serving model (e.g. models:/spine-net@champion), loaded."""
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    return mlflow.pyfunc.load_model(model_uri)


def predict_with_model(loaded, frame: pd.DataFrame, volume_store: str | None = None):
    """Predict `frame` with a loaded serving model, reading pixels from `volume_store` when given.

    Returns (submission, class prior of its training split) so that callers can print the
    model's score beside the prior baseline's.
    """
    submission = loaded.predict(frame, params={"volume_store": str(volume_store)} if volume_store else None)
    return submission, loaded.unwrap_python_model().predictor.class_prior
