"""When a task's retry can help: not when the input data is wrong, nor when training diverged."""

from __future__ import annotations

from spine_model.ingest import DataError
from spine_model.train import TrainingDiverged


def unless_bad_data(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry a failure unless a retry would fail the same way (bad
    input stays bad; a training that diverged diverges again from the same checkpoint)."""
    try:
        state.result()
    except (DataError, TrainingDiverged):
        return False
    except Exception:
        return True
    return True
