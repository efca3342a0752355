"""Config schema (structured configs in Hydra's ConfigStore) and value checks.

The dataclasses give every key a type, a default and a line of help (`gdexp --help` is built
from them), so a misspelled key or a value of the wrong type fails before anything runs. The
range checks a type cannot express live in `CHECKS`, one per key: `config_problems` applies them
to a composed config (single runs in `main`, every job of a sweep in the sweeper), and
`value_problems` to one key's value as typed on the command line, before Hydra composes
anything.
"""

from __future__ import annotations

import copy
import difflib
import functools
import logging
import math
import typing
from collections.abc import Callable
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from types import UnionType
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import CompactHydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

# What a run reports to a sweeper (lower is better; an optimising sweeper minimises it):
# final_loss, or excess_loss = final_loss - the least-squares optimum. Computed in gdexp.run.
OBJECTIVES = ("final_loss", "excess_loss")


def _key(default: Any, help: str) -> Any:
    """A schema field: its default and the line `gdexp --help` shows for it."""
    return field(default=default, metadata={"help": help})


class DType(Enum):
    float32 = "float32"
    float64 = "float64"


class Device(Enum):
    auto = "auto"  # CUDA when torch sees a GPU, else the CPU
    cpu = "cpu"
    cuda = "cuda"


class Record(Enum):
    runs = "runs"  # an MLflow run per config, under the sweep's parent
    table = "table"  # the sweep's table on its parent only: for grids of 10^5-10^6 configs


@dataclass
class MethodConfig:
    # bgd, sgd and minibatch are the same loop at different batch sizes.
    name: str = _key(MISSING, "the method's name (set by method=NAME)")
    batch_size: int | None = _key(None, "samples per update; null: all in one batch")
    shuffle: bool = _key(False, "reshuffle the data each epoch, from the seed")


@dataclass
class DataConfig:
    # x = x_start + x_step * [0, 1, ..., n_points - 1]
    # y = slope * x + intercept + noise_std * N(0, 1)
    n_points: int = _key(100, "x = x_start + x_step·i for i < n_points")
    x_start: float = _key(-5.0, "the first x")
    x_step: float = _key(0.1, "the spacing of x")
    slope: float = _key(-5.0, "the true w: y = slope·x + intercept + noise")
    intercept: float = _key(0.0, "the true b")
    noise_std: float = _key(0.4, "noise in y: noise_std·N(0, 1), from the seed")


@dataclass
class InitConfig:
    w: float = _key(-10.0, "w before the first update")
    b: float = _key(-20.0, "b before the first update")


@dataclass
class TrackingConfig:
    uri: str | None = _key(None, "the MLflow store; null: $MLFLOW_TRACKING_URI, else ./mlflow.db")
    experiment: str = _key("gdexp", "the MLflow experiment")
    enabled: bool = _key(True, "log to MLflow at all")
    log_step_loss: bool = _key(True, "log each update's batch loss (step_loss)")
    resume: bool = _key(True, "a sweep skips configs already FINISHED")
    retry_seconds: float = _key(60.0, "how long to retry a server that does not answer")
    record: Record = field(
        default=Record.runs,
        metadata={"help": "a sweep's record: a run per config, or one table (dense grids)"},
    )


@dataclass
class RunConfig:
    method: MethodConfig = MISSING
    step_size: float = _key(0.1, "the step size (learning rate) η")
    epochs: int = _key(20, "passes over the data")
    seed: int = _key(0, "seeds the noise in y and the shuffling")
    dtype: DType = field(
        default=DType.float32, metadata={"help": "precision of the data and the training"}
    )
    device: Device = field(
        default=Device.cpu, metadata={"help": "where to train; auto: CUDA when torch sees a GPU"}
    )
    convergence_tolerance: float = _key(
        1e-3, "converged: at most this share of the excess loss left"
    )
    objective: str = _key("final_loss", "what a sweeper minimises: " + " or ".join(OBJECTIVES))
    data: DataConfig = field(default_factory=DataConfig)
    init: InitConfig = field(default_factory=InitConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# The resolver that renders gdexp's help (registered by gdexp.__main__, which builds the text);
# conf/config.yaml chooses hydra/help=gdexp, so Hydra's own --help shows it too.
HELP_RESOLVER = "gdexp.help"


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="gdexp_schema", node=RunConfig)
    # Resolved only when Hydra renders --help: run folders keep the one-line reference.
    template = "${" + HELP_RESOLVER + ":}"
    help_node = {"app_name": "gdexp", "header": "", "footer": "", "template": template}
    store.store(group="hydra/help", name="gdexp", node=help_node, provider="gdexp")


class ConfigError(CompactHydraException):
    """An invalid config value; Hydra prints the message alone, without a traceback."""


# --- the schema, key by key ---------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaKey:
    key: str  # dotted: method.batch_size
    type: Any  # the annotation: float, int | None, DType
    default: Any  # NO_DEFAULT when it comes from elsewhere (method.name: the method's file)
    help: str


def _walk(schema: type, prefix: str = "") -> list[SchemaKey]:
    hints = typing.get_type_hints(schema)
    keys = []
    for item in fields(schema):
        kind = hints[item.name]
        if is_dataclass(kind):
            keys += _walk(kind, f"{prefix}{item.name}.")
            continue
        default = NO_DEFAULT if item.default is MISSING else item.default
        keys.append(SchemaKey(f"{prefix}{item.name}", kind, default, item.metadata.get("help", "")))
    return keys


@functools.cache
def schema_keys() -> tuple[SchemaKey, ...]:
    """Every leaf key of the schema, in the dataclasses' order."""
    return tuple(_walk(RunConfig))


@functools.cache
def _schema_keys() -> frozenset[str]:
    return frozenset(k.key for k in schema_keys())


@functools.cache
def schema_nodes() -> frozenset[str]:
    """The keys that hold other keys: method, data, init, tracking."""
    return frozenset(k.key.rsplit(".", 1)[0] for k in schema_keys() if "." in k.key)


def type_name(kind: Any) -> str:
    """A key's type as `gdexp --help` shows it: int, float, int|null, float32|float64."""
    if isinstance(kind, UnionType):
        parts = [type_name(part) for part in typing.get_args(kind)]
        return "|".join(part for part in parts if part != "null") + "|null"
    if kind is type(None):
        return "null"
    if isinstance(kind, type) and issubclass(kind, Enum):
        return "|".join(member.name for member in kind)
    return getattr(kind, "__name__", str(kind))


def _type_phrase(kind: Any) -> str:
    """A key's type in a sentence: `seed is an int (a whole number)`."""
    if isinstance(kind, UnionType):
        parts = [_type_phrase(p) for p in typing.get_args(kind) if p is not type(None)]
        return " or ".join(parts) + " or null"
    if isinstance(kind, type) and issubclass(kind, Enum):
        return "one of " + ", ".join(member.name for member in kind)
    return {
        int: "an int (a whole number)",
        float: "a float (a number)",
        bool: "a bool (true or false)",
        str: "a string",
    }.get(kind, type_name(kind))


def show_value(value: Any) -> str:
    """A value as one would type it: null, true, 1.5, 'ten'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Enum):
        return value.name
    return repr(value)


def close_keys(typed: str, known: typing.Iterable[str], n: int = 3) -> list[str]:
    """The known keys closest to a typed one, best first: part by part for keys as deep
    (`method.batchsize` finds `method.batch_size`, `method.lr` finds nothing), or by the last
    part alone (`batch_size` finds `method.batch_size`, `noise` finds `data.noise_std`)."""

    def similarity(a: str, b: str) -> float:
        return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio()

    parts = typed.split(".")
    scores = {}
    for key in known:
        theirs = key.split(".")
        part_by_part = (
            min(similarity(a, b) for a, b in zip(parts, theirs, strict=True))
            if len(theirs) == len(parts)
            else 0.0
        )
        leaf, last = parts[-1], theirs[-1]
        by_leaf = 0.9 if len(leaf) >= 3 and last.startswith(leaf) else similarity(leaf, last)
        scores[key] = max(part_by_part, by_leaf - 0.05)  # the whole key first
    best = max(scores.values(), default=0.0)
    close = [key for key, score in scores.items() if score >= max(0.65, best - 0.1)]
    return sorted(close, key=lambda key: -scores[key])[:n]


# --- value checks ---------------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# key: (what is allowed, the check). Every key of the schema with a range beyond its type.
CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "step_size": ("a finite number > 0", lambda v: _finite(v) and v > 0),
    "epochs": ("an integer >= 1", lambda v: v >= 1),
    "method.batch_size": (
        "an integer >= 1, or null for the whole data set",
        lambda v: v is None or v >= 1,
    ),
    "data.n_points": ("an integer >= 1", lambda v: v >= 1),
    "data.noise_std": ("a finite number >= 0", lambda v: _finite(v) and v >= 0),
    "convergence_tolerance": (
        "a number strictly between 0 and 1",
        lambda v: _finite(v) and 0 < v < 1,
    ),
    "objective": ("one of " + ", ".join(OBJECTIVES), lambda v: v in OBJECTIVES),
    "tracking.retry_seconds": ("a finite number of seconds >= 0", lambda v: _finite(v) and v >= 0),
    **{
        key: ("a finite number", _finite)
        for key in (
            "data.x_start",
            "data.x_step",
            "data.slope",
            "data.intercept",
            "init.w",
            "init.b",
        )
    },
}


def range_problem(key: str, value: Any, allowed: str) -> str:
    return f"{key}={value!r} is invalid: it must be {allowed}"


def config_problems(cfg: DictConfig) -> list[str]:
    """Every range problem of a composed config, each naming the field and what is allowed."""
    problems = []
    for key, (allowed, ok) in CHECKS.items():
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            problems.append(range_problem(key, value, allowed))
    known = _schema_keys()
    problems += [
        range_problem(key, value, "removed: it is not a gdexp key (is it misspelled?)")
        for key, value in _leaves(cfg)
        if key not in known
    ]
    return problems


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
def _schema_config() -> DictConfig:
    # method.name is the one key without a default; any name does for type checks.
    return OmegaConf.structured(RunConfig(method=MethodConfig(name="bgd")))


def value_problems(line: str, key: str, values: typing.Iterable[Any]) -> list[str]:
    """What is wrong with `key=value` as typed (`line`; every value of a sweep), before any
    composition: a key misspelled inside a {mapping}, a value of the wrong type (naming the
    type), a value out of its range. Values with interpolations are left to composition."""
    cfg = copy.deepcopy(_schema_config())  # struct, typed: converts as composition would
    problems: list[str] = []
    for value in values:
        if isinstance(value, str) and "${" in value:
            continue
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except ConfigKeyError as error:  # a misspelled key inside a {mapping}
            problems.append(unknown_key_problem(line, str(error.full_key or key), value=None))
            continue
        except ValidationError:
            kind = {k.key: k.type for k in schema_keys()}.get(key)
            if kind is None:  # a node (data, init, ...) given something other than a mapping
                inside = ", ".join(k.key for k in schema_keys() if k.key.startswith(key + "."))
                problems.append(f"{line}: {key} holds keys ({inside}); set one as {key}.KEY=VALUE")
            else:
                problems.append(f"{line}: {key} is {_type_phrase(kind)}, not {show_value(value)}")
            continue
        except OmegaConfBaseException:
            continue  # anything else: composition says it
        for checked, (allowed, ok) in CHECKS.items():
            if checked == key or checked.startswith(key + "."):
                converted = OmegaConf.select(cfg, checked)
                if not ok(converted):
                    problems.append(range_problem(checked, converted, allowed))
    return list(dict.fromkeys(problems))


def unknown_key_problem(
    line: str, key: str, also: typing.Iterable[str] = (), value: str | None = "typed"
) -> str:
    """`epoch=5: gdexp has no key 'epoch'; did you mean epochs=5?`: the closest keys (or config
    groups in `also`, e.g. `+sweeps`), written as the line should have been (`value=None`:
    the key alone)."""
    if value == "typed":
        value = line.split("=", 1)[1] if "=" in line else None
    candidates = {k: k for k in (*_schema_keys(), *schema_nodes())}
    candidates |= {choice.lstrip("+"): choice for choice in also}
    close = close_keys(key, candidates)
    if not close:
        return f"{line}: gdexp has no key '{key}' (python -m gdexp --help lists them)"
    written = [candidates[k] if value is None else f"{candidates[k]}={value}" for k in close]
    return f"{line}: gdexp has no key '{key}'; did you mean {' or '.join(written)}?"


def is_gdexp_config(cfg: DictConfig) -> bool:
    """Whether a composed config is a gdexp run config (has the schema's top-level keys)."""
    return all(key in cfg for key in RunConfig.__dataclass_fields__)


def validate(cfg: DictConfig, context: str = "") -> None:
    problems = config_problems(cfg)
    if problems:
        where = f" ({context})" if context else ""
        raise ConfigError("Invalid config" + where + ":\n  " + "\n  ".join(problems))


# --- output ------------------------------------------------------------------------------------


class LaunchLines(logging.Filter):
    """Drops a launcher's per-job chatter ("Launching 1 jobs locally", "#3 : seed=1") unless
    its logger is verbose: `hydra.verbose=true`, or `hydra.verbose=hydra` for Hydra's alone.
    Attached to the launchers' loggers by conf/config.yaml (hydra.hydra_logging), so gdexp's
    own lines (its plan, a line per run, progress, the closing table) and every warning and
    error pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


@functools.cache
def launch_lines() -> LaunchLines:
    """The one LaunchLines filter: Hydra configures its logging again at every launch, and a
    logger keeps one copy of the same filter object, not one per configuration."""
    return LaunchLines()
