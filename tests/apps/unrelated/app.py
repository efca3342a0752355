"""A tiny Hydra app that has nothing to do with gdexp: how gdexp's plugins look to others.

It prints which heavy modules Hydra's plugin scan left loaded, so a test can check that
installing gdexp costs other apps nothing.
"""

import sys

import hydra
from omegaconf import DictConfig

HEAVY = ("torch", "mlflow", "pandas", "matplotlib")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    loaded = sorted(name for name in HEAVY if name in sys.modules)
    print(f"x={cfg.x} heavy modules loaded: {loaded or 'none'}")


if __name__ == "__main__":
    main()
