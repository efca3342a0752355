"""The work of the multirun callback: open a tracked sweep for a sweeper that is not gdexp's
(basic, Optuna), and close it with its tally and best run when the multirun ends."""

import logging
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def check_run(config: DictConfig) -> None:
    """A single run's output folder and store, checked before Hydra creates the folder (a
    failure inside the run would come with Hydra's "Error executing job" line)."""
    from gdexp.config import is_gdexp_config
    from gdexp.store import preflight, resolve_tracking_uri, writable_folder

    folder = Path(config.hydra.run.dir).absolute()
    writable_folder(folder, "the run's output folder (hydra.run.dir)")
    if is_gdexp_config(config) and config.tracking.enabled:
        preflight(resolve_tracking_uri(config.tracking.uri, config.hydra.runtime.cwd))


def open_sweep(config: DictConfig) -> Any:
    from gdexp.config import is_gdexp_config

    if not is_gdexp_config(config) or not config.tracking.enabled:
        return None
    from gdexp.store import preflight, resolve_tracking_uri, writable_folder

    launch_dir = Path(config.hydra.runtime.cwd)
    sweep_dir = launch_dir / config.hydra.sweep.dir
    writable_folder(sweep_dir, "the sweep's output folder (hydra.sweep.dir)")
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
    from gdexp.store import first_line
    from gdexp.sweep import outcome_table

    try:
        tally = sweep.close(objective=config.objective)
    except Exception as error:
        log.error(
            "The end of the sweep could not be recorded (%s). Its runs are kept; its parent "
            "run %s stays open.", first_line(error), sweep.parent_run_id,
        )  # fmt: skip
        return
    found = ""
    if tally.best is not None:
        chosen = ", ".join(f"{k}={tally.best.data.params.get(k)}" for k in sweep.grid)
        found = f" Best run: {chosen}, {config.objective} {tally.best_value:.6g}."
    log.info("Sweep done:%s\n%s\n%s", found, outcome_table(tally), sweep.tracker.ui_hint())
