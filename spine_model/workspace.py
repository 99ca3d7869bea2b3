"""Where a run's outputs go: everything under one working folder, never into the data folder.

    {root}/cache/{data-name}-{hash}/train_long.parquet     ingested long table
    {root}/cache/{data-name}-{hash}/png_{size}/...          preprocessed images (PngImageStore)
    {root}/runs/{run-name}/                                 one training run (see RunRecord)

Real Kaggle data is often read-only, so the default root is ./spine_outputs in the current
working directory.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from spine_model.config import TrainConfig
from spine_model.image_store import PngImageStore
from spine_model.split import StudySplit

DEFAULT_ROOT = Path("spine_outputs")


class Workspace:
    """Paths of caches and runs under one root folder."""

    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        self.root = Path(root).resolve()

    def dataset_dir(self, data_dir: str | Path) -> Path:
        """Cache folder of one data folder: its name plus a hash of its absolute path."""
        data_dir = Path(data_dir).resolve()
        digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:8]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", data_dir.name) or "data"
        return self.root / "cache" / f"{name}-{digest}"

    def long_table_path(self, data_dir: str | Path) -> Path:
        return self.dataset_dir(data_dir) / "train_long.parquet"

    def image_store_root(self, data_dir: str | Path, image_size: int, split: str = "train") -> Path:
        return self.dataset_dir(data_dir) / f"{split}_png_{image_size}"

    def image_store(self, data_dir: str | Path, image_size: int, split: str = "train") -> PngImageStore:
        return PngImageStore(self.image_store_root(data_dir, image_size, split))

    def run_dir(self, run_name: str) -> Path:
        return self.root / "runs" / run_name


@dataclass
class RunRecord:
    """A run folder's inputs, so that it can be evaluated again: paths, config and split."""

    data_dir: str
    table_path: str
    labels_path: str
    store_root: str
    slices_path: str  # slice order of the labelled series (for the coordinate prior)
    config: TrainConfig
    split: StudySplit

    FILE = "run.json"

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / self.FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = {k: getattr(self, k) for k in ("data_dir", "table_path", "labels_path", "store_root", "slices_path")}
        payload = {**fields, "config": self.config.model_dump(mode="json"), **self.split.to_dict()}
        path.write_text(json.dumps(payload, indent=2))
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> RunRecord:
        path = Path(run_dir) / cls.FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {run_dir} is not a run folder written by `spine train`")
        data = json.loads(path.read_text())
        return cls(
            data["data_dir"], data["table_path"], data["labels_path"], data["store_root"], data["slices_path"],
            TrainConfig(**data["config"]), StudySplit.from_dict(data),
        )  # fmt: skip


def file_fingerprint(path: str | Path, content: bool = True) -> str:
    """sha256 of a file's bytes (or, with content=False, of its size and mtime); 'missing' if absent."""
    path = Path(path)
    if not path.is_file():
        return f"missing:{path}"
    if not content:
        stat = path.stat()
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
