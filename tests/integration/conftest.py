"""The stack the integration tests share: PostgreSQL, a Prefect and an MLflow server on it, workers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.postgres import LocalPostgres, PostgresUnavailable
from flows.stack import LocalStack, free_port
from tests.conftest import ScopedTemp

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="package")
def package_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScopedTemp]:
    """Folders for this package's fixtures (the stack), removed after its last test. (A package
    fixture lasts as long as the package whose conftest defines it: this one, not tests/.)"""
    yield from ScopedTemp.removed_after(tmp_path_factory)


# Package scope: the servers and their folders (every model the integration tests log, ~1 GB) go
# when the integration tests end, not at the end of the session.
@pytest.fixture(scope="package")
def postgres():
    """A PostgreSQL server of the test's own (None, with a warning, where none can be had)."""
    try:
        # Under /tmp: as root the server runs as `postgres`, which cannot enter pytest's root-only folders.
        folder = tempfile.mkdtemp(prefix="spine-pg-")
        server = LocalPostgres(folder)
    except PostgresUnavailable as error:
        if os.geteuid() == 0:  # root could have installed it (`make test` does): on CI this must run
            raise
        warnings.warn(f"{error}; the stack runs on sqlite", stacklevel=1)
        yield None
        return
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="package")
def stack(postgres, package_tmp):
    """Prefect and MLflow servers on PostgreSQL (sqlite without it), cpu and gpu process workers, the
    deployments: one for the session, shared by the dispatch test and the browser test."""
    backends = {}
    if postgres is not None:
        backends = {
            "prefect_database_url": postgres.url("prefect", "asyncpg"),
            "mlflow_backend_uri": postgres.url("mlflow", "psycopg2"),
        }
    local = LocalStack(
        package_tmp.mktemp("stack"), prefect_port=free_port(), mlflow_port=free_port(), worker_poll_s=2,
        **backends,
    )  # fmt: skip
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="package")
def second_gpu_worker(stack):
    """A second `spine worker` on the gpu pool: two flow runs of the pool at once (its limit is 2)."""
    log = stack.state_dir / "logs" / "worker-gpu-2.log"
    with open(log, "ab") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "worker", "--pool", "gpu", "--name", "local-gpu-2"],
            env={**stack.env(), "PYTHONPATH": str(PROJECT)}, cwd=stack.project_dir, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield worker
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
