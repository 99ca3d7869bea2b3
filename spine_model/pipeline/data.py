"""Data steps: the Kaggle CSVs ingested into the cache, and the series a volume store needs, decoded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from spine_model.core.catalog import DatasetCache
from spine_model.data.ingest import build_long_table, load_series_descriptions, write_table
from spine_model.data.volumes import StoreReport, build_volume_store


@dataclass
class IngestOutputs:
    table_path: str
    labels_path: str
    rows: int
    studies: int
    skipped: dict[str, int] = field(default_factory=dict)
    summary: str = ""

    def read(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(long table, labels), read once by the process that needs them."""
        return pd.read_parquet(self.table_path), pd.read_parquet(self.labels_path)


def ingest_step(data_dir: str | Path, cache: DatasetCache) -> IngestOutputs:
    """Kaggle CSVs -> the cache's long table and per-study labels (parquet)."""
    result = build_long_table(data_dir)
    table_path = write_table(result.table, cache.long_table)
    labels_path = write_table(result.labels, cache.labels)
    return IngestOutputs(
        str(table_path), str(labels_path), len(result.table), int(result.table["study_id"].nunique()),
        dict(result.skipped), result.describe(),
    )  # fmt: skip


def series_to_store(data_dir: str | Path, split: str, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The series a volume store needs: those of `table` (for training, the long table's labelled
    series), else every series that `{split}_series_descriptions.csv` lists."""
    series = table if table is not None else load_series_descriptions(data_dir, split)
    return series[["study_id", "series_id", "series_description"]].drop_duplicates(["study_id", "series_id"])


def store_step(
    data_dir: str | Path,
    split: str,
    series: pd.DataFrame,
    store_root: str | Path,
    size: int,
    workers: int | None = None,
    progress: bool = True,
) -> StoreReport:
    """The split's series into the volume store at `store_root` (resumable; see build_volume_store)."""
    return build_volume_store(data_dir, split, series, store_root, size, workers, progress)
