"""`hydra/launcher=slurm`: one SLURM array task per run, as hydra-submitit-launcher submits it,
but waited for as a sweep needs: every task is waited for even when one fails (a cancelled or
timed-out task fails its own run only), and Ctrl-C cancels the array. The preset is
conf/hydra/launcher/slurm.yaml (hydra-submitit-launcher's settings); the work is in
`_slurm_core`, loaded on first use.
"""

from collections.abc import Sequence
from typing import Any, Optional

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class GdexpSlurmLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        self.params = params
        self.hydra_context: Optional[HydraContext] = None  # noqa: UP045
        self.task_function: Optional[TaskFunction] = None  # noqa: UP045
        self.config: Optional[DictConfig] = None  # noqa: UP045

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from hydra_plugins.gdexp_plugins._slurm_core import launch

        return launch(self, job_overrides, initial_job_idx)
