"""Map a function over many small jobs in worker processes, with a progress bar."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm.auto import tqdm

from spine_model.core.interrupts import ignore_in_helper

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

    Workers start from a fork server (spawn where there is none), never by forking this process:
    it runs Prefect's and torch's threads, and a fork taken while one of them holds a lock can
    deadlock the child. `fn` and the jobs must therefore be picklable (module-level functions).
    Workers ignore Ctrl-C and SIGTERM (their parent stops them); when this process is interrupted
    or `fn` fails, the jobs not yet started are cancelled rather than run to the end.

    Not tqdm's `process_map`: it returns only when every job is done, and on an interrupt its pool
    waits for all queued jobs (shutdown without cancelling them), so Ctrl-C during a volume store
    build of thousands of series would wait for the whole build.
    """
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) // min_jobs_per_worker or 1))
    with tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                yield fn(job)
                bar.update()
            return
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=ignore_in_helper)
        try:
            chunksize = max(1, min(16, len(jobs) // (4 * workers)))  # small chunks keep every worker busy
            for result in pool.map(fn, jobs, chunksize=chunksize):
                yield result
                bar.update()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
