"""The serving model: an MLflow pyfunc that turns a frame of image references into submission rows.

Input columns: study_id, series_id, instance_number, image_path (a DICOM file the server can
read), and optional series_description, x, y. Output: row_id, normal_mild, moderate, severe, 25
rows per study. It loads with `mlflow.pyfunc.load_model` and serves with `mlflow models serve`.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from spine_model.constants import SEVERITY_COLUMNS

PYFUNC_NAME = "spine-net"
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
        ]
    ),
    outputs=Schema([ColSpec("string", "row_id"), *(ColSpec("double", column) for column in SEVERITY_COLUMNS)]),
)
_REQUIREMENTS = ("torch", "torchvision", "numpy", "pandas", "pyarrow", "scikit-learn", "pydicom", "pillow", "tqdm")


class SpineNetModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around spine_model.inference.Predictor."""

    def load_context(self, context) -> None:
        from spine_model.inference import Predictor

        self.predictor = Predictor.load(context.artifacts["weights"], context.artifacts["priors"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.predictor.predict(model_input)


def log_pyfunc_model(checkpoint: Path, priors: Path, input_example: pd.DataFrame, name: str = PYFUNC_NAME) -> str:
    """Log the serving model into the active MLflow run (the caller opens it); returns its URI.

    The library's code travels with the model (code_paths), so a serving host needs only the
    pinned requirements, not this repository.
    """
    requirements = [f"{package}=={metadata.version(package).split('+')[0]}" for package in _REQUIREMENTS]
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=SpineNetModel(),
        artifacts={"weights": str(checkpoint), "priors": str(priors)},
        signature=SIGNATURE,
        input_example=input_example,
        code_paths=[str(Path(__file__).resolve().parents[1])],
        pip_requirements=requirements,
    )
    return info.model_uri


def predict_with_model(model_uri: str, frame: pd.DataFrame, tracking_uri: str | None = None):
    """Load a serving model (e.g. models:/spine-net@champion) and predict `frame`.

    Returns (submission, class prior of its training split) so that callers can print the
    model's score beside the prior baseline's.
    """
    from spine_model.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    loaded = mlflow.pyfunc.load_model(model_uri)
    submission = loaded.predict(frame)
    return submission, loaded.unwrap_python_model().predictor.class_prior
