"""Runs, start to end: data, training, judgement, and (through gdexp.store) MLflow.

`run_experiment` is one run, alone or as a job of a sweep: it opens its MLflow run first, so a
run that fails shows its config. `run_grid` is the batched path: a grid of configs trains as one
tensor computation, then each config is logged as its own run with the same content.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from omegaconf import DictConfig

from gdexp import names, stopping
from gdexp.data import Dataset, effective_batch_size, make_run_data
from gdexp.outcome import RunSummary, summarize
from gdexp.train import TrainSettings, Trajectory, train, train_many

if TYPE_CHECKING:
    import pyarrow as pa

    from gdexp.grid import Chunk, TableGrid
    from gdexp.store import Destination, SweepManifest

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
    """Logs each epoch's loss, w and b at one point in time (the epoch's start); then, between
    epochs, stops if a stop was asked for."""

    def __init__(self, cfg: DictConfig, level: int) -> None:
        self.w, self.b, self.level = float(cfg.init.w), float(cfg.init.b), level

    def __call__(self, epoch: int, loss: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> None:
        epoch_log.log(
            self.level,
            "epoch %3d  loss %-12.6g w %-12.6g b %-12.6g",
            epoch, float(loss[0]), self.w, self.b,
        )  # fmt: skip
        self.w, self.b = float(w[0]), float(b[0])
        stopping.check()


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
            train(cfg, data, EpochLines(cfg, epoch_level), device=resolve_device(cfg.device)),
            data,
            cfg.convergence_tolerance,
        )
        log.info(result_line(name, summary))
        return summary

    tracker = destination.tracker
    params, config_metrics = record.config_record(cfg)
    with tracker.run(name, destination.parent_run_id, record.run_tags(cfg, overrides)) as run_id:
        # Written first: a run killed mid-training still shows what it was.
        tracker.log_text(run_id, record.config_yaml(cfg), names.CONFIG_ARTIFACT)
        try:
            stopping.check()  # between store calls
            started = record.now_ms()
            trajectory = train(
                cfg, data, EpochLines(cfg, epoch_level), device=resolve_device(cfg.device)
            )
            span = (started, record.now_ms())
            summary = replace(summarize(trajectory, data, cfg.convergence_tolerance), run_id=run_id)
        except BaseException:  # failed or interrupted: the run still shows its config
            with contextlib.suppress(Exception):
                tracker.log(run_id, params=params, metrics=config_metrics)
            raise
        metrics, tags = record.result_record(cfg, trajectory, summary, span)
        # What the run is and what it did, in as few calls as MLflow's limits allow.
        tracker.log(run_id, params=params, metrics=config_metrics + metrics, tags=tags)
        _leave_rows(destination, [(cfg, trajectory, summary)])
    log.info(result_line(name, summary))
    return summary


def _leave_rows(
    destination: Destination | None,
    finished: Sequence[tuple[DictConfig, Trajectory, RunSummary]],
) -> None:
    """The finished runs' rows, for their sweep's table (gdexp.table), in the sweep's folder."""
    if destination is None or destination.sweep_folder is None or not finished:
        return
    from gdexp import table

    rows = [table.run_row(cfg, trajectory, summary, summary.run_id, resolve_device(cfg.device).type)
            for cfg, trajectory, summary in finished]  # fmt: skip
    table.write_rows(destination.sweep_folder, rows)


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
    group), each config logged as its own run. A group's runs are created before it trains, so
    a process killed mid-training leaves them RUNNING for its sweep to mark KILLED, never
    missing. Returns each config's summary, or the exception that failed it (its run is then
    FAILED); `on_logged(n)` after each run is closed."""
    from gdexp import record

    results: list[RunSummary | Exception | None] = [None] * len(cfgs)
    settings = [TrainSettings.of(cfg) for cfg in cfgs]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, setting in enumerate(settings):
        groups[(setting.signature, resolve_device(cfgs[index].device))].append(index)

    logged = 0
    for (_, device), indices in groups.items():
        for chunk in _chunks(indices, settings[indices[0]]):
            stopping.check()  # between chunks
            run_ids: list[str | None] = []
            try:
                _start_runs(
                    destination, [cfgs[i] for i in chunk], [overrides[i] for i in chunk], run_ids
                )
                datasets = [make_run_data(cfgs[i]) for i in chunk]
                started = record.now_ms()
                try:
                    trajectories: Sequence[Trajectory | Exception] = train_many(
                        [settings[i] for i in chunk], datasets, stopping.check_epoch,
                        device=device,
                    )  # fmt: skip
                except Exception as error:  # the whole group failed; each of its runs says so
                    trajectories = [error] * len(chunk)
                span = (started, record.now_ms())
                finished = []
                for position, (index, run_id, data, trajectory) in enumerate(
                    zip(chunk, run_ids, datasets, trajectories, strict=True)
                ):
                    stopping.check()  # between runs' store calls: the rest end KILLED
                    results[index] = _finish(
                        destination, run_id, cfgs[index], data, trajectory, span
                    )
                    run_ids[position] = None  # closed
                    if isinstance(results[index], RunSummary):
                        finished.append((cfgs[index], trajectory, results[index]))
                    logged += 1
                    if on_logged is not None:
                        on_logged(logged)
            except BaseException:  # interrupted: the chunk's open runs end KILLED, with config
                _kill_runs(destination, [cfgs[i] for i in chunk], run_ids)
                _leave_rows(destination, finished)
                raise
            _leave_rows(destination, finished)
    return results  # type: ignore[return-value]


def _start_runs(
    destination: Destination | None,
    cfgs: Sequence[DictConfig],
    overrides: Sequence[Sequence[str]],
    run_ids: list[str | None],
) -> None:
    """Each config's run, created with its tags and config.yaml, before it trains; appended to
    `run_ids` as they are made, so that an interruption sees the ones already made."""
    if destination is None:
        run_ids += [None] * len(cfgs)
        return
    from gdexp import record

    tracker = destination.tracker
    for cfg, job in zip(cfgs, overrides, strict=True):
        stopping.check()  # between store calls
        run_id = tracker.start_run(
            record.run_name(cfg), destination.parent_run_id, record.run_tags(cfg, job)
        )
        run_ids.append(run_id)
        tracker.log_text(run_id, record.config_yaml(cfg), names.CONFIG_ARTIFACT)


def _kill_runs(
    destination: Destination | None, cfgs: Sequence[DictConfig], run_ids: Sequence[str | None]
) -> None:
    """End the runs still open KILLED, each with its config (what it was, if not what it did)."""
    if destination is None:
        return
    from gdexp import record

    for cfg, run_id in zip(cfgs, run_ids, strict=False):
        if run_id is None:
            continue
        params, metrics = record.config_record(cfg)
        with contextlib.suppress(Exception):
            destination.tracker.log(run_id, params=params, metrics=metrics)
        with contextlib.suppress(Exception):
            destination.tracker.end_run(run_id, "KILLED")


def _finish(
    destination: Destination | None,
    run_id: str | None,
    cfg: DictConfig,
    data: Dataset,
    trajectory: Trajectory | Exception,
    span: tuple[int, int],
) -> RunSummary | Exception:
    from gdexp import record

    try:
        if destination is None or run_id is None:
            if isinstance(trajectory, Exception):
                raise trajectory
            return summarize(trajectory, data, cfg.convergence_tolerance)
        tracker = destination.tracker
        with tracker.closing(run_id):
            params, metrics = record.config_record(cfg)
            if isinstance(trajectory, Exception):
                tracker.log(run_id, params=params, metrics=metrics)
                raise trajectory
            summary = replace(summarize(trajectory, data, cfg.convergence_tolerance), run_id=run_id)
            result_metrics, tags = record.result_record(cfg, trajectory, summary, span)
            # What the run is and what it did, in as few calls as MLflow's limits allow.
            tracker.log(run_id, params=params, metrics=metrics + result_metrics, tags=tags)
        log.info(result_line(record.run_name(cfg), summary))
        return summary
    except Exception as error:
        return error


class TaskStopped(Exception):
    """A cluster task that stopped because it was asked to (scancel, a stopped sweep)."""


def run_chunk(
    cfgs: Sequence[DictConfig], overrides: Sequence[Sequence[str]], where: SweepManifest | None
) -> list[float | Exception]:
    """A chunk of a grid in one cluster task: `run_grid`, logging to the sweep's store, and each
    run's objective (or the exception that failed it) handed back to the launching process."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    # A cancelled task gets SIGTERM (submitit's own handler would ignore it): stop between
    # epochs, its runs KILLED.
    stopping.install()
    destination = where.destination() if where is not None else None
    try:
        results = run_grid(cfgs, overrides, destination)
    except stopping.StopRequested:  # scancel's SIGTERM: a failure the launcher reports as such
        raise TaskStopped(
            "the task was asked to stop (cancelled or interrupted); its runs in flight are KILLED"
        ) from None
    return [
        result if isinstance(result, Exception) else objective_value(result, cfg.objective)
        for cfg, result in zip(cfgs, results, strict=True)
    ]


# --- table sweeps: a grid's configs by chunk, rows only (gdexp.grid, gdexp.table) --------------


def resolve_device(name: object) -> torch.device:
    """`device=auto|cpu|cuda` as torch's device: auto is CUDA when torch sees a GPU."""
    from gdexp.data import dtype_name  # the enum's value, as for dtype

    wanted = dtype_name(name)
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


class ChunkData:
    """Each distinct data set a table sweep's chunks train on, made once a process: one per
    (seed, data settings, dtype), as `make_run_data` makes a run's, with its least-squares loss."""

    def __init__(self) -> None:
        self._made: dict[tuple, tuple[Dataset, float]] = {}

    def __call__(self, key: tuple) -> tuple[Dataset, float]:
        if key not in self._made:
            from gdexp.config import DataConfig
            from gdexp.data import least_squares_fit, make_dataset, torch_dtype
            from gdexp.seeding import random_streams

            seed, n_points, x_start, x_step, slope, intercept, noise_std, dtype = key
            settings = DataConfig(n_points, x_start, x_step, slope, intercept, noise_std)
            data = make_dataset(settings, random_streams(seed).data, torch_dtype(dtype))
            self._made[key] = (data, least_squares_fit(data)[2])
        return self._made[key]


def train_table_chunk(
    grid: TableGrid, chunk: Chunk, parent_run_id: str | None, data: ChunkData | None = None
) -> pa.Table:
    """A table sweep's chunk (`gdexp.grid.Chunk` of a `TableGrid`) trained as one tensor
    computation: its rows of the sweep's table (a pyarrow Table), checking for a stop between
    epochs. The same numbers as each config run alone."""
    from gdexp import table
    from gdexp.data import dtype_name
    from gdexp.grid import DATA_KEYS
    from gdexp.outcome import summarize_many
    from gdexp.train import train_arrays

    data = data or ChunkData()
    cfg = grid.block_config(chunk.block)
    columns = grid.vector_columns(chunk)
    n_points, dtype = int(cfg.data.n_points), dtype_name(cfg.dtype)
    keys = np.stack([columns["seed"].astype(np.float64)] + [columns[k] for k in DATA_KEYS], axis=1)
    distinct, data_index = np.unique(keys, axis=0, return_inverse=True)
    made = [data((int(row[0]), n_points, *map(float, row[1:]), dtype)) for row in distinct]
    device = resolve_device(cfg.device)
    batch = train_arrays(
        [d for d, _ in made],
        columns["step_size"],
        columns["init.w"],
        columns["init.b"],
        columns["seed"],
        data_index=data_index.reshape(-1),
        epochs=int(cfg.epochs),
        batch_size=cfg.method.batch_size,
        shuffle=bool(cfg.method.shuffle),
        dtype=dtype,
        on_epoch=stopping.check_epoch,
        record_steps=False,
        device=device,
    )
    optimal = np.array([loss for _, loss in made])[data_index.reshape(-1)]
    summaries = summarize_many(batch, optimal, columns["convergence_tolerance"])
    return table.chunk_rows(
        cfg, columns, batch, summaries, np.arange(chunk.start, chunk.stop), parent_run_id,
        device.type,
    )  # fmt: skip


def run_table_chunks(
    grid: TableGrid,
    chunks: Sequence[Chunk],
    folder: Path,
    parent_run_id: str | None,
    on_chunk: Callable[[Chunk], None] | None = None,
) -> int:
    """Train a table sweep's chunks one after another, each kept in the sweep folder as soon as
    it is done (gdexp.table.write_chunk); a stop asked for ends it between epochs or chunks,
    the chunk in flight dropped. Returns the configs trained."""
    from gdexp import table
    from gdexp.train import torch_threads

    data = ChunkData()
    trained = 0
    # One thread: a grid is many independent chunks, and a second thread that loses its core to
    # other work stalls every step of the first (benchmarks/phase_map.py: 5.4 s on one thread,
    # 30.8 s on two, 2 cores at load 2.3). Cores are used by processes over chunks (SLURM tasks).
    with torch_threads(1):
        for chunk in chunks:
            stopping.check()  # between chunks
            rows = train_table_chunk(grid, chunk, parent_run_id, data)
            table.write_chunk(folder, chunk.start, chunk.stop, rows)
            trained += len(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
    return trained


def run_table_task(
    grid: TableGrid, chunks: Sequence[Chunk], folder: str, parent_run_id: str | None
) -> int:
    """A cluster task's share of a table sweep: its chunks, their parts left in the sweep's
    folder for the launching process to gather. Stops when cancelled (SIGTERM) or when its
    sweep is stopped (the folder's stop marker)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    stopping.install()
    stopping.follow(Path(folder))
    try:
        return run_table_chunks(grid, chunks, Path(folder), parent_run_id)
    except stopping.StopRequested:
        raise TaskStopped(
            "the task was asked to stop (cancelled or interrupted); its chunk in flight is dropped"
        ) from None
