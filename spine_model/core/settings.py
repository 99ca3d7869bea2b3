"""Process-wide defaults for offline machines, set before Prefect or MLflow are imported."""

from __future__ import annotations

import os

OFFLINE_DEFAULTS = {
    # No telemetry: these machines have no internet, and users do not expect phoning home.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow wants the string "true"
    # Library log lines (ingest skips, epochs) show up in Prefect's run logs too.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "spine_model",
    # ... and outside a flow run (plain `spine ingest`, notebooks) they just go to the console.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def apply_offline_defaults() -> None:
    """Set each default unless the environment already chose a value."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
