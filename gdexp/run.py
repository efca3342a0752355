"""Runs, start to end: data, training, judgement, and (through gdexp.store) MLflow.

`run_experiment` is one run, alone or as a job of a sweep: it opens its MLflow run first, so a
run that fails shows its config. `run_grid` is the batched path: a grid of configs trains as one
tensor computation, then each config is logged as its own run with the same content.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

from gdexp import names
from gdexp.data import Dataset, effective_batch_size, make_run_data
from gdexp.outcome import RunSummary, summarize
from gdexp.train import TrainSettings, Trajectory, train, train_many

if TYPE_CHECKING:
    from gdexp.store import Destination

log = logging.getLogger(__name__)
# Per-epoch lines: shown for a single run; in a sweep with `hydra.verbose=gdexp.epochs`.
epoch_log = logging.getLogger("gdexp.epochs")

# Tensor elements (configs × recorded steps) one batched training may hold: about 0.4 GB.
MAX_BATCH_ELEMENTS = 50_000_000


def objective_value(summary: RunSummary, objective: str) -> float:
    """The run's objective for a sweeper. A run that did not end finite (diverged) gets +inf,
    worse than every finite run, so an optimiser learns from it instead of failing on it."""
    value = {
        "final_loss": summary.final_loss,
        "excess_loss": summary.final_loss - summary.optimal_loss,
    }[objective]
    return value if math.isfinite(value) else math.inf


class EpochLines:
    """Logs each epoch's loss, w and b at one point in time (the epoch's start)."""

    def __init__(self, cfg: DictConfig, level: int) -> None:
        self.w, self.b, self.level = float(cfg.init.w), float(cfg.init.b), level

    def __call__(self, epoch: int, loss: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> None:
        epoch_log.log(
            self.level,
            "epoch %3d  loss %-12.6g w %-12.6g b %-12.6g",
            epoch, float(loss[0]), self.w, self.b,
        )  # fmt: skip
        self.w, self.b = float(w[0]), float(b[0])


def result_line(name: str, summary: RunSummary) -> str:
    """One line per finished run: what a sweep prints for each."""
    return (
        f"{name}: {summary.outcome}, final loss {summary.final_loss:.4g}, "
        f"w {summary.final_w:.4g}, b {summary.final_b:.4g}"
    )


def run_experiment(
    cfg: DictConfig,
    overrides: Sequence[str] = (),
    destination: Destination | None = None,
    epoch_level: int = logging.INFO,
) -> RunSummary:
    """Train one validated config; log it to `destination` (nothing is logged without one)."""
    from gdexp import record

    data = make_run_data(cfg)
    name = record.run_name(cfg)
    if destination is None:
        summary = summarize(
            train(cfg, data, EpochLines(cfg, epoch_level)), data, cfg.convergence_tolerance
        )
        log.info(result_line(name, summary))
        return summary

    tracker = destination.tracker
    with tracker.run(name, destination.parent_run_id, record.run_tags(cfg, overrides)) as run_id:
        params, metrics = record.config_record(cfg)
        tracker.log(run_id, params=params, metrics=metrics)
        tracker.log_text(run_id, record.config_yaml(cfg), names.CONFIG_ARTIFACT)
        trajectory = train(cfg, data, EpochLines(cfg, epoch_level))
        summary = replace(summarize(trajectory, data, cfg.convergence_tolerance), run_id=run_id)
        metrics, tags = record.result_record(cfg, trajectory, summary)
        tracker.log(run_id, metrics=metrics, tags=tags)
    log.info(result_line(name, summary))
    return summary


def _chunks(indices: list[int], settings: TrainSettings) -> list[list[int]]:
    """Slices of a group small enough that its recorded history fits MAX_BATCH_ELEMENTS."""
    n = settings.n_points
    steps = settings.epochs * -(-n // effective_batch_size(settings.batch_size, n))
    size = max(1, MAX_BATCH_ELEMENTS // steps)
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def run_grid(
    cfgs: Sequence[DictConfig],
    overrides: Sequence[Sequence[str]],
    destination: Destination | None,
    on_logged: Callable[[int], None] | None = None,
) -> list[RunSummary | Exception]:
    """Train validated configs in groups that share a loop structure (one tensor computation a
    group), then log each as its own run. Returns each config's summary, or the exception that
    failed it (its run is then marked FAILED); `on_logged(n)` after each run is logged."""
    results: list[RunSummary | Exception | None] = [None] * len(cfgs)
    settings = [TrainSettings.of(cfg) for cfg in cfgs]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, setting in enumerate(settings):
        groups[setting.signature].append(index)

    logged = 0
    for indices in groups.values():
        for chunk in _chunks(indices, settings[indices[0]]):
            datasets = [make_run_data(cfgs[i]) for i in chunk]
            try:
                trajectories: Sequence[Trajectory | Exception] = train_many(
                    [settings[i] for i in chunk], datasets
                )
            except Exception as error:  # the whole group failed; each of its runs says so
                trajectories = [error] * len(chunk)
            for index, data, trajectory in zip(chunk, datasets, trajectories, strict=True):
                results[index] = _finish(
                    destination, cfgs[index], overrides[index], data, trajectory
                )
                logged += 1
                if on_logged is not None:
                    on_logged(logged)
    return results  # type: ignore[return-value]


def _finish(
    destination: Destination | None,
    cfg: DictConfig,
    overrides: Sequence[str],
    data: Dataset,
    trajectory: Trajectory | Exception,
) -> RunSummary | Exception:
    from gdexp import record

    try:
        if destination is None:
            if isinstance(trajectory, Exception):
                raise trajectory
            return summarize(trajectory, data, cfg.convergence_tolerance)
        tracker = destination.tracker
        name = record.run_name(cfg)
        with tracker.run(
            name, destination.parent_run_id, record.run_tags(cfg, overrides)
        ) as run_id:
            params, metrics = record.config_record(cfg)
            tracker.log_text(run_id, record.config_yaml(cfg), names.CONFIG_ARTIFACT)
            if isinstance(trajectory, Exception):
                tracker.log(run_id, params=params, metrics=metrics)
                raise trajectory
            summary = replace(summarize(trajectory, data, cfg.convergence_tolerance), run_id=run_id)
            result_metrics, tags = record.result_record(cfg, trajectory, summary)
            # What the run is and what it did, in as few calls as MLflow's limits allow.
            tracker.log(run_id, params=params, metrics=metrics + result_metrics, tags=tags)
        log.info(result_line(name, summary))
        return summary
    except Exception as error:
        return error
