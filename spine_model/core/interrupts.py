"""Stopping a run when asked: Ctrl-C at a terminal, SIGTERM from a process supervisor.

A terminal's Ctrl-C reaches the whole foreground process group: this process, its DataLoader and
pool workers, and any server it started; a supervisor's SIGTERM often does too. Only the main
process decides what happens: `stop_on_signals` makes both signals raise `RunInterrupted` in its
main thread, so that the run's own `except` and `finally` blocks end it (the last checkpoint
kept, the MLflow run KILLED with the epoch reached, the Prefect run Crashed), while helper
processes ignore them (`ignore_in_helper`) and are stopped by their parent, never taken for a
crash that deserves a retry. A second signal while the run winds down ends the process at once.

Some work must not be cut in half: a write to a local sqlite store (MLflow's), cut by an exception
between its statements, can leave the file locked for every later connection, and the run could
then not even be marked KILLED. Such work runs under `deferred()`: a signal that arrives meanwhile
is acted on as soon as the block ends.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the signals stop_on_signals has seen in this process
_resume_hints: list[str] = []  # how to go on with the runs stopped in this process
_deferring: list[int] = []  # one entry per `deferred()` block open in the main thread
_pending: list[int] = []  # a stop signal that arrived inside a deferred block, not acted on yet


class RunInterrupted(KeyboardInterrupt):
    """The process was asked to stop (SIGINT or SIGTERM). A KeyboardInterrupt, so that Prefect and
    every `except Exception` treat it as an interrupt (no retry), never as a failure of the run."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} received: the run was stopped")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process ended by that signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


def received() -> int | None:
    """The first stop signal this process received under `stop_on_signals`, if any."""
    return _received[0] if _received else None


def note_resume(hint: str) -> None:
    """Remember how to go on with a run this process stopped (the command line prints it last). Kept
    here, not on the exception: Prefect turns a SIGTERM inside a flow into its own exception and
    raises ours again afterwards, so the exception that reaches the caller is not the one noted."""
    _resume_hints.append(hint)


def resume_hints() -> list[str]:
    return list(_resume_hints)


def _stop(signum: int, _frame) -> None:
    if _received:  # the second one: the person (or supervisor) does not want to wait
        sys.stderr.write(f"\n{signal.Signals(signum).name} again: stopping at once, without cleaning up\n")
        sys.stderr.flush()
        os._exit(128 + signum)
    _received.append(signum)
    if _deferring:
        _pending.append(signum)
        return
    raise RunInterrupted(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block, a stop signal waits: RunInterrupted is raised when the outermost deferred
    block ends (after it, whether it finished or failed). For short work only: the person waits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring.append(1)
    try:
        yield
    finally:
        _deferring.pop()
        if not _deferring and _pending:
            raise RunInterrupted(_pending.pop())


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise RunInterrupted (in the main thread only: Python
    runs signal handlers there); the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _stop) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def ignore_in_helper(*_args) -> None:
    """In a helper process (a DataLoader worker, a pool worker; usable as `worker_init_fn` or a pool
    `initializer`): ignore SIGINT and SIGTERM, which reach it with its parent's process group. The
    parent stops it, and a helper that ends on its own does not look like a crash."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def is_interrupt(error: BaseException) -> bool:
    """An exception that stops a run from outside (Ctrl-C, SIGTERM, Prefect's termination or abort
    signals): anything that is not an Exception, as opposed to a failure of the run itself."""
    return not isinstance(error, Exception)
