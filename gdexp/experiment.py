"""One run, start to end: data, training, judgement, and (behind the tracking seam) MLflow."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace

import torch
from omegaconf import DictConfig

from gdexp.data import Dataset, dtype_name, make_dataset, torch_dtype
from gdexp.outcome import RunSummary, summarize
from gdexp.seeding import random_streams
from gdexp.train import train

log = logging.getLogger(__name__)

METHOD_WORDS = {"bgd": "batch GD", "sgd": "stochastic GD", "minibatch": "mini-batch GD"}


def run_name(cfg: DictConfig) -> str:
    return f"{cfg.method.name} lr={cfg.step_size:g} seed={cfg.seed}"


def describe(cfg: DictConfig, summary: RunSummary) -> str:
    """The run in words, for the MLflow run page."""
    method = METHOD_WORDS.get(cfg.method.name, cfg.method.name)
    batch = cfg.method.batch_size or cfg.data.n_points
    order = "shuffled" if cfg.method.shuffle else "in data order"
    end = (
        f"diverged at epoch {summary.diverged_at_epoch}"
        if summary.diverged_at_epoch is not None
        else f"{summary.outcome}: final loss {summary.final_loss:.4g} (best possible "
        f"{summary.optimal_loss:.4g}), w = {summary.final_w:.4g}, b = {summary.final_b:.4g}"
    )
    return (
        f"{method} (batch size {batch}, {order}) at step size {cfg.step_size:g}, seed {cfg.seed}, "
        f"{cfg.epochs} epochs, {dtype_name(cfg.dtype)}: {end}."
    )


def make_run_data(cfg: DictConfig) -> Dataset:
    return make_dataset(cfg.data, random_streams(cfg.seed).data, torch_dtype(cfg.dtype))


def _log_epoch(epoch: int, loss: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> None:
    log.info(
        "epoch %3d  loss %-12.6g w %-12.6g b %-12.6g",
        epoch,
        float(loss[0]),
        float(w[0]),
        float(b[0]),
    )


def run_experiment(cfg: DictConfig, overrides: Sequence[str] = ()) -> RunSummary:
    """Train one validated config; log it to MLflow unless `tracking.enabled` is false."""
    data = make_run_data(cfg)
    if not cfg.tracking.enabled:
        return summarize(train(cfg, data, _log_epoch), data, cfg.convergence_tolerance)

    # Imported here so that training without tracking never loads MLflow.
    from gdexp import tracking

    in_sweep = os.environ.get(tracking.SWEEP_RUN_ID_ENV)
    uri = (
        os.environ[tracking.SWEEP_TRACKING_URI_ENV]
        if in_sweep
        else tracking.resolve_tracking_uri(cfg.tracking.uri)
    )
    tracker = tracking.Tracker(uri, cfg.tracking.experiment)
    with tracker.run(
        run_name(cfg), parent_run_id=in_sweep, tags={"overrides": " ".join(overrides)}
    ) as run_id:
        tracking.log_run_config(tracker, run_id, cfg)
        trajectory = train(cfg, data, _log_epoch)
        summary = replace(summarize(trajectory, data, cfg.convergence_tolerance), run_id=run_id)
        tracking.log_run_result(
            tracker, run_id, trajectory, summary, describe(cfg, summary), cfg.tracking.log_step_loss
        )
    if not in_sweep:
        log.info(
            "Run %s: %s. MLflow UI (run `mlflow ui` here): %s",
            run_name(cfg),
            summary.outcome,
            tracker.ui_address(),
        )
    return summary
