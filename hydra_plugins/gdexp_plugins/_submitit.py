"""What gdexp's cluster launchers share: waiting for every task of an array (a task that ends
without a result fails its runs, the others are still waited for) until the cluster no longer
lists any of them, and cancelling the array."""

import logging
import subprocess
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
    poll_seconds: float = 0.5,
) -> None:
    """Wait for every task; hand each one's result or failure on, in order. A stop asked for
    while waiting (Ctrl-C, SIGTERM: `gdexp.stopping`) cancels the whole array, waits until its
    tasks have ended, and is raised then."""
    from gdexp import stopping

    try:
        for index, job in enumerate(jobs):
            # Polled, not a blocking job.result(): the signal handler only sets a flag.
            while not job.done():
                stopping.check()
                time.sleep(poll_seconds)
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
        wait_until_ended(jobs)
        stopping.check()
    except KeyboardInterrupt:
        cancel(jobs)
        log.info("Stopping: cancelled array job %s", array_id(jobs))
        raise


def cancel(jobs: Sequence[Any], wait_seconds: float = 60.0) -> None:
    """Cancel the tasks and wait (bounded) until they have ended: a task that was starting as
    the sweep stopped may still create its runs, which the sweep must then see to close them."""
    for job in jobs:
        job.cancel(check=False)
    wait_until_ended(jobs, wait_seconds)


def wait_until_ended(jobs: Sequence[Any], wait_seconds: float = 60.0) -> None:
    """Wait (bounded) until no task is listed any more. A SLURM task hands its result back (the
    file submitit reads) a moment before it exits, and SLURM lists it as running or completing
    until then; `squeue` asks the controller itself (`sacct` can lag behind it)."""
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if not still_listed(jobs):
            return
        time.sleep(0.5)
    log.error("Array tasks still listed after %.0f s; check squeue", wait_seconds)


def still_listed(jobs: Sequence[Any]) -> list[str]:
    """The tasks of `jobs` the cluster still lists as pending, running or completing."""
    import submitit

    on_slurm = {job.job_id.split("_")[0] for job in jobs if isinstance(job, submitit.SlurmJob)}
    left = [job.job_id for job in jobs if not isinstance(job, submitit.SlurmJob) and not job.done()]
    if on_slurm:
        listed = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%i", "--jobs", ",".join(on_slurm),
             "--states=PENDING,CONFIGURING,RUNNING,COMPLETING,SUSPENDED,REQUEUED,RESIZING"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        # An array that ended long ago is forgotten: squeue then fails with "Invalid job id".
        left += listed.stdout.split() if listed.returncode == 0 else []
    return left
