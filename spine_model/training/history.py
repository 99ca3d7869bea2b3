"""What training reports: each epoch's figures, the run's history, and the run folder's epoch log
(one JSON line per epoch, written by the training process, read by whoever waits for it)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


@dataclass
class FitResult:
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = float("inf")

    def history_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(stats) for stats in self.history])


class EpochLog:
    """A run folder's `epochs.jsonl`: rank 0 appends a line per epoch; a parent flow on another
    machine, or torchrun's launcher, reads the lines that are new since its last look."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, stats: EpochStats) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(asdict(stats)) + "\n")

    def clear(self) -> None:
        """A fresh start: the epochs of an earlier training of the folder go."""
        self.path.unlink(missing_ok=True)

    def read(self) -> list[EpochStats]:
        """Every complete line's epoch, in order (the trainer may be writing the next line)."""
        if not self.path.is_file():
            return []
        text = self.path.read_text()
        return [EpochStats(**json.loads(line)) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]
