"""Shared fixtures: telemetry off, tiny synthetic datasets, and a throwaway workspace."""

from __future__ import annotations

import os

# Offline machines: no telemetry from Prefect or MLflow (MLflow needs the string "true").
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# One intra-op thread per process (this one and every server, worker and `spine` subprocess a test
# starts): on 2 cores, several processes with torch's default of one thread per core slow the tiny
# models 3-5x by contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from spine_model.data.synth import generate_dataset  # noqa: E402

TINY = {"n_studies": 12, "n_test_studies": 3, "image_size": 64, "n_slices": 6, "seed": 7}


class ScopedTemp:
    """`tmp_path_factory.mktemp` for module- and package-scoped fixtures, whose folders go when their
    scope ends: a trained model's checkpoints and logged copies are ~300 MB, so keeping every module's
    until the session ended filled CI's disk (ENOSPC, then every fixture after it errored)."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self._factory = factory
        self.made: list[Path] = []

    def mktemp(self, name: str) -> Path:
        path = self._factory.mktemp(name)
        self.made.append(path)
        return path

    @classmethod
    def removed_after(cls, factory: pytest.TempPathFactory) -> Iterator[ScopedTemp]:
        """Yield one; remove its folders after (the fixtures using it are torn down first). A failure
        is reported in the log, not by what is left on disk."""
        temp = cls(factory)
        try:
            yield temp
        finally:
            for path in temp.made:
                shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScopedTemp]:
    """Folders for a module's fixtures, removed after its last test."""
    yield from ScopedTemp.removed_after(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 train + 3 test synthetic studies at 64 px; read-only by convention (copy to modify)."""
    root = tmp_path_factory.mktemp("tiny_data")
    generate_dataset(root, **TINY)
    return root


@pytest.fixture(scope="session")
def tiny_realistic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset's sizes at `--difficulty realistic` (labels a noisy read of grades, posteriors
    beside them); read-only by convention."""
    root = tmp_path_factory.mktemp("tiny_realistic")
    generate_dataset(root, **TINY, difficulty="realistic")
    return root


@pytest.fixture
def tiny_copy(tiny_data: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset that a test may break."""
    target = tmp_path / "data"
    shutil.copytree(tiny_data, target)
    return target


@pytest.fixture(scope="session")
def tiny_store(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny dataset ingested and stored at 32 px: (located points, labels, VolumeStore, StudySplit)."""
    from spine_model.core.split import split_by_study
    from spine_model.data.ingest import build_long_table
    from spine_model.data.volumes import VolumeStore, build_volume_store, locate_points
    from spine_model.pipeline.data import series_to_store

    ingested = build_long_table(tiny_data)
    root = tmp_path_factory.mktemp("tiny_store")
    series = series_to_store(tiny_data, "train", ingested.table)
    build_volume_store(tiny_data, "train", series, root, size=32, workers=1, progress=False)
    store = VolumeStore(root)
    points, unplaced = locate_points(ingested.table, store.index, store.size)
    assert unplaced.empty
    return points, ingested.labels, store, split_by_study(points, 0.25, 42)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (it takes ~20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


TINY_TRAIN = {
    "store_size": 32, "image_size": 32, "crop_size": 16, "crop_pooling": "channels", "epochs": 2, "batch_size": 16,
    "num_workers": 0, "pretrained": False, "val_fraction": 0.25, "lr": 1e-3, "preprocess_workers": 1,
    "localiser_image_size": 32, "localiser_epochs": 2, "localiser_batch_size": 4,
}  # fmt: skip
FAMILIES = ("seed", "crops")
