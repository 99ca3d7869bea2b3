"""A new sqlite tracking store that several processes open at once (a scheduled run and a UI run, or
folds started together): its schema is created once, under a lock, and every process's run lands."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow

# Each process waits for the same moment, then creates a run on the new store and ends it.
START_RUN = textwrap.dedent(
    """
    import sys, time
    from spine_model import tracking

    uri, name, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    time.sleep(max(0.0, start_at - time.time()))
    run_id = tracking.start_run("concurrent", name, tracking_uri=uri)
    tracking.log_metrics(run_id, {"x": 1.0}, tracking_uri=uri)
    tracking.end_run(run_id, "FINISHED", uri)
    print("finished", run_id)
    """
)


def test_three_processes_create_a_new_sqlite_store_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    start_at = time.time() + 8  # after the three interpreters have imported MLflow
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", START_RUN, uri, f"run-{n}", str(start_at)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for n in range(3)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["run-0", "run-1", "run-2"]
    assert {run.info.status for run in runs} == {"FINISHED"}


def test_a_stop_signal_during_a_write_to_the_store_waits_for_the_write(tmp_path):
    """Ctrl-C in the middle of a write to a local store: the write finishes, then the run stops, and
    the store takes the run's KILLED mark at once. A write cut between its statements can leave
    the file locked, and the stopped run then fails instead ("database is locked")."""
    import signal

    import sqlalchemy

    from spine_model import tracking
    from spine_model.core import interrupts

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.start_run("stopped", "write", tracking_uri=uri)
    signalled: list[str] = []

    def signal_inside_the_write(_connection, _cursor, statement, *_args) -> None:
        if not signalled and statement.lstrip().upper().startswith("INSERT"):
            signalled.append(statement)
            os.kill(os.getpid(), signal.SIGINT)  # its handler runs before the write goes on

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "after_cursor_execute", signal_inside_the_write)
    try:
        with interrupts.stop_on_signals():
            try:
                tracking.log_metrics(run_id, {"a": 1.0, "b": 2.0}, step=3, tracking_uri=uri)
            except interrupts.RunInterrupted as stop:
                stopped = stop
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "after_cursor_execute", signal_inside_the_write)
        interrupts._received.clear()  # this test process goes on; a real one ends here

    assert signalled and stopped.signum == signal.SIGINT
    assert mlflow.MlflowClient(uri).get_run(run_id).data.metrics == {"a": 1.0, "b": 2.0}  # the whole write
    tracking.end_run(run_id, "KILLED", uri)
    assert tracking.run_status(run_id, uri) == "KILLED"
