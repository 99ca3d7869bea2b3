"""Data tasks: ingest and split are cached on their inputs' content; preprocessing retries."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

from prefect import task
from prefect.context import TaskRunContext

from spine_model.constants import COORDINATES_CSV, TRAIN_CSV, series_descriptions_csv
from spine_model.split import StudySplit
from spine_model.steps import (
    IngestOutputs,
    PreprocessOutputs,
    index_step,
    ingest_step,
    preprocess_step,
    split_step,
)
from spine_model.workspace import file_fingerprint

CACHE_FOR = timedelta(days=30)


def _key(name: str, *parts: object) -> str:
    return f"{name}-" + hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()


def ingest_cache_key(context: TaskRunContext, parameters: dict) -> str:
    """Changes with the CSVs' content (and the folders); outputs are checked by `ingest`."""
    data_dir, out_dir = Path(parameters["data_dir"]).resolve(), Path(parameters["out_dir"]).resolve()
    inputs = [
        file_fingerprint(data_dir / name) for name in (TRAIN_CSV, COORDINATES_CSV, series_descriptions_csv("train"))
    ]
    return _key("ingest", data_dir, out_dir, *inputs)


def split_cache_key(context: TaskRunContext, parameters: dict) -> str:
    return _key(
        "split", file_fingerprint(parameters["table_path"]), parameters["val_fraction"], parameters["seed"],
        Path(parameters["out_path"]).resolve(),
    )  # fmt: skip


def index_cache_key(context: TaskRunContext, parameters: dict) -> str:
    return _key("index-slices", file_fingerprint(parameters["table_path"]), Path(parameters["out_path"]).resolve())


@task(
    name="ingest",
    cache_key_fn=ingest_cache_key,
    cache_expiration=CACHE_FOR,
    persist_result=True,
    retries=2,
    retry_delay_seconds=5,
)
def ingest_task(data_dir: str, out_dir: str) -> IngestOutputs:
    """Kaggle CSVs -> long table and per-study labels (parquet)."""
    return ingest_step(data_dir, out_dir)


@task(name="split", cache_key_fn=split_cache_key, cache_expiration=CACHE_FOR, persist_result=True)
def split_task(table_path: str, val_fraction: float, seed: int, out_path: str) -> StudySplit:
    """Study-grouped train/validation split."""
    return split_step(table_path, val_fraction, seed, out_path)


@task(name="index-slices", cache_key_fn=index_cache_key, cache_expiration=CACHE_FOR, persist_result=True, retries=2)
def index_slices_task(data_dir: str, table_path: str, out_path: str, workers: int | None = None) -> str:
    """Slice order of every file of the labelled series (DICOM headers only)."""
    return index_step(data_dir, table_path, out_path, workers)


@task(name="preprocess", retries=2, retry_delay_seconds=5)
def preprocess_task(
    data_dir: str, table_path: str, store_root: str, image_size: int, out_table_path: str, workers: int | None = None
) -> PreprocessOutputs:
    """DICOM -> 8-bit PNG store; idempotent per file, so a rerun only converts what is missing."""
    return preprocess_step(data_dir, table_path, store_root, image_size, out_table_path, workers)


def ingest(data_dir: str, out_dir: str, **call_options) -> IngestOutputs:
    """ingest_task, cached unless its output files went missing since."""
    missing = not all((Path(out_dir) / name).is_file() for name in ("train_long.parquet", "train_labels.parquet"))
    return ingest_task.with_options(refresh_cache=missing)(data_dir, out_dir, **call_options)


def split(table_path: str, val_fraction: float, seed: int, out_path: str) -> StudySplit:
    """split_task, cached unless its output file went missing since."""
    return split_task.with_options(refresh_cache=not Path(out_path).is_file())(table_path, val_fraction, seed, out_path)


def index_slices(data_dir: str, table_path: str, out_path: str, workers: int | None = None) -> str:
    """index_slices_task, cached unless its output file went missing since."""
    missing = not Path(out_path).is_file()
    return index_slices_task.with_options(refresh_cache=missing)(data_dir, table_path, out_path, workers)
