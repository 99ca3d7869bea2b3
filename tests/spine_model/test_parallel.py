"""parallel_map: results in order, and workers that are not forks of this (threaded) process."""

from __future__ import annotations

import os

from spine_model.core.parallel import parallel_map

_SET_AFTER_IMPORT: list[str] = []  # a fork inherits what the parent put here; a fresh process does not


def _what_the_worker_sees(job: int) -> tuple[int, int, int]:
    return job, len(_SET_AFTER_IMPORT), os.getpid()


def test_workers_are_fresh_processes_not_forks_and_results_keep_their_order():
    _SET_AFTER_IMPORT.append("only in the parent")
    try:
        results = list(parallel_map(_what_the_worker_sees, range(8), workers=2, progress=False, min_jobs_per_worker=1))
    finally:
        _SET_AFTER_IMPORT.clear()
    assert [job for job, _, _ in results] == list(range(8))
    assert {pid for _, _, pid in results} - {os.getpid()}  # the jobs ran in worker processes
    # Forked workers would see the parent's list (and could inherit a lock held by one of its threads).
    assert {seen for _, seen, _ in results} == {0}
