"""`spine worker`: a Prefect process worker whose flow runs stop within seconds when it is told to stop.

A Prefect worker that gets SIGTERM (a supervisor stopping it: systemd, `docker stop`, Kubernetes)
forwards SIGINT to itself and then, depending on where it is, waits for its flow runs to finish or
kills them outright; its flow runs live in sessions of their own, so a signal to the worker's
process group misses them. A training run could go on for hours after its worker was stopped, or
die without a word. `spine worker` runs `prefect worker start` as its child and, when it is told
to stop, first sends SIGTERM to each flow run the worker started: each ends through its own
clean-up (the last checkpoint kept, its MLflow run KILLED with the epoch reached and the command
that resumes it, the Prefect flow run Crashed), and then the worker is stopped. What cannot be
stopped within the grace period is killed (the run's guard then records it, see flows/guard.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (read from /proc; none where there is no /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name (in parentheses) may hold spaces: the fields after its last ")" are fixed.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _signal_process_group(pid: int, signum: int) -> None:
    """`signum` to the process group of `pid` (a flow run and its loader workers), or to `pid` alone
    when it shares this process's group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        group = os.getpgid(pid)
        if group == os.getpgrp():
            os.kill(pid, signum)
        else:
            os.killpg(group, signum)


def _wait(process: subprocess.Popen, timeout_s: float) -> bool:
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout_s)
    return process.poll() is not None


def run_worker(worker_args: Sequence[str], grace_s: float = 30.0) -> int:
    """Run `prefect worker start WORKER_ARGS` until it exits or this process is told to stop (SIGINT,
    SIGTERM); returns the exit status: the worker's own, or 128 + the signal's number."""
    stop: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _frame: stop.append(signum)) for signum in
                (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    try:
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", *worker_args])
        while worker.poll() is None and not stop:
            time.sleep(0.2)
        if not stop:
            return worker.returncode
        flow_runs = children(worker.pid)
        print(f"{signal.Signals(stop[0]).name} received: stopping {len(flow_runs)} flow run(s), then the worker",
              flush=True)  # fmt: skip
        for pid in flow_runs:
            _signal_process_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(_alive(pid) for pid in flow_runs) and time.monotonic() < deadline:
            time.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
        if not _wait(worker, max(1.0, deadline - time.monotonic())):
            for pid in children(worker.pid):
                _signal_process_group(pid, signal.SIGKILL)
            worker.kill()
            worker.wait()
        return 128 + stop[0]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
