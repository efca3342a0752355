"""Config schema (structured configs in Hydra's ConfigStore) and value checks.

The dataclasses give every key a type, so a misspelled key or a value of the wrong type fails
when Hydra composes the config. `validate` adds the range checks a type cannot express; it runs
before any MLflow run exists, for single runs in `main` and for every job of a sweep in the
sweeper.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import CompactHydraException
from omegaconf import MISSING, DictConfig, OmegaConf


# What a run reports to a sweeper (lower is better; an optimising sweeper minimises it):
# final_loss, or excess_loss = final_loss - the least-squares optimum. Computed in gdexp.run.
OBJECTIVES = ("final_loss", "excess_loss")


class DType(Enum):
    float32 = "float32"
    float64 = "float64"


@dataclass
class MethodConfig:
    # bgd, sgd and minibatch are the same loop at different batch sizes.
    name: str = MISSING
    batch_size: int | None = None  # None means the whole data set in one batch
    shuffle: bool = False  # reshuffle the data each epoch (from the run's seed)


@dataclass
class DataConfig:
    # x = x_start + x_step * [0, 1, ..., n_points - 1]
    # y = slope * x + intercept + noise_std * N(0, 1)
    n_points: int = 100
    x_start: float = -5.0
    x_step: float = 0.1
    slope: float = -5.0
    intercept: float = 0.0
    noise_std: float = 0.4


@dataclass
class InitConfig:
    w: float = -10.0
    b: float = -20.0


@dataclass
class TrackingConfig:
    # None: $MLFLOW_TRACKING_URI if set, else sqlite:///<launch folder>/mlflow.db
    uri: str | None = None
    experiment: str = "gdexp"
    enabled: bool = True
    # Per-update batch losses as the `step_loss` metric; dense sweeps may turn it off.
    log_step_loss: bool = True
    # Skip sweep jobs whose config already has a FINISHED run in the experiment.
    resume: bool = True
    # How long to keep retrying a tracking server that does not answer, before a run fails.
    retry_seconds: float = 60.0


@dataclass
class RunConfig:
    method: MethodConfig = MISSING
    step_size: float = 0.1
    epochs: int = 20
    seed: int = 0
    dtype: DType = DType.float32
    # A run counts as `converged` when final_loss - optimal_loss is at most this share of
    # initial_loss - optimal_loss (what is left of the excess loss it started with).
    convergence_tolerance: float = 1e-3
    objective: str = "final_loss"  # one of OBJECTIVES
    data: DataConfig = field(default_factory=DataConfig)
    init: InitConfig = field(default_factory=InitConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def register_configs() -> None:
    ConfigStore.instance().store(name="gdexp_schema", node=RunConfig)


class ConfigError(CompactHydraException):
    """An invalid config value; Hydra prints the message alone, without a traceback."""


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def config_problems(cfg: DictConfig) -> list[str]:
    """Every range problem of a composed config, each naming the field and what is allowed."""
    checks: list[tuple[str, Any, bool, str]] = [
        (
            "step_size",
            cfg.step_size,
            _finite(cfg.step_size) and cfg.step_size > 0,
            "a finite number > 0",
        ),
        ("epochs", cfg.epochs, cfg.epochs >= 1, "an integer >= 1"),
        (
            "method.batch_size",
            cfg.method.batch_size,
            cfg.method.batch_size is None or cfg.method.batch_size >= 1,
            "an integer >= 1, or null for the whole data set",
        ),
        ("data.n_points", cfg.data.n_points, cfg.data.n_points >= 1, "an integer >= 1"),
        (
            "data.noise_std",
            cfg.data.noise_std,
            _finite(cfg.data.noise_std) and cfg.data.noise_std >= 0,
            "a finite number >= 0",
        ),
        (
            "convergence_tolerance",
            cfg.convergence_tolerance,
            _finite(cfg.convergence_tolerance) and 0 < cfg.convergence_tolerance < 1,
            "a number strictly between 0 and 1",
        ),
        (
            "objective",
            cfg.objective,
            cfg.objective in OBJECTIVES,
            "one of " + ", ".join(OBJECTIVES),
        ),
        (
            "tracking.retry_seconds",
            cfg.tracking.retry_seconds,
            _finite(cfg.tracking.retry_seconds) and cfg.tracking.retry_seconds >= 0,
            "a finite number of seconds >= 0",
        ),
    ]
    for key in ("data.x_start", "data.x_step", "data.slope", "data.intercept", "init.w", "init.b"):
        group, name = key.split(".")
        value = cfg[group][name]
        checks.append((key, value, _finite(value), "a finite number"))
    known = _schema_keys()
    checks += [
        (key, value, False, "removed: it is not a gdexp key (is it misspelled?)")
        for key, value in _leaves(cfg)
        if key not in known
    ]
    return [
        f"{key}={value!r} is invalid: it must be {allowed}"
        for key, value, ok, allowed in checks
        if not ok
    ]


def _leaves(cfg: DictConfig, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf, skipping Hydra's own `hydra` node."""
    leaves = []
    for key in cfg:
        if key == "hydra" and not prefix:
            continue
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            leaves += _leaves(node, f"{prefix}{key}.")
        else:
            leaves.append((f"{prefix}{key}", node._value()))
    return leaves


@functools.cache
def _schema_keys() -> frozenset[str]:
    return frozenset(
        key for key, _ in _leaves(OmegaConf.structured(RunConfig(method=MethodConfig())))
    )


def is_gdexp_config(cfg: DictConfig) -> bool:
    """Whether a composed config is a gdexp run config (has the schema's top-level keys)."""
    return all(key in cfg for key in RunConfig.__dataclass_fields__)


def validate(cfg: DictConfig, context: str = "") -> None:
    problems = config_problems(cfg)
    if problems:
        where = f" ({context})" if context else ""
        raise ConfigError("Invalid config" + where + ":\n  " + "\n  ".join(problems))
