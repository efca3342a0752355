"""The work of `hydra/launcher=batched`: compose the jobs, train them as one tensor computation,
log each as its own run under the sweep's parent (read from the sweep's manifest)."""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig

from gdexp.config import ConfigError, config_problems
from hydra_plugins.gdexp_plugins._common import require_gdexp_app
from hydra_plugins.gdexp_plugins._job_configs import JobConfigs
from hydra_plugins.gdexp_plugins._progress import Progress

log = logging.getLogger(__name__)


def launch(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> Sequence[JobReturn]:
    config = launcher.config
    require_gdexp_app(config, "hydra/launcher=batched")
    composer = JobConfigs(launcher.hydra_context.config_loader, config)
    configs = []
    for overrides in job_overrides:
        cfg = composer.compose(overrides)
        problems = config_problems(cfg)
        if problems:
            raise ConfigError(f"Invalid config ({' '.join(overrides)}): {'; '.join(problems)}")
        configs.append(cfg)

    from gdexp.run import objective_value, run_grid  # torch: only once this launcher runs

    destination = _destination(config, configs[0]) if configs else None
    log.info("Training %d runs batched in one process", len(configs))
    results = run_grid(
        configs, job_overrides, destination, Progress(len(configs), launcher.progress_seconds)
    )
    returns = []
    for overrides, cfg, result in zip(job_overrides, configs, results, strict=True):
        ret = JobReturn(overrides=list(overrides), cfg=cfg, task_name=config.hydra.job.name)
        if isinstance(result, Exception):
            ret.status, ret.return_value = JobStatus.FAILED, result
        else:
            ret.status = JobStatus.COMPLETED
            ret.return_value = objective_value(result, cfg.objective)
        returns.append(ret)
    return returns


def _destination(config: DictConfig, first: DictConfig) -> Any:
    """The sweep's parent run from its manifest; without one (tracking on, no sweep opened),
    top-level runs in the configured store."""
    if not first.tracking.enabled:
        return None
    from gdexp.store import Destination, SweepManifest, open_tracker

    launch_dir = Path(config.hydra.runtime.cwd)
    manifest = SweepManifest.read(launch_dir / config.hydra.sweep.dir)
    if manifest is not None:
        return manifest.destination()
    tracking = first.tracking
    return Destination(
        open_tracker(tracking.uri, tracking.experiment, tracking.retry_seconds, launch_dir)
    )
