"""The serving model's code, which MLflow logs as a file (models-from-code) and runs at load time:
nothing of the model is pickled, so loading it runs only this package's code."""

import mlflow

from spine_model.serving.pyfunc import SpineModel

mlflow.models.set_model(SpineModel())
