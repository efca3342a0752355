"""`hydra/sweeper=gdexp` (gdexp's default): Hydra's basic grid sweep, tracked as one MLflow sweep.

Before any job starts it composes and validates every job's config (so a bad value anywhere in
the grid fails before a single run exists), opens the store and experiment once in the launching
process, and creates the sweep's parent run. The jobs, on any launcher, log their runs as its
children. A job that raises leaves its own run FAILED; the others go on, and the sweep exits
non-zero at the end, naming the jobs that failed.
"""

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from gdexp.config import ConfigError, config_problems
from gdexp.outcome import OUTCOMES
from hydra_plugins.gdexp_plugins.batched_launcher import BatchedLauncher
from hydra_plugins.gdexp_plugins.job_configs import JobConfigs
from hydra_plugins.gdexp_plugins.progress import Progress

# Launchers that run jobs on this machine as they are handed over: the sweeper hands them the
# grid in slices so it can report progress between slices. Cluster launchers get it whole.
# (Not joblib: a slice is a barrier, and slices of ceil(n/20) jobs would run small grids serially.)
_SLICED_LAUNCHERS = ("BasicLauncher",)

log = logging.getLogger(__name__)


@dataclass
class TrackedSweeperConf:
    _target_: str = "hydra_plugins.gdexp_plugins.tracked_sweeper.TrackedSweeper"
    # Hydra loads plugin modules outside sys.modules, so no string annotations here.
    max_batch_size: Optional[int] = None  # noqa: UP045
    params: Optional[dict[str, str]] = None  # noqa: UP045


ConfigStore.instance().store(
    group="hydra/sweeper", name="gdexp", node=TrackedSweeperConf, provider="gdexp"
)


class SweepFailed(CompactHydraException):
    pass


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def describe_sweep(
    command: str, grid: Mapping[str, str], n_jobs: int, counts: Mapping[str, int], failed: int
) -> str:
    axes = ", ".join(f"{key} ∈ {{{values}}}" for key, values in grid.items()) or "no swept keys"
    tally = ", ".join(f"{counts.get(outcome, 0)} {outcome}" for outcome in OUTCOMES)
    # The tally first: the MLflow runs table shows only the first ~50 characters.
    return f"{n_jobs} runs: {tally}; {failed} failed. `{command}` over {axes}."


class TrackedSweeper(BasicSweeper):
    def job_configs(self, jobs: Sequence[Sequence[str]]) -> list[DictConfig]:
        """Every job's composed config, after checking all of them (all problems in one message)."""
        composer = JobConfigs(self.hydra_context.config_loader, self.config)
        configs, problems = [], {}
        for overrides in jobs:
            cfg = composer.compose(overrides)
            for problem in config_problems(cfg):
                problems.setdefault(problem, " ".join(overrides))
            configs.append(cfg)
        if problems:
            lines = [f"{problem}  (first in job: {job})" for problem, job in problems.items()]
            raise ConfigError("Invalid sweep, no run was started:\n  " + "\n  ".join(lines))
        destinations = {(c.tracking.uri, c.tracking.experiment) for c in configs}
        if len(destinations) > 1:
            raise ConfigError(
                "Invalid sweep, no run was started: tracking.uri and tracking.experiment cannot "
                "be swept; one sweep is one parent run in one experiment."
            )
        return configs

    def sweep(self, arguments: list[str]) -> Any:
        assert (
            self.config is not None and self.launcher is not None and self.hydra_context is not None
        )
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(self._parse_config() + arguments)
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        jobs = [job for batch in self.overrides for job in batch]
        configs = self.job_configs(jobs)
        if isinstance(self.launcher, BatchedLauncher):
            self.launcher.composed = {tuple(j): c for j, c in zip(jobs, configs, strict=True)}

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        # MLflow is loaded only when a sweep runs, not whenever Hydra scans its plugins.
        from gdexp import tracking

        first = configs[0]
        if not first.tracking.enabled:
            return self._launch_all()

        # The store and experiment are set up here, once, before any job can race to create them.
        tracking.configure_retries(first.tracking.retry_seconds)
        tracker = tracking.Tracker(
            tracking.resolve_tracking_uri(first.tracking.uri), first.tracking.experiment
        )
        hashes = [tracking.config_hash(cfg) for cfg in configs]
        sweep_hash = hashlib.sha256(" ".join(sorted(hashes)).encode()).hexdigest()[:32]
        finished = tracker.finished_configs() if first.tracking.resume else {}
        todo = [i for i, h in enumerate(hashes) if h not in finished]
        self._plan([jobs[i] for i in todo])
        grid = {
            o.get_key_element(): ",".join(str(v) for v in o.sweep_string_iterator())
            for o in overrides
            if o.is_sweep_override()
        }
        command = tracking.command_line()
        parent = self._parent_run(tracker, sweep_hash, first.tracking.resume)
        if parent is None:
            parent = tracker.start_run(
                f"sweep {sweep_dir.name} ({len(jobs)} runs)",
                tags={
                    "gdexp.kind": "sweep",
                    tracking.SWEEP_HASH_TAG: sweep_hash,
                    "sweep_dir": str(sweep_dir.resolve()),
                    "n_runs": str(len(jobs)),
                    **{f"grid.{key}": values for key, values in grid.items()},
                },
            )
        if len(todo) < len(jobs):
            log.info(
                "Resuming: %d of %d runs already FINISHED in experiment '%s' are skipped; "
                "running the other %d (tracking.resume=false runs them all).",
                len(jobs) - len(todo), len(jobs), first.tracking.experiment, len(todo),
            )  # fmt: skip
        log.info("Sweep of %d runs, MLflow parent run %s in %s", len(todo), parent, tracker.uri)
        env = {tracking.SWEEP_RUN_ID_ENV: parent, tracking.SWEEP_TRACKING_URI_ENV: tracker.uri}
        if not isinstance(self.launcher, BatchedLauncher):
            # Also in each job's own config: Hydra exports hydra.job.env_set inside the job,
            # wherever it runs (a reused joblib worker, a SLURM node with SBATCH_EXPORT=NONE).
            extra = _env_set_overrides(env)
            self.overrides = [[[*job, *extra] for job in batch] for batch in self.overrides]
        try:
            with _environment(env):
                returns = self._launch_all()
        except BaseException:  # interrupted: no run of this sweep may stay RUNNING
            try:
                killed = tracker.kill_unfinished_children(parent)
                tracker.end_run(parent, "KILLED")
                log.error("Sweep interrupted: %d runs in flight marked KILLED.", killed)
            except Exception as error:
                log.error("Sweep interrupted; could not record it: %s", _first_line(error))
            raise
        results = [r for batch in returns for r in batch]
        failed = [r for r in results if r.status != JobStatus.COMPLETED]
        done = [r.return_value for r in results if r.status == JobStatus.COMPLETED]
        counts = Counter(summary["outcome"] for summary in done)
        reused = set(hashes) & set(finished)
        counts.update(finished[h].data.tags.get("outcome", "unknown") for h in reused)
        # Every run of the sweep: those run now and those a resume reused from elsewhere.
        run_ids = [s["run_id"] for s in done] + [finished[h].info.run_id for h in reused]
        try:
            tracker.client.log_dict(
                parent, {"run_ids": sorted(run_ids)}, tracking.SWEEP_RUNS_ARTIFACT
            )
            tracker.log(
                parent,
                tags={
                    tracking.NOTE_TAG: describe_sweep(
                        command, grid, len(jobs), counts, len(failed)
                    ),
                    "command": command,
                    "failed_runs": str(len(failed)),
                    "skipped_runs": str(len(jobs) - len(todo)),
                    **{f"runs_{outcome}": str(counts.get(outcome, 0)) for outcome in OUTCOMES},
                },
            )
            tracker.end_run(parent, "FAILED" if failed else "FINISHED")
        except Exception as error:
            raise SweepFailed(
                f"The end of the sweep could not be recorded: the MLflow store stopped answering "
                f"({_first_line(error)[:200]}). Run the same command again once it is back: "
                "finished runs are kept, the rest run again.\n"
                + _failure_report(failed, len(results))
            ) from error
        log.info("Sweep done: %s. %s", dict(counts), tracker.ui_hint())
        if failed:
            raise SweepFailed(_failure_report(failed, len(results)))
        return returns

    def _plan(self, jobs: list[Sequence[str]]) -> None:
        """Launch these jobs (the ones not already done), in batches as configured."""
        size = self.max_batch_size or max(len(jobs), 1)
        self.overrides = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        self.batch_index = 0

    @staticmethod
    def _parent_run(tracker: Any, sweep_hash: str, resume: bool) -> Optional[str]:  # noqa: UP045
        """The parent run of an earlier attempt at this very sweep, reopened, when resuming."""
        if not resume:
            return None
        from gdexp import tracking

        earlier = tracker.search(f"tags.`{tracking.SWEEP_HASH_TAG}` = '{sweep_hash}'")
        if not earlier:
            return None
        parent = max(earlier, key=lambda run: run.info.start_time).info.run_id
        tracker.client.update_run(parent, status="RUNNING")
        return parent

    def _launch_all(self) -> list[Sequence[JobReturn]]:
        returns, first_index = [], 0
        total = sum(len(batch) for batch in self.overrides)
        progress = Progress(total, every=0.0)
        sliced = type(self.launcher).__name__ in _SLICED_LAUNCHERS and self.max_batch_size is None
        slice_size = max(1, -(-total // 20)) if sliced else total
        while not self.is_done():
            batch = self.get_job_batch()
            for start in range(0, len(batch), slice_size):
                part = batch[start : start + slice_size]
                returns.append(self.launcher.launch(part, initial_job_idx=first_index))
                first_index += len(part)
                if slice_size < total:
                    progress(first_index)
        return returns


def _env_set_overrides(values: Mapping[str, str]) -> list[str]:
    """`++hydra.job.env_set.KEY='VALUE'` overrides: Hydra exports them in the job itself."""

    def quoted(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return [f"++hydra.job.env_set.{key}={quoted(value)}" for key, value in values.items()]


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _failure_report(failed: Sequence[JobReturn], total: int) -> str:
    lines = []
    for result in failed:
        overrides = " ".join(result.overrides)
        error = result._return_value  # the exception the job raised
        lines.append(f"  {overrides}: {type(error).__name__}: {_first_line(error)[:300]}")
    return (
        f"{len(failed)} of {total} runs failed (marked FAILED in MLflow where it could be "
        "reached; a resume runs them again):\n" + "\n".join(lines)
    )
