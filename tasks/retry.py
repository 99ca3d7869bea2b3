"""When a task's retry can help: not when the input data is wrong, nor when training diverged, nor
when the process was asked to stop."""

from __future__ import annotations

from spine_model.core import interrupts
from spine_model.data.ingest import DataError
from spine_model.training.loop import TrainingDiverged, TrainingStopped


def unless_bad_data(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry a failure unless a retry would fail the same way (bad
    input stays bad; a training that diverged diverges again from the same checkpoint), nor after a
    stop signal (whatever failed then, e.g. a helper process that stopped, failed because of it)."""
    if interrupts.received() is not None:
        return False
    try:
        state.result()
    except (DataError, TrainingDiverged, TrainingStopped):
        return False
    except Exception:
        return True
    return True
