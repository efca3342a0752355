"""The work of `hydra/launcher=slurm_batched`: the grid in chunks of `runs_per_task`, one
submitit array task per chunk, each running gdexp.run.run_chunk (the batched path)."""

import logging
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn

from hydra_plugins.gdexp_plugins._batched_core import compose_jobs, job_manifest, job_returns
from hydra_plugins.gdexp_plugins._common import require_gdexp_app

log = logging.getLogger(__name__)


class TaskFailed(Exception):
    """A cluster task that did not hand its chunk back: cancelled, out of time, or crashed."""


def chunks(n_runs: int, runs_per_task: int) -> list[range]:
    return [range(i, min(i + runs_per_task, n_runs)) for i in range(0, n_runs, runs_per_task)]


def executor(settings: dict[str, Any]) -> Any:
    import submitit

    cluster = settings["cluster"]
    chosen = submitit.AutoExecutor(folder=settings["submitit_folder"], cluster=cluster)
    params: dict[str, Any] = {
        "timeout_min": settings["timeout_min"],
        "cpus_per_task": settings["cpus_per_task"],
        "mem_gb": settings["mem_gb"],
        "nodes": 1,
        "tasks_per_node": 1,
        "name": settings["name"],
    }
    if cluster == "slurm":
        params["slurm_array_parallelism"] = settings["array_parallelism"]
        params["slurm_additional_parameters"] = dict(settings["additional_parameters"] or {})
        if settings["partition"]:
            params["slurm_partition"] = settings["partition"]
    chosen.update_parameters(**params)
    return chosen


def launch(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> Sequence[JobReturn]:
    config = launcher.config
    require_gdexp_app(config, "hydra/launcher=slurm_batched")
    configs = compose_jobs(launcher, job_overrides)
    settings = launcher.settings
    if settings["runs_per_task"] < 1:
        from gdexp.config import ConfigError

        raise ConfigError("hydra.launcher.runs_per_task must be an integer >= 1")

    from gdexp.run import run_chunk

    manifest = job_manifest(config, configs[0]) if configs else None
    parts = chunks(len(configs), settings["runs_per_task"])
    jobs = executor(settings).map_array(
        run_chunk,
        [[configs[i] for i in part] for part in parts],
        [[list(job_overrides[i]) for i in part] for part in parts],
        [manifest] * len(parts),
    )
    array = jobs[0].job_id.split("_")[0] if jobs else "-"
    log.info(
        "Submitted %d runs as %d array tasks of up to %d runs (job %s)",
        len(configs), len(parts), settings["runs_per_task"], array,
    )  # fmt: skip
    results: list[Any] = [None] * len(configs)
    try:
        for part, job in zip(parts, jobs, strict=True):
            try:
                handed_back = job.result()
            except Exception as error:  # cancelled, out of time, crashed: its runs failed
                state = getattr(job, "state", "UNKNOWN")
                line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                handed_back = [TaskFailed(f"array task {job.job_id} ended {state}: {line[:200]}")]
                handed_back *= len(part)
            for index, result in zip(part, handed_back, strict=True):
                results[index] = result
            done = sum(r is not None for r in results)
            log.info("Array task %s back: %d/%d runs", job.job_id, done, len(configs))
    except KeyboardInterrupt:
        cancel(jobs)
        log.error("Interrupted: cancelled array job %s", array)
        raise
    return job_returns(config, job_overrides, configs, results)


def cancel(jobs: Sequence[Any], wait_seconds: float = 60.0) -> None:
    """Cancel the tasks and wait (bounded) until they have ended: a task that was starting as
    the sweep stopped may still create its runs, which the sweep must then see to close them."""
    import time

    for job in jobs:
        job.cancel(check=False)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if all(job.done(force_check=True) for job in jobs):
            return
        time.sleep(1.0)
    log.error("Cancelled tasks still listed after %.0f s; check squeue", wait_seconds)
