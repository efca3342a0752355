"""`hydra/sweeper=gdexp`, gdexp's default: Hydra's grid sweep, tracked as one MLflow sweep.

It composes and validates every job's config before any run exists, then hands the grid to
`gdexp.sweep` (parent run, resume, tally) and the configured launcher. The work is in
`_sweeper_core`, loaded on first use.
"""

from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class GdexpSweeperConf:
    _target_: str = "hydra_plugins.gdexp_plugins.gdexp_sweeper.GdexpSweeper"
    # Hydra loads plugin modules outside sys.modules, so no string annotations here.
    max_batch_size: Optional[int] = None  # noqa: UP045
    params: Optional[dict[str, str]] = None  # noqa: UP045
    progress_seconds: float = 5.0  # how often a long sweep reports its progress


ConfigStore.instance().store(
    group="hydra/sweeper", name="gdexp", node=GdexpSweeperConf, provider="gdexp"
)


class GdexpSweeper(Sweeper):
    def __init__(
        self,
        max_batch_size: Optional[int] = None,  # noqa: UP045
        params: Optional[dict[str, str]] = None,  # noqa: UP045
        progress_seconds: float = 5.0,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.progress_seconds = progress_seconds
        self.config: Optional[DictConfig] = None  # noqa: UP045
        self.hydra_context: Optional[HydraContext] = None  # noqa: UP045
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from hydra.errors import CompactHydraException

        from hydra_plugins.gdexp_plugins._sweeper_core import sweep

        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise SystemExit(
                f"hydra.sweeper.max_batch_size={self.max_batch_size}: a batch is at least one "
                "job (or null: the whole grid at once)"
            )
        try:
            return sweep(self, arguments)
        except CompactHydraException as error:  # gdexp's one-line refusals, without a footer
            raise SystemExit(str(error)) from None
