"""Per-epoch metrics that outlive a tracking server outage (a file in the run folder first)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from spine_model.core.files import atomic_write
from spine_model.tracking.runs import MAX_BATCH, answers, client, resolve_tracking_uri

log = logging.getLogger(__name__)


class MetricBuffer:
    """Per-epoch metrics that outlive a tracking server outage.

    Each epoch's metrics are appended to a local JSON-lines file (in the run folder) first, then
    everything pending is sent in one quick attempt; what cannot be sent stays in the file for the
    next epoch, for `flush` at the end of training, and for a resumed run. Training never waits
    more than a few seconds on MLflow, and no metric is lost while the file is kept.
    """

    def __init__(self, run_id: str, tracking_uri: str | None, path: str | Path) -> None:
        self.run_id, self.tracking_uri, self.path = run_id, tracking_uri, Path(path)

    def pending(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def log(self, metrics: Mapping[str, float], step: int) -> bool:
        """Keep one step's metrics, then try to send all pending ones; True when none is left."""
        stamp = int(time.time() * 1000)
        rows = [
            {"key": k, "value": float(v), "timestamp": stamp, "step": int(step)}
            for k, v in metrics.items()
            if v is not None and np.isfinite(v)
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
            handle.flush()
            os.fsync(handle.fileno())
        return self.flush(quick=True)

    def flush(self, quick: bool = False) -> bool:
        """Send every pending metric; True when all went (the file is then emptied)."""
        from mlflow.entities import Metric

        rows = self.pending()
        if not rows:
            return True
        metrics = [Metric(row["key"], row["value"], row["timestamp"], row["step"]) for row in rows]
        sent = 0
        try:
            if quick and not answers(self.tracking_uri):
                raise ConnectionError("no answer from its /health within 3 s")
            mlflow_client = client(self.tracking_uri)
            for start in range(0, len(metrics), MAX_BATCH):
                mlflow_client.log_batch(self.run_id, metrics=metrics[start : start + MAX_BATCH])
                sent = min(start + MAX_BATCH, len(metrics))
        except Exception as error:  # any failure of the server or the network: keep them for later
            self._keep(rows[sent:])
            log.warning(
                "MLflow at %s did not take %d metric(s) (%s: %s); kept in %s, sent later",
                resolve_tracking_uri(self.tracking_uri), len(rows) - sent, type(error).__name__, str(error)[:200],
                self.path,
            )  # fmt: skip
            return False
        self._keep([])
        return True

    def _keep(self, rows: list[dict]) -> None:
        payload = "".join(json.dumps(row) + "\n" for row in rows).encode()
        atomic_write(self.path, lambda handle: handle.write(payload))
