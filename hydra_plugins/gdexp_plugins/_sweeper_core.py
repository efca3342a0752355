"""The work of `hydra/sweeper=gdexp`: the grid, composed and validated whole, run as one
tracked sweep (gdexp.sweep) on whichever launcher is configured."""

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from gdexp.config import ConfigError, config_problems
from hydra_plugins.gdexp_plugins._common import (
    grid_axes,
    is_table_record,
    refuse_intervals,
    refuse_missing_cuda,
    require_gdexp_app,
)
from hydra_plugins.gdexp_plugins._job_configs import JobConfigs, grid_jobs
from hydra_plugins.gdexp_plugins._progress import Progress

log = logging.getLogger(__name__)

# Launchers that run jobs in this process one by one: the sweeper hands them the grid in slices
# so it can report progress between slices. Others (joblib, clusters) get it whole: a slice is a
# barrier for them.
_SLICED_LAUNCHERS = ("BasicLauncher",)


class SweepFailed(CompactHydraException):
    pass


def job_configs(sweeper: Any, jobs: Sequence[Sequence[str]]) -> list[DictConfig]:
    """Every job's composed config, after checking all of them (all problems in one message)."""
    composer = JobConfigs(sweeper.hydra_context.config_loader, sweeper.config)
    configs, problems = [], {}
    for overrides in jobs:
        cfg = composer.compose(overrides)
        for problem in config_problems(cfg):
            problems.setdefault(problem, " ".join(overrides))
        configs.append(cfg)
    if problems:
        lines = [f"{problem}  (first in job: {job})" for problem, job in problems.items()]
        raise ConfigError("Invalid sweep, no run was started:\n  " + "\n  ".join(lines))
    destinations = {
        (c.tracking.uri, c.tracking.experiment, c.tracking.enabled, c.tracking.record)
        for c in configs
    }
    if len(destinations) > 1:
        raise ConfigError(
            "Invalid sweep, no run was started: tracking.uri, tracking.experiment, "
            "tracking.enabled and tracking.record cannot be swept; one sweep is one parent run "
            "in one experiment, recorded one way."
        )
    refuse_missing_cuda(configs)
    return configs


def sweep(sweeper: Any, arguments: list[str]) -> list[Sequence[JobReturn]]:
    config = sweeper.config
    require_gdexp_app(config, "hydra/sweeper=gdexp")
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    params = [f"{key}={value}" for key, value in sweeper.params.items()]
    overrides = parser.parse_overrides(params + arguments)
    refuse_intervals(overrides)
    if is_table_record(config):  # the grid as axes, never one composed config per config
        from hydra_plugins.gdexp_plugins._table_core import table_sweep

        return table_sweep(sweeper, overrides)
    jobs = grid_jobs(overrides)
    configs = job_configs(sweeper, jobs)

    from gdexp.store import preflight, resolve_tracking_uri, writable_folder

    launch_dir = Path(config.hydra.runtime.cwd)
    sweep_dir = launch_dir / config.hydra.sweep.dir
    first = configs[0]
    # Checked, not made: a refused sweep leaves the launch folder as it was. The folder is made
    # once every check passed (a tracked sweep's by Sweep.open).
    writable_folder(sweep_dir, "the sweep's output folder (hydra.sweep.dir)")
    if not first.tracking.enabled:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, sweep_dir / "multirun.yaml")
        return _launch(sweeper, jobs, configs)
    # A store that cannot be used is refused before MLflow and torch load.
    preflight(resolve_tracking_uri(first.tracking.uri, launch_dir))

    from gdexp import record
    from gdexp.store import open_tracker
    from gdexp.sweep import Sweep, outcome_table

    tracker = open_tracker(
        first.tracking.uri, first.tracking.experiment, first.tracking.retry_seconds, launch_dir
    )
    hashes = [record.config_hash(cfg) for cfg in configs]
    tracked = Sweep.open(
        tracker,
        sweep_dir,
        grid=grid_axes(overrides),
        sweeper="gdexp",
        config_hashes=hashes,
        resume=first.tracking.resume,
        retry_seconds=first.tracking.retry_seconds,
    )
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    todo = tracked.todo(hashes)
    skipped = len(jobs) - len(todo)
    resumed = f"; resuming: {skipped} already FINISHED" if skipped else ""
    log.info(
        "Sweep of %d runs%s; parent run %s in %s",
        len(jobs), resumed, tracked.parent_run_id, tracker.uri,
    )  # fmt: skip
    from gdexp import stopping

    try:
        returns = _launch(sweeper, [jobs[i] for i in todo], [configs[i] for i in todo])
        stopping.check()  # asked while the launcher waited for its workers or tasks
    except Exception as error:  # the launcher itself failed: close the sweep with what it has
        if stopping.requested():  # a worker that died of the same Ctrl-C
            tracked.close_interrupted()
            raise stopping.StopRequested(stopping.requested()) from error
        with contextlib.suppress(Exception):
            tracked.close(objective=first.objective)
        raise SweepFailed(
            f"The launcher failed ({type(error).__name__}: {_first(error)[:300]}); the runs it "
            "left unfinished are marked KILLED. Run the same command again to resume."
        ) from error
    except BaseException:  # interrupted: no run of this sweep may stay RUNNING
        tracked.close_interrupted()
        raise
    failed = [r for batch in returns for r in batch if r.status != JobStatus.COMPLETED]
    try:
        tally = tracked.close(objective=first.objective)
    except Exception as error:  # the store went away: say what failed, and how to finish
        report = _failure_report(failed, len(todo)) + "\n" if failed else ""
        raise SweepFailed(
            f"{report}The end of the sweep could not be recorded: the MLflow store stopped "
            f"answering ({_first(error)[:200]}). Run the same command again once it is back: "
            "finished runs are kept, the rest run again."
        ) from error
    shown, which = curve_runs(tally.runs)
    log.info(
        "Sweep done:\n%s\n%s\nLoss curves of %s: %s",
        outcome_table(tally), tracker.ui_hint(), which, tracker.compare_address(shown),
    )  # fmt: skip
    if failed:
        raise SweepFailed(_failure_report(failed, len(todo)))
    return returns


def curve_runs(runs: Sequence[Any]) -> tuple[list[str], str]:
    """The runs whose loss curves the closing address shows, and how to say which they are."""
    from gdexp.sweep import MAX_CURVES

    # More than that: one run per method and step size, the lowest seed.
    if len(runs) <= MAX_CURVES:
        return [run.info.run_id for run in runs], "its runs"
    first: dict[tuple[str, str], Any] = {}
    for run in sorted(runs, key=lambda r: int(r.data.params.get("seed", 0))):
        key = (run.data.params.get("method.name", ""), run.data.params.get("step_size", ""))
        first.setdefault(key, run)
    return [run.info.run_id for run in first.values()], "one run per method and step size"


def _launch(
    sweeper: Any, jobs: list[Sequence[str]], configs: list[DictConfig]
) -> list[Sequence[JobReturn]]:
    """Run the jobs in batches of exactly `hydra.sweeper.max_batch_size` (the last one smaller),
    as Hydra's sweepers do. Unset: all at once, except on a launcher that runs them in this
    process, which gets them in slices (about 20) with progress between them. gdexp's batched
    launchers take the configs composed here, instead of composing them again."""
    if sweeper.max_batch_size is not None:  # >= 1: GdexpSweeper.sweep checked it
        step = sweeper.max_batch_size
    elif type(sweeper.launcher).__name__ in _SLICED_LAUNCHERS:
        step = max(1, -(-len(jobs) // 20))
    else:
        step = max(len(jobs), 1)
    # gdexp's batched launchers report progress run by run themselves; saying it again after
    # each batch would print every line twice.
    composed_launcher = hasattr(sweeper.launcher, "launch_composed")
    progress = Progress(len(jobs), sweeper.progress_seconds)
    returns = []
    for start in range(0, len(jobs), step):
        part = jobs[start : start + step]
        if composed_launcher:
            composed = configs[start : start + step]
            returns.append(sweeper.launcher.launch_composed(part, composed, start))
        else:
            returns.append(sweeper.launcher.launch(part, initial_job_idx=start))
            progress(start + len(part))
    return returns


def _first(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


def _failure_report(failed: Sequence[JobReturn], total: int) -> str:
    lines = []
    for result in failed:
        overrides = " ".join(result.overrides)
        try:
            result.return_value  # noqa: B018  (re-raises the exception the job raised)
            continue
        except Exception as raised:
            error = raised
        lines.append(f"  {overrides}: {type(error).__name__}: {_first(error)[:300]}")
    return (
        f"{len(failed)} of {total} runs failed (marked FAILED in MLflow where it could be "
        "reached; running the same command again runs them again):\n" + "\n".join(lines)
    )
