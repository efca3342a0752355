"""Runs, start to end: data, training, judgement, and (behind the tracking seam) MLflow.

`run_experiment` is one job of a sweep (or a single run): it opens its MLflow run first, so a run
that fails shows its config. `run_grid` is the batched path: a grid of configs trains as one
tensor computation, then each config is logged as its own run with the same content.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

from gdexp.data import Dataset, dtype_name, effective_batch_size, make_run_data
from gdexp.names import method_words
from gdexp.outcome import RunSummary, summarize
from gdexp.train import TrainSettings, Trajectory, train, train_many

if TYPE_CHECKING:
    from gdexp.tracking import Tracker

log = logging.getLogger(__name__)

# Tensor elements (configs × recorded steps) one batched training may hold: about 0.4 GB.
MAX_BATCH_ELEMENTS = 50_000_000


def run_name(cfg: DictConfig) -> str:
    return f"{cfg.method.name} lr={cfg.step_size:g} seed={cfg.seed}"


def describe(cfg: DictConfig, summary: RunSummary) -> str:
    """The run in words, for the MLflow run page."""
    method = method_words(cfg.method.name)
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


def run_tags(cfg: DictConfig, overrides: Sequence[str]) -> dict[str, str]:
    from gdexp import tracking

    return {"overrides": " ".join(overrides), tracking.CONFIG_HASH_TAG: tracking.config_hash(cfg)}


def _log_epoch(epoch: int, loss: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> None:
    log.info(
        "epoch %3d  loss %-12.6g w %-12.6g b %-12.6g",
        epoch,
        float(loss[0]),
        float(w[0]),
        float(b[0]),
    )


def open_tracker(cfg: DictConfig) -> tuple[Tracker, str | None]:
    """The store a run goes to and its sweep's parent run, if it is a job of a sweep."""
    # Imported here so that training without tracking never loads MLflow.
    from gdexp import tracking

    tracking.configure_retries(cfg.tracking.retry_seconds)
    parent = os.environ.get(tracking.SWEEP_RUN_ID_ENV)
    uri = (
        os.environ[tracking.SWEEP_TRACKING_URI_ENV]
        if parent
        else tracking.resolve_tracking_uri(cfg.tracking.uri)
    )
    # A job of a running sweep waits out a server restart; a command that is starting does not.
    wait = cfg.tracking.retry_seconds if parent else 0.0
    return tracking.Tracker(uri, cfg.tracking.experiment, wait_for_server=wait), parent


def run_experiment(cfg: DictConfig, overrides: Sequence[str] = ()) -> RunSummary:
    """Train one validated config; log it to MLflow unless `tracking.enabled` is false."""
    data = make_run_data(cfg)
    if not cfg.tracking.enabled:
        return summarize(train(cfg, data, _log_epoch), data, cfg.convergence_tolerance)

    from gdexp import tracking

    tracker, parent = open_tracker(cfg)
    with tracker.run(run_name(cfg), parent, run_tags(cfg, overrides)) as run_id:
        tracking.log_run_config(tracker, run_id, cfg)
        trajectory = train(cfg, data, _log_epoch)
        summary = replace(summarize(trajectory, data, cfg.convergence_tolerance), run_id=run_id)
        tracking.log_run_result(
            tracker, run_id, trajectory, summary, describe(cfg, summary), cfg.tracking.log_step_loss
        )
    if not parent:
        log.info("Run %s: %s. %s", run_name(cfg), summary.outcome, tracker.ui_hint())
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

    tracker, parent = open_tracker(cfgs[0]) if cfgs[0].tracking.enabled else (None, None)
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
                cfg = cfgs[index]
                results[index] = _finish(tracker, parent, cfg, overrides[index], data, trajectory)
                logged += 1
                if on_logged is not None:
                    on_logged(logged)
    return results  # type: ignore[return-value]


def _finish(
    tracker: Tracker | None,
    parent: str | None,
    cfg: DictConfig,
    overrides: Sequence[str],
    data: Dataset,
    trajectory: Trajectory | Exception,
) -> RunSummary | Exception:
    from gdexp import tracking

    try:
        if tracker is None:
            if isinstance(trajectory, Exception):
                raise trajectory
            return summarize(trajectory, data, cfg.convergence_tolerance)
        with tracker.run(run_name(cfg), parent, run_tags(cfg, overrides)) as run_id:
            if isinstance(trajectory, Exception):
                tracking.log_run_config(tracker, run_id, cfg)
                raise trajectory
            summary = replace(summarize(trajectory, data, cfg.convergence_tolerance), run_id=run_id)
            tracking.log_whole_run(
                tracker, run_id, cfg, trajectory, summary, describe(cfg, summary)
            )
        return summary
    except Exception as error:
        return error
