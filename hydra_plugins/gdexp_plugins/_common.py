"""What gdexp's plugins share: the check that the app is gdexp, and how a sweep is described."""

from collections.abc import Iterable, Sequence

from hydra.core.override_parser.types import Override
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from gdexp.config import ConfigError, RunConfig, is_gdexp_config


class GdexpConfigsOnly(CompactHydraException):
    """A gdexp plugin was chosen for another Hydra app."""


def require_gdexp_app(config: DictConfig, plugin: str) -> None:
    if not is_gdexp_config(config):
        missing = [key for key in RunConfig.__dataclass_fields__ if key not in config]
        raise GdexpConfigsOnly(
            f"{plugin} runs gdexp's configs only, and this app's config is not one (it has no "
            f"{', '.join(missing[:3])}...): choose another sweeper or launcher for this app."
        )


def grid_axes(overrides: Iterable[Override]) -> dict[str, str]:
    """{key: "v1,v2,..."} of the swept keys, as typed."""
    return {
        o.get_key_element(): ",".join(str(v) for v in o.sweep_string_iterator())
        for o in overrides
        if o.is_sweep_override() and not o.is_interval_sweep()
    }


def refuse_intervals(overrides: Sequence[Override]) -> None:
    for override in overrides:
        if override.is_interval_sweep():
            raise ConfigError(
                f"{override.input_line} is a range to search, not a list of values: the grid "
                "sweeper runs listed values (step_size=0.01,0.1). To search a range, use an "
                "optimising sweeper: hydra/sweeper=optuna (pip install -e '.[search]'), "
                "as in +sweeps=best_step_size."
            )


def is_table_record(config: DictConfig) -> bool:
    """Whether a config asks for a table sweep (tracking.record=table)."""
    from gdexp.names import RECORD_TABLE

    record = OmegaConf.select(config, "tracking.record")
    return str(getattr(record, "name", record)) == RECORD_TABLE


def refuse_missing_cuda(configs: Iterable[DictConfig]) -> None:
    """device=cuda where torch sees no GPU: refused before any run exists (torch is imported
    only to ask, and only when a config asks for CUDA)."""
    if not any(str(getattr(c.device, "name", c.device)) == "cuda" for c in configs):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda: torch sees no CUDA GPU on this machine; use device=cpu, or "
            "device=auto (CUDA where there is one)."
        )
