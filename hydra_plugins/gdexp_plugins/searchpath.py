"""Puts the project root on Hydra's search path, so `+sweeps=NAME` finds `sweeps/NAME.yaml`."""

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class GdexpSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if (PROJECT_ROOT / "sweeps").is_dir():
            search_path.append(provider="gdexp", path=f"file://{PROJECT_ROOT}")
