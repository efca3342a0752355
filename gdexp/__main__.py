"""`python -m gdexp [key=value ...]`: one run; add `-m` and comma-separated values for a sweep."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

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


if __name__ == "__main__":
    main()
