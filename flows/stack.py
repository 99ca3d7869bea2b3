"""A local stack without Docker: Prefect server, MLflow server, process workers, deployments.

`spine stack` (and `make stack`) runs it in the foreground; Ctrl-C stops every process it
started. The integration tests use the same class on free loopback ports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from spine_model.core.http import health_problem
from spine_model.core.settings import OFFLINE_DEFAULTS

PROJECT_DIR = Path(__file__).resolve().parent.parent


def resolve_project_dir(option: str | Path | None = None, cwd: str | Path | None = None) -> Path:
    """The project whose prefect.yaml, code and outputs a stack uses: `option` when given (it must
    hold prefect.yaml), else the current folder when it holds one, else the installed project."""
    if option is not None:
        folder = Path(option).resolve()
        if not (folder / "prefect.yaml").is_file():
            raise FileNotFoundError(f"{folder} has no prefect.yaml: --project-dir takes a checkout of this project")
        return folder
    here = Path(cwd or Path.cwd()).resolve()
    return here if (here / "prefect.yaml").is_file() else PROJECT_DIR


# The deployments of prefect.yaml for process work pools (the others are for Docker and Kubernetes pools).
PROCESS_DEPLOYMENTS = (
    "spine-pipeline", "spine-train-gpu", "spine-localiser-gpu", "cross-validate", "sweep", "compare-models", "predict",
)  # fmt: skip
HOST = "127.0.0.1"  # loopback only: nothing here is meant to face a network


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _wait_until_healthy(url: str, process: subprocess.Popen, name: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}; see {log}")
        if health_problem(url, timeout_s=2) is None:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{name} not healthy at {url} after {timeout_s:.0f} s; see {log}")


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group may be gone already
        os.killpg(process.pid, sig)


class LocalStack:
    """Start and stop the services of a local Prefect + MLflow set-up; state under `state_dir`."""

    def __init__(
        self,
        state_dir: str | Path = ".stack",
        project_dir: str | Path = PROJECT_DIR,
        prefect_port: int = 4200,
        mlflow_port: int = 5000,
        worker_poll_s: float = 5.0,
        prefect_database_url: str | None = None,
        mlflow_backend_uri: str | None = None,
        gpu_slots: int = 2,
    ) -> None:
        """Backend stores: sqlite files in `state_dir` by default, or the given database URLs
        (PostgreSQL: see flows.postgres), handed to the servers in their environment only."""
        self.state_dir = Path(state_dir).resolve()
        self.prefect_database_url = prefect_database_url
        self.mlflow_backend_uri = mlflow_backend_uri or f"sqlite:///{self.state_dir / 'mlflow.db'}"
        self.project_dir = Path(project_dir).resolve()
        self.prefect_port, self.mlflow_port = prefect_port, mlflow_port
        self.worker_poll_s = worker_poll_s
        self.gpu_slots = gpu_slots
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.bin_dir = Path(sys.executable).parent

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    def env(self) -> dict[str, str]:
        """Environment of every process of the stack, flows run by its workers included."""
        return {
            **os.environ,
            **OFFLINE_DEFAULTS,
            "PREFECT_HOME": str(self.state_dir / "prefect"),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_UI_URL": self.ui_url,
            "PREFECT_WORKER_QUERY_SECONDS": str(self.worker_poll_s),
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "SPINE_PROJECT_DIR": str(self.project_dir),
            "PYTHONUNBUFFERED": "1",
            # Tools that MLflow and Prefect start by name (uvicorn, ...) come from this environment.
            "PATH": os.pathsep.join([str(self.bin_dir), os.environ.get("PATH", "")]),
        }

    def _start(self, name: str, args: Sequence[str], env: dict | None = None) -> tuple[subprocess.Popen, Path]:
        log = self.state_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as handle:
            # A session of its own, so that stopping also stops what it spawned (flow runs).
            process = subprocess.Popen(
                [str(self.bin_dir / args[0]), *args[1:]], cwd=self.project_dir, env={**self.env(), **(env or {})},
                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.processes.append((name, process))
        return process, log

    def _run(self, args: Sequence[str]) -> None:
        done = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]], cwd=self.project_dir, env=self.env(),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(args)}` failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def _spawn_prefect_server(self) -> tuple[subprocess.Popen, Path]:
        url = self.prefect_database_url
        database = {"PREFECT_API_DATABASE_CONNECTION_URL": url} if url else {}
        return self._start(
            "prefect-server", ["prefect", "server", "start", "--host", HOST, "--port", str(self.prefect_port)], database
        )

    def _spawn_mlflow_server(self) -> tuple[subprocess.Popen, Path]:
        return self._start(
            "mlflow-server",
            ["mlflow", "server", "--host", HOST, "--port", str(self.mlflow_port),
             "--artifacts-destination", str(self.state_dir / "mlartifacts"),
             # Only requests addressed to this machine's loopback (a guard against DNS rebinding).
             "--allowed-hosts", f"{HOST},{HOST}:{self.mlflow_port},localhost,localhost:{self.mlflow_port}"],
            {"MLFLOW_BACKEND_STORE_URI": self.mlflow_backend_uri},  # not on the command line: it may hold a password
        )  # fmt: skip

    def start_mlflow_server(self, timeout_s: float = 120) -> None:
        process, log = self._spawn_mlflow_server()
        _wait_until_healthy(f"{self.mlflow_url}/health", process, "MLflow server", log, timeout_s)

    def start_servers(self, timeout_s: float = 120) -> None:
        """Prefect and MLflow servers, started together and waited for."""
        prefect, prefect_log = self._spawn_prefect_server()
        mlflow, mlflow_log = self._spawn_mlflow_server()
        _wait_until_healthy(f"{self.api_url}/health", prefect, "Prefect server", prefect_log, timeout_s)
        _wait_until_healthy(f"{self.mlflow_url}/health", mlflow, "MLflow server", mlflow_log, timeout_s)

    def deploy(self, pools: Sequence[str] = ("cpu", "gpu")) -> None:
        """Process work pools and the deployments of prefect.yaml for them."""
        for pool in pools:
            self._run(["prefect", "work-pool", "create", pool, "--type", "process", "--overwrite"])
        if "gpu" in pools:  # flow runs of the gpu pool at once (folds, classifier and localiser): one per GPU
            self._run(["prefect", "work-pool", "set-concurrency-limit", "gpu", str(self.gpu_slots)])
        self._run(["prefect", "--no-prompt", "deploy", *(f"--name={name}" for name in PROCESS_DEPLOYMENTS)])

    def start_workers(self, pools: Sequence[str] = ("cpu", "gpu")) -> None:
        """`spine worker`s: process workers whose flow runs stop cleanly when the stack stops."""
        for pool in pools:
            self._start(f"worker-{pool}", ["spine", "worker", "--pool", pool, "--name", f"local-{pool}"])

    def start(self) -> LocalStack:
        self.start_servers()
        self.deploy()
        self.start_workers()
        return self

    def stop(self, grace_s: float = 10) -> None:
        """Stop everything started, newest first; kill what does not stop within the grace period.

        (A Prefect worker keeps retrying once its server is gone instead of exiting on SIGTERM.)
        """
        # One at a time, workers before the servers they talk to.
        for _, process in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace_s)
            _signal_group(process, signal.SIGKILL)  # also ends flow runs left in the group
            process.wait()
        self.processes.clear()

    def dead(self) -> list[str]:
        return [f"{name} (exit {p.returncode})" for name, p in self.processes if p.poll() is not None]

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
