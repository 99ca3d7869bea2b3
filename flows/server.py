"""Prefect's temporary server, for a `spine` command run without PREFECT_API_URL, out of reach of
the signals that stop the run.

Ctrl-C at a terminal sends SIGINT to the whole foreground process group, and a supervisor's
SIGTERM often goes to the group as well. Prefect starts its temporary server as a child in that
group, so the signal that stops a run also killed the server the run must report its end to:
every state update then retried against a dead server for minutes. Started in a session of its
own, the server outlives the signal; Prefect still stops it when this process exits (atexit).
"""

from __future__ import annotations

import subprocess

from prefect.server.api import server as prefect_server
from prefect.settings import PREFECT_API_URL


class _InNewSession:
    """The `subprocess` module as Prefect's server module sees it while it starts the server."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args, **kwargs) -> subprocess.Popen:  # noqa: N802 (subprocess's own name)
        return subprocess.Popen(*args, **kwargs, start_new_session=True)


class DetachedServer(prefect_server.SubprocessASGIServer):
    """Prefect's temporary server, its process in a session of its own."""

    def _run_uvicorn_command(self) -> subprocess.Popen:
        real = prefect_server.subprocess
        prefect_server.subprocess = _InNewSession()
        try:
            return super()._run_uvicorn_command()
        finally:
            prefect_server.subprocess = real


def detach_temporary_server() -> None:
    """Make the temporary server that Prefect starts on first use a DetachedServer (Prefect's clients
    take the instance registered for no port). Nothing changes when PREFECT_API_URL names a server."""
    if PREFECT_API_URL.value() or None in prefect_server.SubprocessASGIServer._instances:
        return
    DetachedServer()


def temporary_server() -> prefect_server.SubprocessASGIServer | None:
    """The temporary server this process runs, when it runs one."""
    server = prefect_server.SubprocessASGIServer._instances.get(None)
    return server if server is not None and server.running and server.server_process is not None else None


def api_url() -> str | None:
    """The Prefect API this process reports to: PREFECT_API_URL, else its temporary server's."""
    server = temporary_server()
    return PREFECT_API_URL.value() or (server.api_url if server is not None else None)
