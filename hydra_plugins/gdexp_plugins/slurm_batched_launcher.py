"""`hydra/launcher=slurm_batched`: a grid split into chunks of `runs_per_task` configs, one SLURM
array task per chunk (submitted with submitit); each task trains its chunk as one tensor
computation and logs every config as its own run, exactly as `hydra/launcher=batched` does on
one machine. A table sweep (tracking.record=table) is sent as whole chunks, up to
`configs_per_task` configs a task, whose rows the sweep gathers. The work is in
`_slurm_batched_core`, loaded on first use.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class SlurmBatchedLauncherConf:
    _target_: str = "hydra_plugins.gdexp_plugins.slurm_batched_launcher.SlurmBatchedLauncher"
    # Hydra loads plugin modules outside sys.modules, so no string annotations here.
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    cluster: str = "slurm"  # submitit's executor: slurm, or local (one machine, for trying it)
    partition: Optional[str] = None  # noqa: UP045
    runs_per_task: int = 250
    configs_per_task: int = 50_000  # a table sweep (tracking.record=table): configs a task
    table_chunk: int = 10_000  # a table sweep: configs trained together, kept as one part
    timeout_min: int = 30
    cpus_per_task: int = 1
    mem_gb: float = 4.0
    array_parallelism: int = 32
    name: str = "${hydra.job.name}"
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    job_folders: bool = False  # Hydra's per-job folders with .hydra/, written before submitting


ConfigStore.instance().store(
    group="hydra/launcher",
    name="gdexp_slurm_batched",
    node=SlurmBatchedLauncherConf,
    provider="gdexp",
)


class SlurmBatchedLauncher(Launcher):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.job_folders = bool(settings.get("job_folders", False))
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
        from hydra_plugins.gdexp_plugins._slurm_batched_core import launch

        return launch(self, job_overrides, initial_job_idx)

    def launch_composed(
        self,
        job_overrides: Sequence[Sequence[str]],
        configs: Sequence[DictConfig],
        initial_job_idx: int,
    ) -> Sequence[JobReturn]:
        """`launch`, given the jobs' configs as gdexp's sweeper composed and validated them."""
        from hydra_plugins.gdexp_plugins._slurm_batched_core import launch

        return launch(self, job_overrides, initial_job_idx, configs)

    @property
    def table_chunk(self) -> int:
        return int(self.settings.get("table_chunk") or 10_000)

    def launch_table(self, *args: Any) -> list[str]:
        """A table sweep's chunks, as array tasks (gdexp's sweeper calls it)."""
        from hydra_plugins.gdexp_plugins._slurm_batched_core import launch_table

        return launch_table(self, *args)
