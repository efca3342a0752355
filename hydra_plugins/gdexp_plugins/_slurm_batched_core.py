"""The work of `hydra/launcher=slurm_batched`: the grid in chunks of `runs_per_task`, one
submitit array task per chunk, each running gdexp.run.run_chunk (the batched path)."""

import logging
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn

from hydra_plugins.gdexp_plugins._batched_core import (
    compose_jobs,
    finished,
    job_manifest,
    job_returns,
)
from hydra_plugins.gdexp_plugins._common import require_gdexp_app
from hydra_plugins.gdexp_plugins._submitit import array_id, collect

log = logging.getLogger(__name__)


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
    launcher: Any,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    configs: Sequence[Any] | None = None,
) -> Sequence[JobReturn]:
    """`configs`: the jobs' configs, when gdexp's sweeper has composed them already."""
    config = launcher.config
    require_gdexp_app(config, "hydra/launcher=slurm_batched")
    if configs is None:
        configs = compose_jobs(launcher, job_overrides)
    settings = launcher.settings
    if settings["runs_per_task"] < 1:
        from gdexp.config import ConfigError

        raise ConfigError("hydra.launcher.runs_per_task must be an integer >= 1")

    from gdexp.run import run_chunk

    returns = job_returns(launcher, job_overrides, configs, initial_job_idx)  # (job folders)
    manifest = job_manifest(config, configs[0]) if configs else None
    parts = chunks(len(configs), settings["runs_per_task"])
    jobs = executor(settings).map_array(
        run_chunk,
        [[configs[i] for i in part] for part in parts],
        [[list(job_overrides[i]) for i in part] for part in parts],
        [manifest] * len(parts),
    )
    log.info(
        "Submitted %d runs as %d array tasks of up to %d runs (job %s)",
        len(configs), len(parts), settings["runs_per_task"], array_id(jobs),
    )  # fmt: skip
    results: list[Any] = [None] * len(configs)

    def handed_back(task: int, chunk_results: Any) -> None:
        for index, result in zip(parts[task], chunk_results, strict=True):
            results[index] = result
        done = sum(r is not None for r in results)
        log.info("Array task %s back: %d/%d runs", jobs[task].job_id, done, len(configs))

    def failed(task: int, error: Exception) -> None:
        handed_back(task, [error] * len(parts[task]))

    collect(jobs, handed_back, failed)
    return finished(returns, results)


def launch_table(
    launcher: Any,
    grid: Any,
    todo: Sequence[Any],
    folder: Any,
    parent_run_id: str,
    on_chunk: Any,
) -> list[str]:
    """A table sweep's chunks on the cluster: whole chunks, up to `configs_per_task` configs a
    task, one array task each (gdexp.run.run_table_task); each task leaves its chunks' parts in
    the sweep folder, which the sweep gathers. Returns a line per task that failed."""
    from gdexp.run import run_table_task

    settings = launcher.settings
    per_task = int(settings.get("configs_per_task") or 50_000)
    if per_task < 1:
        from gdexp.config import ConfigError

        raise ConfigError("hydra.launcher.configs_per_task must be an integer >= 1")
    tasks: list[list[Any]] = []
    for chunk in todo:
        if not tasks or sum(len(c) for c in tasks[-1]) + len(chunk) > per_task:
            tasks.append([])
        tasks[-1].append(chunk)
    if not tasks:
        return []
    jobs = executor(settings).map_array(
        run_table_task,
        [grid] * len(tasks),
        tasks,
        [str(folder)] * len(tasks),
        [parent_run_id] * len(tasks),
    )
    log.info(
        "Submitted %s configs in %d chunks as %d array tasks (job %s)",
        f"{sum(len(c) for c in todo):,}", len(todo), len(tasks), array_id(jobs),
    )  # fmt: skip
    failures: list[str] = []

    def handed_back(task: int, trained: Any) -> None:
        for chunk in tasks[task]:
            on_chunk(chunk)

    def failed(task: int, error: Exception) -> None:
        chunks = ", ".join(f"{c.start}-{c.stop - 1}" for c in tasks[task])
        failures.append(f"configs {chunks}: {type(error).__name__}: {str(error)[:300]}")

    collect(jobs, handed_back, failed)
    return failures
