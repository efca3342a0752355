"""`hydra/launcher=batched`: a whole grid in one process, as one tensor computation.

Configs that differ only in values (step size, seed, init, data) train together along a batch
dimension (gdexp.experiment.run_grid); each still becomes its own MLflow child run with the same
params, metrics, outcome and artifact as a job of the per-job launchers. Job configs come from
the sweeper when it has them (gdexp's sweeper composes each job once, cheaply), so nothing is
composed from scratch per job.
"""

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from gdexp.config import ConfigError, config_problems
from hydra_plugins.gdexp_plugins.job_configs import JobConfigs
from hydra_plugins.gdexp_plugins.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.gdexp_plugins.batched_launcher.BatchedLauncher"
    progress_seconds: float = 5.0  # how often long sweeps report progress


ConfigStore.instance().store(
    group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="gdexp"
)


class BatchedLauncher(Launcher):
    def __init__(self, progress_seconds: float = 5.0) -> None:
        self.progress_seconds = progress_seconds
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        # Filled by gdexp's sweeper with the configs it composed and validated.
        self.composed: dict[tuple[str, ...], DictConfig] = {}

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context = hydra_context
        self.config = config

    def _configs(self, job_overrides: Sequence[Sequence[str]]) -> list[DictConfig]:
        missing = [o for o in job_overrides if tuple(o) not in self.composed]
        if missing:
            composer = JobConfigs(self.hydra_context.config_loader, self.config)
            for overrides in missing:
                cfg = composer.compose(overrides)
                problems = config_problems(cfg)
                if problems:
                    raise ConfigError(f"Invalid config ({' '.join(overrides)}): {problems}")
                self.composed[tuple(overrides)] = cfg
        return [self.composed[tuple(o)] for o in job_overrides]

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from gdexp.experiment import run_grid  # torch: loaded only when this launcher runs

        configs = self._configs(job_overrides)
        log.info("Training %d runs batched in one process", len(configs))
        results = run_grid(configs, job_overrides, Progress(len(configs), self.progress_seconds))
        return [
            _job_return(overrides, cfg, result)
            for overrides, cfg, result in zip(job_overrides, configs, results, strict=True)
        ]


def _job_return(overrides: Sequence[str], cfg: DictConfig, result: Any) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), cfg=cfg, task_name="gdexp")
    if isinstance(result, Exception):
        ret.status = JobStatus.FAILED
        ret.return_value = result
    else:
        ret.status = JobStatus.COMPLETED
        ret.return_value = asdict(result)
    return ret
