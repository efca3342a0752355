"""The work of the multirun callback: open a tracked sweep for a sweeper that is not gdexp's
(basic, Optuna), and close it with its tally and best run when the multirun ends."""

import logging
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from hydra_plugins.gdexp_plugins._common import is_table_record, refuse_missing_cuda

log = logging.getLogger(__name__)


def check_run(config: DictConfig) -> None:
    """Everything a single run can be refused for, checked before Hydra creates its folder:
    Hydra's run_job makes outputs/<date>/<time> (its .hydra/ and log) before the run starts,
    so a refusal there would leave it behind. The composed config (what the command line check
    could not see: interpolations, config files), the output folder (checked, not made), the
    store. The run checks the config and store again; the store's damage check is not repeated.
    """
    from gdexp.config import config_problems, is_gdexp_config
    from gdexp.store import preflight, resolve_tracking_uri, writable_folder

    gdexp = is_gdexp_config(config)
    if gdexp:
        try:
            problems = config_problems(config)
        except Exception:  # e.g. ${hydra:...}, which resolves only once the job is set up
            problems = []
        if is_table_record(config):
            problems.append(
                "tracking.record=table records a sweep's configs as rows of its table; a single "
                "run is recorded as a run: sweep with -m, or leave tracking.record at runs"
            )
        if not problems:
            try:
                refuse_missing_cuda([config])
            except CompactHydraException as error:
                problems.append(str(error))
        if problems:  # as the run refuses them (gdexp.__main__.refuse): one line each, code 2
            import sys

            sys.stderr.write("".join(f"{problem}\n" for problem in problems))
            raise SystemExit(2)
    folder = Path(config.hydra.run.dir).absolute()
    writable_folder(folder, "the run's output folder (hydra.run.dir)")
    if gdexp and config.tracking.enabled:
        preflight(resolve_tracking_uri(config.tracking.uri, config.hydra.runtime.cwd))


def open_sweep(config: DictConfig) -> Any:
    """Checks the sweep's folder and store, then opens the tracked sweep, which makes the folder:
    a refused sweep leaves the launch folder as it was."""
    from gdexp.config import is_gdexp_config

    if not is_gdexp_config(config):
        return None
    if is_table_record(config):
        from gdexp.config import ConfigError

        sweeper = str(config.hydra.runtime.choices.get("hydra/sweeper", "?"))
        raise ConfigError(
            f"tracking.record=table needs gdexp's grid sweeper (hydra/sweeper=gdexp, the "
            f"default): hydra/sweeper={sweeper} hands out configs one by one, each recorded as "
            "its own run. Drop tracking.record=table, or the sweeper choice."
        )
    from gdexp.store import preflight, resolve_tracking_uri, writable_folder

    launch_dir = Path(config.hydra.runtime.cwd)
    sweep_dir = launch_dir / config.hydra.sweep.dir
    writable_folder(sweep_dir, "the sweep's output folder (hydra.sweep.dir)")
    if not config.tracking.enabled:
        return None
    tracking = config.tracking
    preflight(resolve_tracking_uri(tracking.uri, launch_dir))

    from gdexp.store import open_tracker
    from gdexp.sweep import Sweep

    tracker = open_tracker(tracking.uri, tracking.experiment, tracking.retry_seconds, launch_dir)
    task = list(config.hydra.overrides.task) + [
        f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()
    ]
    sweeper = str(config.hydra.sweeper.get("_target_", "")).rsplit(".", 1)[-1]
    sweep = Sweep.open(
        tracker,
        sweep_dir,
        grid=_search_space(task),
        sweeper=sweeper,
        config_hashes=None,
        retry_seconds=tracking.retry_seconds,
    )
    log.info("Tracked sweep (%s): parent run %s in %s", sweeper, sweep.parent_run_id, tracker.uri)
    return sweep


def _search_space(task: list[str]) -> dict[str, str]:
    """The swept keys as typed: value lists, ranges and intervals alike."""
    space = {}
    for override in OverridesParser.create().parse_overrides(task):
        if override.is_sweep_override():
            value = override.input_line.split("=", 1)[1]
            space[override.get_key_element()] = value
    return space


def close_sweep(sweep: Any, config: DictConfig) -> None:
    from gdexp import stopping
    from gdexp.store import first_line
    from gdexp.sweep import best_runs, outcome_table, swept_values

    if stopping.requested():  # asked after the sweeper's last job: the sweep stopped, not done
        sweep.close_interrupted()
        return
    try:
        tally = sweep.close(objective=config.objective)
    except Exception as error:
        log.error(
            "The end of the sweep could not be recorded (%s). Its runs are kept; its parent "
            "run %s stays open.", first_line(error), sweep.parent_run_id,
        )  # fmt: skip
        return
    tracker = sweep.tracker
    if tally.best is None:
        log.info("Sweep done: no run finished.\n%s\n%s", outcome_table(tally), tracker.ui_hint())
        return
    chosen = ", ".join(f"{k}={v}" for k, v in swept_values(tally.best, sweep.grid).items())
    best = (
        f"Best run: {chosen}, {config.objective} {tally.best_value:.6g} "
        f"(run {tally.best.info.run_id})."
    )
    if sweep.n_runs is not None:  # a grid: its outcomes per step size and method
        log.info("Sweep done: %s\n%s\n%s", best, outcome_table(tally), tracker.ui_hint())
        return
    # An optimiser's trials are a path through the space, not a grid: a table of every trial
    # says nothing; the best trials' curves do.
    shown = best_runs(tally, config.objective)
    counts = ", ".join(f"{n} {word}" for word, n in sorted(tally.outcomes.items()) if n)
    log.info(
        "Sweep done: %d trials (%s). %s\n%s\nLoss curves of the best %d trials: %s",
        len(tally.runs), counts or "none finished", best, tracker.ui_hint(), len(shown),
        tracker.compare_address([run.info.run_id for run in shown]),
    )  # fmt: skip
