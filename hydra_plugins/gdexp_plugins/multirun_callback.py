"""The callback that makes any sweeper's multirun a tracked gdexp sweep (`hydra.callbacks` in
gdexp's config): with `hydra/sweeper=basic` or `hydra/sweeper=optuna` every job becomes a child
of one parent run, closed with its tally and best run when the sweep ends.

gdexp's own sweeper opens its sweep itself, after validating the grid; then this does nothing.
The work is in `_callback_core`, loaded on first use.
"""

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

GDEXP_SWEEPER = "hydra_plugins.gdexp_plugins.gdexp_sweeper.GdexpSweeper"


class TrackedMultirun(Callback):
    def __init__(self) -> None:
        self.sweep: Any = None  # gdexp.sweep.Sweep, once opened

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.sweeper.get("_target_") == GDEXP_SWEEPER:
            return
        from hydra_plugins.gdexp_plugins._callback_core import open_sweep

        self.sweep = open_sweep(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep is not None:
            from hydra_plugins.gdexp_plugins._callback_core import close_sweep

            close_sweep(self.sweep, config)
