"""Job configs of a sweep, composed the way Hydra composes them but once per set of group choices.

Hydra's `load_sweep_config` composes every job from scratch (about 150 ms each). Yet a job's
config only depends on its config-group choices (`method=sgd`) through the defaults list; its
value overrides (`step_size=0.1`) are applied afterwards by `_apply_overrides_to_config`. So the
defaults are composed once per distinct set of group choices, and each job is a copy of that with
its value overrides applied by the very same Hydra function: the same result, about a
millisecond a job.
"""

import copy
from collections.abc import Sequence

# Private Hydra APIs, pinned by tests/test_batched.py: a Hydra release that changes them
# fails that test rather than composing different configs.
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, open_dict


class JobConfigs:
    """Task configs (without the `hydra` node) for the jobs of one multirun."""

    def __init__(self, config_loader: ConfigLoaderImpl, master_config: DictConfig) -> None:
        self._loader = config_loader
        self._master = master_config
        self._parser = OverridesParser.create(config_loader=config_loader)
        self._parsed: dict[str, Override] = {}
        self._bases: dict[tuple[str, ...], DictConfig] = {}
        self._group_choices: dict[str, bool] = {}

    def _parse(self, line: str) -> Override:
        if line not in self._parsed:
            [self._parsed[line]] = self._parser.parse_overrides([line])
        return self._parsed[line]

    def _is_group_choice(self, override: Override) -> bool:
        # The same split as Hydra's defaults list (hydra._internal.defaults_list.Overrides).
        line = override.input_line
        if line not in self._group_choices:
            self._group_choices[line] = not isinstance(
                override.value(), dict
            ) and self._loader.repository.group_exists(override.key_or_group)
        return self._group_choices[line]

    def _base(self, group_choices: tuple[str, ...]) -> DictConfig:
        if group_choices not in self._bases:
            cfg = self._loader.load_sweep_config(self._master, list(group_choices))
            with open_dict(cfg):
                del cfg["hydra"]
            self._bases[group_choices] = cfg
        return self._bases[group_choices]

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        parsed = [self._parse(line) for line in overrides]
        groups = tuple(o.input_line for o in parsed if self._is_group_choice(o))
        cfg = copy.deepcopy(self._base(groups))
        ConfigLoaderImpl._apply_overrides_to_config(
            [o for o in parsed if not self._is_group_choice(o)], cfg
        )
        return cfg


def grid_jobs(overrides: Sequence[Override]) -> list[list[str]]:
    """Every job of a grid, in the order and with the override precedence of Hydra's basic
    sweeper (a later value of a key replaces an earlier one)."""
    [jobs] = BasicSweeper.split_arguments(list(overrides), None)
    return jobs
