"""`python -m gdexp [key=value ...]`: one run; add `-m` and comma-separated values for a sweep."""

from __future__ import annotations

import signal
import sys
from dataclasses import asdict
from pathlib import Path
from types import FrameType

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gdexp.config import register_configs, validate
from gdexp.experiment import run_experiment

register_configs()

# Absolute, so that `python -m gdexp`, the `gdexp` script and wrappers that import `main` all
# find the same configs.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> dict:
    validate(cfg)
    summary = run_experiment(cfg, overrides=list(HydraConfig.get().overrides.task))
    return asdict(summary)


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
        sys.stderr.write(
            "Interrupted: the runs in flight are marked KILLED. "
            "Run the same command again to resume.\n"
        )
        sys.exit(130)


if __name__ == "__main__":
    cli()
