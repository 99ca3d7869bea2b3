"""Map a function over many small jobs in worker processes, with a progress bar."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm.auto import tqdm

Job = TypeVar("Job")
Result = TypeVar("Result")


def parallel_map(
    fn: Callable[[Job], Result],
    jobs: Sequence[Job],
    workers: int | None = None,
    desc: str = "",
    unit: str = "it",
    progress: bool = True,
    min_jobs_per_worker: int = 32,
) -> Iterator[Result]:
    """fn over jobs, in order; in-process when there are few jobs (a pool costs more than it saves).

    Processes are forked where possible: spawn would re-import the caller's __main__, which breaks
    plain scripts; the jobs here touch only numpy, PIL and pydicom, never CUDA.
    """
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) // min_jobs_per_worker or 1))
    with tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                yield fn(job)
                bar.update()
            return
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            chunksize = max(1, min(16, len(jobs) // (4 * workers)))  # small chunks keep every worker busy
            for result in pool.map(fn, jobs, chunksize=chunksize):
                yield result
                bar.update()
