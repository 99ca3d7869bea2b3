"""Data tasks: ingest and the volume store are cached on their inputs; the store also resumes on its own."""

from __future__ import annotations

import hashlib
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from spine_model.core.catalog import DatasetCache, StoreFiles
from spine_model.core.config import TrainConfig
from spine_model.core.constants import COORDINATES_CSV, TRAIN_CSV, series_descriptions_csv
from spine_model.core.files import file_fingerprint
from spine_model.data.validate import validate_data
from spine_model.data.volumes import StoreReport, sources_fingerprint
from spine_model.pipeline.data import IngestOutputs, ingest_step, series_to_store, store_step
from spine_model.pipeline.preflight import preflight
from spine_model.pipeline.run import PreparedRun, RunData, prepare_run
from tasks.retry import unless_bad_data

CACHE_FOR = timedelta(days=30)


def _key(name: str, *parts: object) -> str:
    return f"{name}-" + hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()


@task(name="preflight", cache_policy=NO_CACHE)
def preflight_task(data_dir: str, workdir: str, tracking_uri: str, split: str = "train") -> None:
    """Data folder, output folder and tracking server checked before any image is read."""
    preflight(data_dir, workdir, tracking_uri, split)


@task(name="validate-data", cache_policy=NO_CACHE)
def validate_task(data_dir: str, workers: int | None = None) -> dict[str, int]:
    """`spine validate`'s checks; its counts (for MLflow), or a DataError when the data is unusable."""
    report = validate_data(data_dir, "train", workers, progress=sys.stderr.isatty())
    get_run_logger().info(report.describe())
    report.raise_if_unusable()
    return report.counts()


def ingest_cache_key(context: TaskRunContext, parameters: dict) -> str:
    """Changes with the CSVs' content (and the folders); outputs are checked by `ingest`."""
    data_dir, out_dir = Path(parameters["data_dir"]).resolve(), Path(parameters["out_dir"]).resolve()
    inputs = [
        file_fingerprint(data_dir / name) for name in (TRAIN_CSV, COORDINATES_CSV, series_descriptions_csv("train"))
    ]
    return _key("ingest", data_dir, out_dir, *inputs)


@task(
    name="ingest",
    cache_key_fn=ingest_cache_key,
    cache_expiration=CACHE_FOR,
    persist_result=True,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=unless_bad_data,
)
def ingest_task(data_dir: str, out_dir: str) -> IngestOutputs:
    """Kaggle CSVs -> long table and per-study labels (parquet) in the data's cache folder."""
    return ingest_step(data_dir, DatasetCache(out_dir))


def ingest(data_dir: str, out_dir: str, **call_options) -> IngestOutputs:
    """ingest_task, cached unless its output files went missing since."""
    cache = DatasetCache(out_dir)
    missing = not (cache.long_table.is_file() and cache.labels.is_file())
    return ingest_task.with_options(refresh_cache=missing)(data_dir, out_dir, **call_options)


@task(name="read-tables", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def read_tables_task(ingested: IngestOutputs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long table, labels), read once for the steps of this flow run."""
    return ingested.read()


def store_cache_key(context: TaskRunContext, parameters: dict) -> str:
    """Changes with the series to store and with any of their DICOM files (one stat per file)."""
    data_dir, split = parameters["data_dir"], parameters["split"]
    series = series_to_store(data_dir, split, parameters.get("table"))
    return _key(
        "volume-store", Path(parameters["store_root"]).resolve(), parameters["size"],
        sources_fingerprint(data_dir, split, series),
    )  # fmt: skip


@task(
    name="build-volume-store",
    cache_key_fn=store_cache_key,
    cache_expiration=CACHE_FOR,
    persist_result=True,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=unless_bad_data,
)
def store_task(
    data_dir: str, split: str, store_root: str, size: int, workers: int | None = None, table: pd.DataFrame | None = None
) -> StoreReport:
    """DICOM -> the split's volume store (the table's series, else every listed one); resumes where it stopped."""
    series = series_to_store(data_dir, split, table)
    report = store_step(data_dir, split, series, store_root, size, workers, progress=sys.stderr.isatty())
    get_run_logger().info(report.describe())
    return report


def volume_store(
    data_dir: str,
    split: str,
    store_root: str,
    size: int,
    workers: int | None = None,
    table: pd.DataFrame | None = None,
    **call_options,
) -> StoreReport:
    """store_task, cached unless the store's index went missing since."""
    missing = not StoreFiles(store_root).index.is_file()
    return store_task.with_options(refresh_cache=missing)(
        data_dir, split, store_root, size, workers, table, **call_options
    )


@task(name="prepare-run", cache_policy=NO_CACHE)
def prepare_run_task(
    data: RunData, config: TrainConfig, run_dir: str, localiser_config: TrainConfig | None = None
) -> PreparedRun:
    """Points on the store, study split, priors: the run folder(s) the training flows read."""
    return prepare_run(data, config, run_dir, localiser_config)
