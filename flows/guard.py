"""How a stopped run is recorded, and a watchman for the runs whose process is killed outright.

A run stopped by Ctrl-C or SIGTERM ends itself (see spine_model.core.interrupts): the flow's own
`except` marks its MLflow runs KILLED with the epoch reached (`mark_stopped`), Prefect marks the
flow run Crashed, and the last checkpoint stays for `spine train --resume`.

A process killed outright runs none of that: the kernel when memory runs out, `kill -9`, or a
plain Prefect process worker that is stopped, which may kill its flow runs' processes without a
word to them (`spine worker` signals them first: flows/worker.py).
For those, each flow run starts a `Guard`: a small process in a session of its own (so that the
signals aimed at the run's process group miss it) that waits until its parent is gone. A parent
that ends normally says so first (`Guard.release`); one that is gone without a word was killed,
and the guard records it in its place: MLflow runs still RUNNING are marked KILLED with the epoch
their checkpoints reached, the Prefect flow run and its in-process subflows Crashed with a
message that says how to resume, flow runs it dispatched to a work pool Cancelling (so that their
workers stop them), and a temporary Prefect server left behind is stopped. What it did goes to
the run folder's guard.log.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)


def mark_stopped(run_id: str, run_dir: str | Path, tracking_uri: str, how: str) -> str:
    """Mark an MLflow run KILLED (unless it already ended) with the epoch its checkpoints reached,
    how it was stopped and the command that resumes it; returns a line saying so. An unreachable
    tracking server is skipped after a few seconds (the line says so), never waited on."""
    from spine_model import tracking
    from spine_model.core.catalog import RunFolder, RunRecord, resume_command
    from spine_model.training.checkpoints import saved_epoch

    folder = RunFolder(run_dir)
    epoch = saved_epoch(folder.checkpoints)
    epochs = RunRecord.load(folder.root).config.epochs if folder.record.is_file() else "?"
    command = resume_command(folder.root)
    kept = f"checkpoints of epoch {epoch} kept in {folder.checkpoints}" if epoch else "no epoch finished"
    line = f"{folder.root} stopped ({how}) after epoch {epoch} of {epochs}: {kept}; resume with: {command}"
    if not tracking.answers(tracking_uri):
        return f"{line} (MLflow at {tracking_uri} did not answer: its run {run_id} is not marked)"
    if tracking.run_status(run_id, tracking_uri) == "RUNNING":
        tags = {"stopped_at_epoch": epoch, "stopped_by": how, "resume_command": command}
        tracking.set_tags(run_id, tags, tracking_uri)
        tracking.end_run(run_id, "KILLED", tracking_uri)
    return line


class Guard:
    """The watchman of this process's flow run (see the module docstring)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process

    @classmethod
    def start(
        cls,
        flow_run_id: str | None,
        runs: dict[str, str],
        tracking_uri: str,
        log_path: str | Path,
        api_url: str | None = None,
        server_pid: int | None = None,
    ) -> Guard:
        """Watch this process for the flow run `flow_run_id`, its MLflow `runs` (run id -> run folder)."""
        request = {
            "parent": os.getpid(), "flow_run_id": flow_run_id, "runs": runs, "tracking_uri": tracking_uri,
            "api_url": api_url, "server_pid": server_pid,
        }  # fmt: skip
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "flows.guard", json.dumps(request)], stdin=subprocess.PIPE,
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
        return cls(process)

    def watch(self, run_id: str, run_dir: str | Path) -> None:
        """Watch one more MLflow run (created after the guard started)."""
        self._send({"runs": {run_id: str(run_dir)}})

    def _send(self, message: dict) -> None:
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        self.process.stdin.flush()

    def release(self) -> None:
        """This process ended its flow run itself (finished, failed or interrupted): nothing to do."""
        try:
            self.process.stdin.write(b"done\n")
            self.process.stdin.close()
            self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()


_ACTIVE: list[Guard] = []  # the guard of this process, when one of its flows started it


@contextmanager
def guarding(flow_run_id: str | None, runs: dict[str, str], tracking_uri: str, run_dir: str | Path) -> Iterator[Guard]:
    """A guard for this process's flow run while the block runs; the guard an enclosing flow of the
    same process already started, when there is one (it covers its in-process subflows)."""
    if _ACTIVE:
        guard = _ACTIVE[0]
        for run_id, folder in runs.items():
            guard.watch(run_id, folder)
        yield guard
        return
    from flows.server import api_url, temporary_server
    from spine_model.core.catalog import RunFolder

    server = temporary_server()
    guard = Guard.start(
        flow_run_id, runs, tracking_uri, RunFolder(run_dir).guard_log, api_url(),
        server.server_process.pid if server is not None else None,
    )  # fmt: skip
    _ACTIVE.append(guard)
    try:
        yield guard
    finally:
        _ACTIVE.clear()
        guard.release()


def _wait_for_parent(parent: int, runs: dict[str, str]) -> bool:
    """Block until the parent says it is done (True) or is gone without a word (False); the runs
    it adds meanwhile go into `runs`."""
    done = threading.Event()

    def read() -> None:
        for line in sys.stdin:
            if line.strip() == "done":
                done.set()
                return
            runs.update(json.loads(line).get("runs", {}))

    threading.Thread(target=read, daemon=True).start()
    while os.getppid() == parent and not done.wait(0.5):
        pass
    return done.is_set()


def _crash_flow_runs(api_url: str, flow_run_id: str, message: str) -> None:
    """The flow run (and its in-process subflows) Crashed; its dispatched children Cancelling."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelling, Crashed

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        for run in [client.read_flow_run(flow_run_id), *children]:
            if run.state is not None and run.state.is_final():
                continue
            dispatched = run.deployment_id is not None and str(run.id) != flow_run_id
            state = Cancelling(message=message) if dispatched else Crashed(message=message)
            client.set_flow_run_state(run.id, state, force=True)
            log.info("flow run %s (%s): %s", run.name, run.id, state.name)


def main(argv: list[str] | None = None) -> int:
    request = json.loads((argv or sys.argv[1:])[0])
    if _wait_for_parent(request["parent"], request["runs"]):
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s guard %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    how = f"process {request['parent']} was killed without a chance to report (e.g. its worker stopped)"
    lines = []
    for run_id, run_dir in dict(request["runs"]).items():
        try:
            lines.append(mark_stopped(run_id, run_dir, request["tracking_uri"], how))
        except Exception:  # the other runs and the flow run still get marked
            log.exception("could not mark MLflow run %s", run_id)
    for line in lines:
        log.info("%s", line)
    if request["flow_run_id"] and request["api_url"]:
        try:
            _crash_flow_runs(request["api_url"], request["flow_run_id"], "; ".join(lines) or how)
        except Exception:
            log.exception("could not mark flow run %s at %s", request["flow_run_id"], request["api_url"])
    if request["server_pid"]:  # the temporary Prefect server of the killed `spine` command
        with suppress(ProcessLookupError):
            os.kill(request["server_pid"], signal.SIGTERM)
    return 0


if __name__ == "__main__":
    sys.exit(main())
