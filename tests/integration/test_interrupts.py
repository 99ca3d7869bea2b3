"""A training run stopped from outside ends within seconds and says how to go on.

- Ctrl-C at a terminal (SIGINT to the whole process group: `spine train`, its loader workers and
  the temporary Prefect server), and SIGTERM to the group as a process supervisor sends it: exit
  status 130 / 143, no retry, the last checkpoint kept, the MLflow run KILLED with the epoch
  reached, the Prefect flow runs Crashed, a line saying how to resume, no process left behind.
- `spine worker` (a Prefect process worker) told to stop while its flow run trains: the flow run
  stops through the same clean-up within seconds, and nothing trains on.
- A run killed outright (kill -9, out of memory): its guard marks the MLflow run KILLED and the
  flow runs Crashed, and stops the temporary Prefect server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

from flows.config import PipelineConfig
from flows.train import train_pipeline
from flows.worker import _alive, children
from spine_model.core.catalog import RunFolder
from tests.conftest import TINY_TRAIN
from tests.helpers import cli_options

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
# Enough epochs that the run is still training when the signal comes; loader workers in play.
SETTINGS = {
    **TINY_TRAIN, "model_family": "crops", "epochs": 50, "num_workers": 2, "localiser": "off",
    "validate_first": False, "compare_after": False,
}  # fmt: skip


def _wait_for(
    condition, timeout_s: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            output = log.read_text(errors="replace")[-3000:] if log is not None else ""
            raise AssertionError(f"exited with {process.returncode} before {what}: {output}")
        assert time.monotonic() < deadline, f"no {what} after {timeout_s:.0f} s"
        time.sleep(0.2)


def _train_in_own_session(tmp_path: Path, env: dict) -> tuple[subprocess.Popen, Path, str]:
    """`spine train` as a terminal runs it: the leader of its own process group. Its output goes to
    a file (`process.log`): a pipe that nobody reads while it trains could fill up and block it."""
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train", str(env.pop("DATA")), "--workdir", str(tmp_path / "out"), "--tracking-uri", tracking_uri,
            "--run-name", "stopped", *cli_options(SETTINGS)]  # fmt: skip
    process_log = tmp_path / "spine.log"
    with open(process_log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args], stdout=output, stderr=subprocess.STDOUT,
            env={**env, "PYTHONPATH": str(PROJECT)}, start_new_session=True,
        )  # fmt: skip
    process.log = process_log
    run_dir = tmp_path / "out" / "runs" / "stopped"
    _wait_for(RunFolder(run_dir).training_state.is_file, 600, "training state", process, process_log)
    return process, run_dir, tracking_uri


def _group_is_empty(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _stop_group(process: subprocess.Popen, signum: int) -> tuple[int, str, float]:
    """Signal the process group; (exit status, output, seconds until the process ended)."""
    os.killpg(process.pid, signum)
    started = time.monotonic()
    try:
        process.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, process.log.read_text(errors="replace"), time.monotonic() - started


def _assert_killed_at_its_last_epoch(tracking_uri: str, run_dir: Path, stopped_by: str) -> None:
    saved = int(torch.load(RunFolder(run_dir).training_state, weights_only=True)["epoch"])
    assert 1 <= saved < SETTINGS["epochs"]
    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs(client.get_experiment_by_name("rsna-lumbar-spine").experiment_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["stopped_at_epoch"] == str(saved)
    assert stopped_by in run.data.tags["stopped_by"]
    assert run.data.tags["resume_command"] == f"spine train --resume {run_dir}"
    assert (RunFolder(run_dir).checkpoints / "last.pt").is_file()


def test_ctrl_c_stops_the_run_with_its_temporary_prefect_server_alive_to_hear_it(tiny_data, tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "DATA": str(tiny_data)}
    env.pop("PREFECT_API_URL", None)  # the temporary server `spine train` starts for itself
    process, run_dir, tracking_uri = _train_in_own_session(tmp_path, env)
    status, output, seconds = _stop_group(process, signal.SIGINT)

    assert status == 130, output[-3000:]
    assert seconds < 30, output[-3000:]
    assert f"resume with: spine train --resume {run_dir}" in output
    assert "resuming" not in output and "Retry" not in output  # an interrupt is not retried
    _assert_killed_at_its_last_epoch(tracking_uri, run_dir, "SIGINT")
    # The temporary server heard how the runs ended (its database), then stopped with the command.
    database = sqlite3.connect(tmp_path / "prefect" / "prefect.db")
    states = dict(database.execute("SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id"))
    assert states == {"train-pipeline": "CRASHED", "train-on-gpu": "CRASHED"}, states
    port = output.split("Starting temporary server on http://127.0.0.1:")[1].split()[0]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
    _wait_for(lambda: _group_is_empty(process.pid), 15, "end of the loader workers")


def test_sigterm_to_the_process_group_stops_the_run(prefect_harness, tiny_data, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "DATA": str(tiny_data)}
    process, run_dir, tracking_uri = _train_in_own_session(tmp_path, env)
    status, output, seconds = _stop_group(process, signal.SIGTERM)

    assert status == 143, output[-3000:]
    assert seconds < 30, output[-3000:]
    assert f"resume with: spine train --resume {run_dir}" in output
    _assert_killed_at_its_last_epoch(tracking_uri, run_dir, "SIGTERM")
    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs(client.get_experiment_by_name("rsna-lumbar-spine").experiment_id)
    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(run.data.tags["prefect.flow_run_id"])
        child = client.read_flow_run(run.data.tags["prefect.train_flow_run_id"])
    assert parent.state.is_crashed() and child.state.is_crashed()
    _wait_for(lambda: _group_is_empty(process.pid), 15, "end of the loader workers")


def test_a_worker_told_to_stop_stops_its_flow_run_within_seconds(prefect_harness, tiny_data, tmp_path):
    """`spine worker` (a process worker) gets SIGTERM, as a supervisor stops it, while its flow run trains."""
    pool = f"stop-test-{os.getpid()}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    train_pipeline.from_source(str(PROJECT), "flows/train.py:train_pipeline").deploy(
        name="stop-test", work_pool_name=pool, print_next_steps=False
    )
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(PROJECT)}
    # The worker's output (and its flow run's, which inherits it) goes to a file: a pipe nobody reads
    # fills up, and then the worker and the training block on writing to it.
    worker_log = tmp_path / "worker.log"
    with open(worker_log, "wb") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "worker", "--pool", pool, "--grace", "60"], env=env, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = PipelineConfig(
        data_dir=str(tiny_data), workdir=str(tmp_path / "out"), tracking_uri=tracking_uri, run_name="stopped",
        **SETTINGS,
    )  # fmt: skip
    run_dir = tmp_path / "out" / "runs" / "stopped"
    try:
        flow_run = run_deployment(
            "train-pipeline/stop-test", parameters={"config": config.model_dump(mode="json", exclude_none=True)},
            timeout=0, as_subflow=False,
        )  # fmt: skip
        _wait_for(RunFolder(run_dir).training_state.is_file, 600, "training state", worker, worker_log)
        flow_runs = children(worker.pid)  # `prefect worker start`; its children are the flow runs
        worker.send_signal(signal.SIGTERM)  # as a supervisor stops a worker
        started = time.monotonic()
        worker.wait(90)
        seconds = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(30)
    output = worker_log.read_text(errors="replace")
    assert worker.returncode == 143 and seconds < 30, output[-3000:]
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state.is_crashed() or state.is_cancelled(), (state, output[-3000:])
    assert f"resume with: spine train --resume {run_dir}" in output
    _assert_killed_at_its_last_epoch(tracking_uri, run_dir, "SIGTERM")
    assert flow_runs and not any(_alive(pid) for pid in flow_runs)  # nothing trains on


def test_a_run_killed_outright_is_marked_killed_and_crashed_by_its_guard(tiny_data, tmp_path):
    """kill -9 (or the kernel out of memory) gives the run no chance to report: its guard does."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "DATA": str(tiny_data)}
    env.pop("PREFECT_API_URL", None)  # a temporary server, which the guard stops once it has reported
    process, run_dir, tracking_uri = _train_in_own_session(tmp_path, env)
    process.kill()  # the main process only, as the kernel's out-of-memory killer does
    process.wait(30)
    database = sqlite3.connect(tmp_path / "prefect" / "prefect.db")

    def states() -> dict[str, str]:
        return dict(database.execute("SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id"))

    # The guard marks the parent flow run, then its subflow: wait for both.
    _wait_for(lambda: set(states().values()) == {"CRASHED"}, 60, f"both flow runs Crashed ({states()})")
    assert set(states()) == {"train-pipeline", "train-on-gpu"}
    assert "Crashed" in RunFolder(run_dir).guard_log.read_text()
    _assert_killed_at_its_last_epoch(tracking_uri, run_dir, "killed")
    _wait_for(lambda: _group_is_empty(process.pid), 30, "end of the loader workers")
