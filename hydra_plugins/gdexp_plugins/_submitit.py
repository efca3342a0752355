"""What gdexp's cluster launchers share: waiting for every task of an array (a task that ends
without a result fails its runs, the others are still waited for), and cancelling the array."""

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)


class TaskFailed(Exception):
    """A cluster task that did not hand its result back: cancelled, out of time, or crashed."""


def array_id(jobs: Sequence[Any]) -> str:
    return jobs[0].job_id.split("_")[0] if jobs else "-"


def collect(
    jobs: Sequence[Any],
    on_result: Callable[[int, Any], None],
    on_failure: Callable[[int, Exception], None],
) -> None:
    """Wait for every task, in order; hand each one's result or failure on. Ctrl-C cancels the
    whole array (and waits until its tasks have ended) before it is raised again."""
    try:
        for index, job in enumerate(jobs):
            try:
                result = job.result()
            except Exception as error:  # cancelled, out of time, crashed: its runs failed
                state = getattr(job, "state", "UNKNOWN")
                line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                on_failure(
                    index, TaskFailed(f"array task {job.job_id} ended {state}: {line[:200]}")
                )
                continue
            on_result(index, result)
    except KeyboardInterrupt:
        cancel(jobs)
        log.error("Interrupted: cancelled array job %s", array_id(jobs))
        raise


def cancel(jobs: Sequence[Any], wait_seconds: float = 60.0) -> None:
    """Cancel the tasks and wait (bounded) until they have ended: a task that was starting as
    the sweep stopped may still create its runs, which the sweep must then see to close them."""
    for job in jobs:
        job.cancel(check=False)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if all(job.done(force_check=True) for job in jobs):
            return
        time.sleep(1.0)
    log.error("Cancelled tasks still listed after %.0f s; check squeue", wait_seconds)
