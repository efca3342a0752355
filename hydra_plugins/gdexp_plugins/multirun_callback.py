"""gdexp's Hydra callback (`hydra.callbacks` in gdexp's config). It makes any sweeper's multirun
a tracked gdexp sweep: with `hydra/sweeper=basic` or `hydra/sweeper=optuna` every job becomes a
child of one parent run, closed with its tally and best run when the sweep ends. And it refuses,
in one line, a run or sweep whose folder or store cannot be written, before Hydra creates it.

Hydra turns an exception raised by a callback into a warning and goes on; a refusal must stop
the command, so it leaves as SystemExit with its one line.
The work is in `_callback_core`, loaded on first use.
"""

from typing import Any

from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

GDEXP_SWEEPER = "hydra_plugins.gdexp_plugins.gdexp_sweeper.GdexpSweeper"


class TrackedMultirun(Callback):
    def __init__(self) -> None:
        self.sweep: Any = None  # gdexp.sweep.Sweep, once opened

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra_plugins.gdexp_plugins._callback_core import check_run

        _refuse_in_one_line(check_run, config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.sweeper.get("_target_") == GDEXP_SWEEPER:
            return  # gdexp's sweeper opens its sweep itself, after validating the grid
        from hydra_plugins.gdexp_plugins._callback_core import open_sweep

        self.sweep = _refuse_in_one_line(open_sweep, config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep is not None:
            from hydra_plugins.gdexp_plugins._callback_core import close_sweep

            close_sweep(self.sweep, config)


def _refuse_in_one_line(step: Any, config: DictConfig) -> Any:
    try:
        return step(config)
    except CompactHydraException as error:
        raise SystemExit(str(error)) from None
