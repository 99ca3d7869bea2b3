"""Checks that run before any image is read or any GPU time is spent: one clear line when the
data folder, the output folder or the tracking server would fail the run later."""

from __future__ import annotations

import tempfile
from pathlib import Path

from spine_model.core.http import health_problem
from spine_model.data.ingest import check_data_dir


class SetupError(RuntimeError):
    """The machine is not ready for a run (an output folder not writable, no tracking server)."""


def check_writable(folder: str | Path) -> None:
    """`folder` (created when missing) takes a file."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as error:
        raise SetupError(f"output folder {path} is not writable ({error.strerror or error})") from None


def check_tracking(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """An HTTP tracking server answers its /health; a local store's folder is writable."""
    if tracking_uri.startswith(("http://", "https://")):
        problem = health_problem(tracking_uri.rstrip("/") + "/health", timeout_s)
        if problem is None:
            return
        raise SetupError(
            f"MLflow tracking server {tracking_uri} does not answer ({problem}); start it (`make stack`) or "
            "point --tracking-uri / MLFLOW_TRACKING_URI at one"
        )
    if tracking_uri.startswith("sqlite:///"):
        check_writable(Path(tracking_uri.removeprefix("sqlite:///")).parent)
    elif tracking_uri.startswith("file:") or "://" not in tracking_uri:
        check_writable(Path(tracking_uri.removeprefix("file://").removeprefix("file:")))


def preflight(data_dir: str | Path, workdir: str | Path, tracking_uri: str, split: str = "train") -> None:
    """All three checks, data first; raises DataError or SetupError with one line."""
    check_data_dir(data_dir, split)
    check_writable(workdir)
    check_tracking(tracking_uri)
