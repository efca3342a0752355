"""What a run records in MLflow: its identity (config hash, code fingerprint, provenance), its
params, its history and final figures, its outcome and description.

Pure functions from configs and results to MLflow entities; `gdexp.store.Tracker` sends them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, OmegaConf

from gdexp import names
from gdexp.data import dtype_name, effective_batch_size
from gdexp.outcome import RunSummary
from gdexp.train import Trajectory

if TYPE_CHECKING:
    from mlflow.entities import Metric

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The files whose content determines a run's numbers. gdexp/analysis only reads runs back, and
# conf/hydra/ says where runs are launched (cluster presets), not what they compute.
CODE_FILES = ("gdexp/**/*.py", "conf/**/*.yaml", "hydra_plugins/gdexp_plugins/**/*.py")
CODE_EXCLUDED = ("gdexp/analysis/", "conf/hydra/")
# Settings that say where and how a run is tracked or reported, not what it computes.
NOT_IDENTITY = ("uri", "experiment", "enabled", "resume", "retry_seconds")


def command_line() -> str:
    return "python -m gdexp " + shlex.join(sys.argv[1:])


@functools.cache
def code_fingerprint() -> str:
    """A hash of the code as it is on disk (uncommitted edits count) and the torch version: what,
    beside the config, determines a run's numbers."""
    digest = hashlib.sha256(f"torch=={version('torch')}".encode())
    files = sorted(
        path
        for pattern in CODE_FILES
        for path in PROJECT_ROOT.glob(pattern)
        if path.is_file()
        and not any(path.relative_to(PROJECT_ROOT).as_posix().startswith(e) for e in CODE_EXCLUDED)
    )
    for path in files:
        digest.update(path.relative_to(PROJECT_ROOT).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def provenance_tags() -> dict[str, str]:
    """What made a run: the code fingerprint, the project's commit (and whether it had
    uncommitted changes), the command, and the versions that matter for its numbers."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        names.CODE_TAG: code_fingerprint(),
        names.GIT_COMMIT_TAG: commit or "unknown",
        names.GIT_DIRTY_TAG: "unknown" if dirty is None else str(bool(dirty)).lower(),
        names.COMMAND_TAG: command_line(),
        f"{names.VERSION_TAG_PREFIX}python": platform.python_version(),
        **{
            f"{names.VERSION_TAG_PREFIX}{p}": version(p)
            for p in ("torch", "hydra-core", "mlflow", "gdexp")
        },
    }


def config_hash(cfg: DictConfig) -> str:
    """A config's identity: the resolved config, less where it is tracked."""
    tree = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    tree.pop("hydra", None)
    for key in NOT_IDENTITY:
        tree.get("tracking", {}).pop(key, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:32]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, the dotted keys Hydra overrides use."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as MLflow params with dotted keys (method.batch_size, data.slope...)."""
    return flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


def finite_metrics(
    key: str,
    values: Sequence[float],
    first_step: int = 0,
    span: tuple[int, int] | None = None,
) -> list[Metric]:
    """One Metric per finite value, at steps first_step, first_step + 1, ...; non-finite values
    are left out (MLflow stores inf as ±1.8e308, and a NaN breaks its run page).

    A history is logged in one batch after training, so its points are stamped across `span`,
    the wall-clock milliseconds (start, end) over which they were computed: the first point at
    the start, the last at the end, evenly between. The stamps then fall inside the run's
    lifetime, and MLflow's time-axis chart draws a curve, not one vertical line. Without a
    span, every point is stamped now."""
    from mlflow.entities import Metric

    start, end = span if span is not None else (now_ms(), now_ms())
    last = max(len(values) - 1, 1)
    return [
        Metric(key, float(value), start + (end - start) * index // last, first_step + index)
        for index, value in enumerate(values)
        if math.isfinite(value)
    ]


def now_ms() -> int:
    """Wall-clock time as MLflow stamps runs and metrics: milliseconds since the epoch."""
    return int(time.time() * 1000)


def result_metrics(
    trajectory: Trajectory,
    summary: RunSummary,
    log_step_loss: bool,
    span: tuple[int, int] | None = None,
) -> list[Metric]:
    """A run's history and final figures. Steps count epochs done: `loss` at step k is measured
    after k epochs (before epoch k's updates), `w` and `b` at step k after k epochs. `step_loss`
    is at the global update index. `span`: when training ran (ms); the final figures are
    stamped at its end."""
    span = span if span is not None else (now_ms(), now_ms())
    metrics = (
        finite_metrics(names.LOSS_METRIC, trajectory.epoch_loss, 0, span)
        + finite_metrics("w", trajectory.w, 1, span)
        + finite_metrics("b", trajectory.b, 1, span)
    )
    if log_step_loss:
        metrics += finite_metrics(names.STEP_LOSS_METRIC, trajectory.step_loss, 0, span)
    finals = {key: getattr(summary, key) for key in names.FINAL_METRICS}
    if summary.diverged_at_epoch is not None:
        finals[names.DIVERGED_AT_METRIC] = summary.diverged_at_epoch
    for key, value in finals.items():
        metrics += finite_metrics(key, [value], 0, (span[1], span[1]))
    return metrics


def run_name(cfg: DictConfig) -> str:
    return f"{cfg.method.name} lr={cfg.step_size:g} seed={cfg.seed}"


def run_tags(cfg: DictConfig, overrides: Sequence[str]) -> dict[str, str]:
    """The tags a run is created with: what made it and which config it is."""
    return {
        **provenance_tags(),
        names.OVERRIDES_TAG: " ".join(overrides),
        names.CONFIG_HASH_TAG: config_hash(cfg),
    }


def describe(cfg: DictConfig, summary: RunSummary) -> str:
    """The run in words, for the MLflow run page."""
    method = names.method_words(cfg.method.name)
    batch = effective_batch_size(cfg.method.batch_size, cfg.data.n_points)
    order = "shuffled" if cfg.method.shuffle else "in data order"
    end = (
        f"diverged: inf/NaN at epoch {summary.diverged_at_epoch}"
        if summary.diverged_at_epoch is not None
        else f"{summary.outcome}: final loss {summary.final_loss:.4g} (best possible "
        f"{summary.optimal_loss:.4g}), w = {summary.final_w:.4g}, b = {summary.final_b:.4g}"
    )
    # The result first: the MLflow runs table shows only the first ~50 characters.
    return (
        f"{end[0].upper()}{end[1:]}. {method} (batch size {batch}, {order}) at step size "
        f"{cfg.step_size:g}, seed {cfg.seed}, {cfg.epochs} epochs, {dtype_name(cfg.dtype)}."
    )


def config_record(cfg: DictConfig) -> tuple[dict[str, Any], list[Metric]]:
    """What a run is: its params, and its step size as a metric (params are strings; a metric
    sorts and filters numerically)."""
    return config_params(cfg), finite_metrics(names.STEP_SIZE_METRIC, [cfg.step_size])


def result_record(
    cfg: DictConfig,
    trajectory: Trajectory,
    summary: RunSummary,
    span: tuple[int, int] | None = None,
) -> tuple[list[Metric], dict[str, str]]:
    """What a run did: its metrics, and its outcome and description as tags. `span`: when it
    trained (ms since the epoch), to stamp its history with."""
    tags = {
        names.OUTCOME_TAG: summary.outcome,
        names.OUTCOME_REASON_TAG: summary.reason,
        names.NOTE_TAG: describe(cfg, summary),
    }
    return result_metrics(trajectory, summary, cfg.tracking.log_step_loss, span), tags


def config_yaml(cfg: DictConfig) -> str:
    """`OmegaConf.to_yaml(cfg, resolve=True)`, the same text, through libyaml (3× faster)."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(
        container, Dumper=dumper, sort_keys=False, allow_unicode=True, default_flow_style=False
    )
