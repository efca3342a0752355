"""`hydra/launcher=batched`: a whole grid in one process, as one tensor computation.

Configs that differ only in values (step size, seed, init, data) train together along a batch
dimension (gdexp.run.run_grid); each still becomes its own MLflow run with the same params,
metrics, outcome and artifact as a job of the per-job launchers. The work is in
`_batched_core`, loaded on first use.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.gdexp_plugins.batched_launcher.BatchedLauncher"
    progress_seconds: float = 5.0  # how often long sweeps report progress
    # Hydra's per-job folders (<sweep dir>/<job num>/.hydra/: config.yaml, hydra.yaml,
    # overrides.yaml): off, as they cost a dense sweep about a third more time.
    job_folders: bool = False
    table_chunk: int = 10_000  # a table sweep (tracking.record=table): configs trained together


ConfigStore.instance().store(
    group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="gdexp"
)


class BatchedLauncher(Launcher):
    def __init__(
        self, progress_seconds: float = 5.0, job_folders: bool = False, table_chunk: int = 10_000
    ) -> None:
        self.progress_seconds = progress_seconds
        self.job_folders = job_folders
        self.table_chunk = table_chunk
        self.hydra_context: Optional[HydraContext] = None  # noqa: UP045
        self.config: Optional[DictConfig] = None  # noqa: UP045

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context = hydra_context
        self.config = config

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from hydra_plugins.gdexp_plugins._batched_core import launch

        return launch(self, job_overrides, initial_job_idx)

    def launch_composed(
        self,
        job_overrides: Sequence[Sequence[str]],
        configs: Sequence[DictConfig],
        initial_job_idx: int,
    ) -> Sequence[JobReturn]:
        """`launch`, given the jobs' configs as gdexp's sweeper composed and validated them."""
        from hydra_plugins.gdexp_plugins._batched_core import launch

        return launch(self, job_overrides, initial_job_idx, configs)
