"""Models logged into a run: the PyTorch model (torch.export format) with its requirements pinned."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np

from spine_model.tracking.runs import client, resolve_tracking_uri, whole_calls

# What a logged model needs at load time, pinned to this environment's versions. Given explicitly,
# because MLflow's own inference of them loads the model in a subprocess (about 20 s a model).
MODEL_REQUIREMENTS = (
    "torch", "torchvision", "numpy", "pandas", "pyarrow", "scikit-learn", "pydicom", "pillow", "pydantic", "tqdm",
)  # fmt: skip


def pinned_requirements() -> list[str]:
    """MODEL_REQUIREMENTS as `package==version` of the installed packages (local version labels dropped)."""
    from importlib import metadata

    return [f"{package}=={metadata.version(package).split('+')[0]}" for package in MODEL_REQUIREMENTS]


@contextmanager
def active_run(run_id: str, tracking_uri: str | None = None) -> Iterator[None]:
    """Make `run_id` MLflow's active run in this thread (for log_model calls), then give it back;
    on a sqlite store, a stop signal waits for the end of the block.

    Leaving mlflow.start_run's block marks the run FINISHED; the pipeline ends its run itself, so
    the status goes back to RUNNING here.
    """
    import mlflow

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    with whole_calls(tracking_uri), mlflow.start_run(run_id=run_id):
        yield
    client(tracking_uri).update_run(run_id, status="RUNNING")


def log_pytorch_model(model, example_inputs: Mapping[str, np.ndarray], name: str = "model") -> str:
    """Log `model` into the active run with mlflow.pytorch (torch.export format); returns its URI.

    example_inputs: the model's positional inputs by name, in order (a model family's
    `input_names`), batch first. MLflow 3.14+'s torch.export serialisation of a multi-input model
    needs an explicit TensorSpec signature plus an input example; then
    mlflow.pytorch.load_model(uri)(*inputs) gives the same outputs as the live model.
    """
    import mlflow
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    examples = {key: np.ascontiguousarray(value) for key, value in example_inputs.items()}
    model = model.to("cpu").eval()
    with torch.no_grad():
        example_output = model(*(torch.from_numpy(value) for value in examples.values()))
    signature = ModelSignature(
        inputs=Schema([TensorSpec(value.dtype, (-1, *value.shape[1:]), key) for key, value in examples.items()]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, *example_output.shape[1:]))]),
    )
    info = mlflow.pytorch.log_model(
        model, name=name, signature=signature, input_example=list(examples.values()),
        pip_requirements=pinned_requirements(),
    )  # fmt: skip
    return info.model_uri
