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
    launcher: Any,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    configs: Sequence[DictConfig] | None = None,
) -> Sequence[JobReturn]:
    """`configs`: the jobs' configs, when gdexp's sweeper has composed them already."""
    config = launcher.config
    require_gdexp_app(config, "hydra/launcher=batched")
    if configs is None:
        configs = compose_jobs(launcher, job_overrides)

    from gdexp.run import objective_value, run_grid  # torch: only once this launcher runs

    manifest = job_manifest(config, configs[0]) if configs else None
    destination = manifest.destination() if manifest is not None else None
    log.info("Training %d runs batched in one process", len(configs))
    results = run_grid(
        configs, job_overrides, destination, Progress(len(configs), launcher.progress_seconds)
    )
    results = [r if isinstance(r, Exception) else objective_value(r, c.objective)
               for r, c in zip(results, configs, strict=True)]  # fmt: skip
    return job_returns(config, job_overrides, configs, results)


def compose_jobs(launcher: Any, job_overrides: Sequence[Sequence[str]]) -> list[DictConfig]:
    """Each job's config, composed once per set of group choices and validated."""
    composer = JobConfigs(launcher.hydra_context.config_loader, launcher.config)
    configs = []
    for overrides in job_overrides:
        cfg = composer.compose(overrides)
        problems = config_problems(cfg)
        if problems:
            raise ConfigError(f"Invalid config ({' '.join(overrides)}): {'; '.join(problems)}")
        configs.append(cfg)
    return configs


def job_manifest(config: DictConfig, first: DictConfig) -> Any:
    """Where the jobs log: the sweep's manifest; without one (tracking on, no sweep opened),
    top-level runs in the configured store; None without tracking."""
    if not first.tracking.enabled:
        return None
    from gdexp.store import SweepManifest, resolve_tracking_uri

    launch_dir = Path(config.hydra.runtime.cwd)
    manifest = SweepManifest.read(launch_dir / config.hydra.sweep.dir)
    if manifest is not None:
        return manifest
    tracking = first.tracking
    return SweepManifest(
        resolve_tracking_uri(tracking.uri, launch_dir),
        tracking.experiment,
        None,
        tracking.retry_seconds,
    )


def job_returns(
    config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    configs: Sequence[DictConfig],
    results: Sequence[Any],
) -> list[JobReturn]:
    """Hydra's JobReturns: the objective of each run, or the exception that failed it."""
    returns = []
    for overrides, cfg, result in zip(job_overrides, configs, results, strict=True):
        ret = JobReturn(overrides=list(overrides), cfg=cfg, task_name=config.hydra.job.name)
        ret.status = JobStatus.FAILED if isinstance(result, Exception) else JobStatus.COMPLETED
        ret.return_value = result
        returns.append(ret)
    return returns
