"""`python -m gdexp [key=value ...]`: one run; add `-m` and comma-separated values for a sweep."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from types import FrameType

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from gdexp.config import register_configs, validate

register_configs()

# Absolute, so that `python -m gdexp`, the `gdexp` script and wrappers that import `main` all
# find the same configs.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")

log = logging.getLogger("gdexp.run")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """One run. Returns its objective (`objective=`, lower is better) for any Hydra sweeper."""
    validate(cfg)
    hydra_cfg = HydraConfig.get()
    job_of_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    # Paths are taken from the launch folder, wherever the job runs (hydra.job.chdir=true).
    launch_dir = Path(hydra_cfg.runtime.cwd)

    manifest = None
    if cfg.tracking.enabled:
        from gdexp.store import SweepManifest, preflight, resolve_tracking_uri

        manifest = SweepManifest.read(launch_dir / hydra_cfg.sweep.dir) if job_of_sweep else None
        if manifest is None:  # a store that cannot be used is refused before torch loads
            preflight(resolve_tracking_uri(cfg.tracking.uri, launch_dir))

    # Imported here: composing, validating, --help and refusals never load torch or MLflow.
    from gdexp.run import objective_value, run_experiment

    destination = None
    if cfg.tracking.enabled:
        from gdexp.store import Destination, open_tracker

        if manifest is not None:
            destination = manifest.destination()
        else:
            tracking = cfg.tracking
            destination = Destination(
                open_tracker(tracking.uri, tracking.experiment, tracking.retry_seconds, launch_dir)
            )
    summary = run_experiment(
        cfg,
        overrides=list(hydra_cfg.overrides.task),
        destination=destination,
        epoch_level=logging.DEBUG if job_of_sweep else logging.INFO,
    )
    if destination is not None and not job_of_sweep:
        log.info(destination.tracker.ui_hint())
    return objective_value(summary, cfg.objective)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Once is enough: a second SIGTERM must not cut short the cleanup the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def cli() -> None:
    """The command: SIGTERM is handled like Ctrl-C, so that runs in flight end as KILLED."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except KeyboardInterrupt:
        if "gdexp.sweep" in sys.modules:  # a sweep another sweeper drove may still be open
            from gdexp.sweep import close_open_sweeps

            close_open_sweeps()
        sys.stderr.write("Interrupted. Run the same command again to resume.\n")
        sys.exit(130)


if __name__ == "__main__":
    cli()
