"""Flow runs started on a work pool at once and waited for together: what a parent flow does when it
hands training (the classifier and its localiser, or the folds of a cross-validation) to GPU workers.

The children are started with `run_deployment(..., timeout=0)` and waited for with Prefect's
`wait_for_flow_run` (the server's events, not polling); `on_poll` runs every few seconds meanwhile
(the parent shows its children's epochs). A child that fails, is missing or outlasts the timeout
fails the parent with a clear message; when the parent stops, or one child cannot start, the
children already started are cancelled (Prefect does not cascade a parent's cancellation).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.flow_runs import wait_for_flow_run
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
from prefect.states import Cancelling
from prefect.utilities.asyncutils import run_coro_as_sync


@dataclass(frozen=True)
class Job:
    """One child flow run to start: a label for people, the deployment, its parameters, its name."""

    label: str
    deployment: str
    parameters: dict
    flow_run_name: str


def run_on_pool(jobs: list[Job], timeout_s: float, on_poll: Callable[[], None] | None = None) -> dict[str, str]:
    """Start every job at once, wait for all, and fail clearly if any does not complete. Returns a
    link to each child flow run (its page in the Prefect UI), by label."""
    children = []
    for job in jobs:
        try:
            children.append(
                run_deployment(job.deployment, parameters=job.parameters, timeout=0, flow_run_name=job.flow_run_name)
            )
        except ObjectNotFound:
            cancel(children, "another flow run of the same dispatch failed to start")
            raise RuntimeError(
                f"deployment {job.deployment!r} not found on the Prefect server at "
                f"{PREFECT_API_URL.value() or '(temporary server)'}: register the deployments of prefect.yaml "
                "with `spine stack` (or `prefect deploy` as prefect.yaml's header says), "
                "or run in-process with dispatch='local'"
            ) from None
    try:
        finished = wait_for_all(children, timeout_s, on_poll)
    except BaseException:  # this flow stops (interrupted, cancelled): the runs it started stop too
        cancel(children, "the flow run that started it was stopped")
        raise
    if on_poll is not None:
        on_poll()  # the last news
    deployments = {run.id: job.deployment for run, job in zip(finished, jobs, strict=True)}
    unfinished = [run for run in finished if run.state is None or not run.state.is_final()]
    failed = [run for run in finished if run not in unfinished and not run.state.is_completed()]
    if failed or unfinished:
        why = "; ".join(f"{run.name} ({run.id}) of {deployments[run.id]}: {run.state.name}" for run in failed)
        why = why or f"{', '.join(run.name for run in unfinished)} not finished after {timeout_s:.0f} s"
        cancel(unfinished, f"stopped: a flow run of the same dispatch did not complete ({why})")
        stopped = f"; cancelled: {', '.join(run.name for run in unfinished)}" if failed and unfinished else ""
        raise RuntimeError(f"flow run(s) did not complete: {why}{stopped}; see their logs in the Prefect UI")
    return {job.label: ui_link(run) for run, job in zip(finished, jobs, strict=True)}


def wait_for_all(flow_runs: list, timeout_s: float, on_poll: Callable[[], None] | None = None, poll_s: float = 5.0):
    """The flow runs, read again once all are final, or one ended without completing (its siblings
    need not run on for nothing), or `timeout_s` passed; `on_poll` every `poll_s` meanwhile."""

    async def wait() -> list:
        async with get_client() as client:
            waits = {asyncio.ensure_future(wait_for_flow_run(run.id, timeout=None, client=client)) for run in flow_runs}
            deadline = asyncio.get_running_loop().time() + timeout_s
            try:
                while waits and asyncio.get_running_loop().time() < deadline:
                    done, waits = await asyncio.wait(waits, timeout=poll_s, return_when=asyncio.FIRST_COMPLETED)
                    if any(not task.result().state.is_completed() for task in done):
                        break
                    if waits and on_poll is not None:
                        on_poll()
            finally:
                for task in waits:
                    task.cancel()
            return [await client.read_flow_run(run.id) for run in flow_runs]

    return run_coro_as_sync(wait())


def cancel(flow_runs: list, why: str) -> None:
    """Cancel flow runs already started, so that a failed or stopped dispatch leaves nothing running."""
    with get_client(sync_client=True) as client:
        for run in flow_runs:
            client.set_flow_run_state(run.id, Cancelling(message=why))


def ui_link(run) -> str:
    """A flow run's page in the Prefect UI (its id where no UI address is known)."""
    base = PREFECT_UI_URL.value()
    return f"[{run.name}]({base.rstrip('/')}/runs/flow-run/{run.id})" if base else f"`{run.name}` ({run.id})"
