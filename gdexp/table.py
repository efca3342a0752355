"""A sweep's table: one row per config, its config, results and per-epoch history, as Parquet.

Every sweep's parent run carries `results.parquet` (gdexp.names.TABLE_ARTIFACT) at the root of
its artifacts: analysis reads a sweep in one artifact download, the same on SQLite, PostgreSQL
and an `mlflow server`. The columns are typed (a config's numbers are numbers, not MLflow's
param strings); `loss`, `w` and `b` are lists per row (pandas reads them as arrays): `loss[k]` is
the full-data loss after k epochs, `w[k]`, `b[k]` the parameters after k + 1 epochs. Non-finite
values are kept: they are data (a history that turned inf stops there, as its run's does).

Rows are written where they are made (a job's process, a batched chunk, a cluster task) as small
Parquet parts in the sweep's folder (`ROWS_FOLDER`), and gathered into the table when the sweep
closes. pyarrow loads only when a row is written or a table read.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig

from gdexp.data import dtype_name, effective_batch_size

if TYPE_CHECKING:
    import pyarrow as pa

    from gdexp.outcome import RunSummaries, RunSummary
    from gdexp.train import Trajectory, TrajectoryBatch

# In a sweep's folder: the rows its runs wrote, one Parquet part per run or batched chunk.
ROWS_FOLDER = ".gdexp-rows"

# Column -> Arrow type name, in order. Config first, then results, then histories.
CONFIG_COLUMNS: dict[str, str] = {
    "method": "string",
    "batch_size": "int64",  # effective: n_points for bgd
    "shuffle": "bool",
    "step_size": "float64",
    "seed": "int64",
    "epochs": "int64",
    "dtype": "string",
    "device": "string",
    "convergence_tolerance": "float64",
    "n_points": "int64",
    "x_start": "float64",
    "x_step": "float64",
    "slope": "float64",
    "intercept": "float64",
    "noise_std": "float64",
    "init_w": "float64",
    "init_b": "float64",
}
RESULT_COLUMNS: dict[str, str] = {
    "initial_loss": "float64",
    "final_loss": "float64",  # +inf for a run that diverged
    "final_w": "float64",
    "final_b": "float64",
    "optimal_loss": "float64",
    "outcome": "string",
    "diverged_at_epoch": "int64",  # null unless the run turned non-finite
}
HISTORY_COLUMNS = ("loss", "w", "b")
COLUMNS: dict[str, str] = {
    "run_id": "string",  # null for a config without a run of its own (a table sweep)
    "run_name": "string",
    "parent_run_id": "string",  # the sweep's parent run
    "start_time": "int64",  # when the run started, ms since the epoch (MLflow's clock)
    "status": "string",  # MLflow's: FINISHED, FAILED or KILLED (results only when FINISHED)
    "config_index": "int64",  # the config's place in a table sweep's grid; null for runs
    **CONFIG_COLUMNS,
    **RESULT_COLUMNS,
    **dict.fromkeys(HISTORY_COLUMNS, "list<float64>"),
}


# Parquet's dictionary encoding only where values repeat (the strings): on floats it is tried and
# dropped, which doubles the time to write. Parts, read once by the sweep that gathers them, are
# not compressed either: a table is written in a fifth of the time (benchmarks/phase_map.py).
TABLE_OPTIONS: dict[str, Any] = {
    "use_dictionary": [name for name, kind in COLUMNS.items() if kind == "string"]
}
PART_OPTIONS: dict[str, Any] = {**TABLE_OPTIONS, "compression": "none"}


def schema() -> pa.Schema:
    import pyarrow as pa

    def arrow(kind: str) -> pa.DataType:
        return pa.list_(pa.float64()) if kind.startswith("list") else pa.type_for_alias(kind)

    return pa.schema([(name, arrow(kind)) for name, kind in COLUMNS.items()])


def config_row(cfg: DictConfig, device: str = "cpu") -> dict[str, Any]:
    """A config's columns, from its composed config."""
    data, init = cfg.data, cfg.init
    return {
        "method": cfg.method.name,
        "batch_size": effective_batch_size(cfg.method.batch_size, data.n_points),
        "shuffle": bool(cfg.method.shuffle),
        "step_size": float(cfg.step_size),
        "seed": int(cfg.seed),
        "epochs": int(cfg.epochs),
        "dtype": dtype_name(cfg.dtype),
        "device": device,
        "convergence_tolerance": float(cfg.convergence_tolerance),
        "n_points": int(data.n_points),
        "x_start": float(data.x_start),
        "x_step": float(data.x_step),
        "slope": float(data.slope),
        "intercept": float(data.intercept),
        "noise_std": float(data.noise_std),
        "init_w": float(init.w),
        "init_b": float(init.b),
    }


def run_row(
    cfg: DictConfig,
    trajectory: Trajectory,
    summary: RunSummary,
    run_id: str | None,
    device: str = "cpu",
) -> dict[str, Any]:
    """One finished config's row."""
    diverged = summary.diverged_at_epoch
    return {
        "run_id": run_id,
        "run_name": None,  # the run's info: filled in when the sweep gathers its rows
        "parent_run_id": None,
        "start_time": None,
        "status": "FINISHED",
        "config_index": None,
        **config_row(cfg, device),
        "initial_loss": float(summary.initial_loss),
        "final_loss": float(summary.final_loss),
        "final_w": float(summary.final_w),
        "final_b": float(summary.final_b),
        "optimal_loss": float(summary.optimal_loss),
        "outcome": summary.outcome,
        "diverged_at_epoch": None if diverged is None else int(diverged),
        "loss": [float(v) for v in trajectory.epoch_loss],
        "w": [float(v) for v in trajectory.w],
        "b": [float(v) for v in trajectory.b],
    }


def rows_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_pylist([dict(row) for row in rows], schema=schema())


def write_rows(folder: Path, rows: Sequence[Mapping[str, Any]]) -> Path | None:
    """Rows as a new Parquet part in the sweep folder's rows folder (written whole, then moved
    into place, so a reader never sees half a part). Nothing for no rows."""
    if not rows:
        return None
    import pyarrow.parquet as pq

    target = folder / ROWS_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}.parquet"
    partial = target / f".{name}.partial"
    pq.write_table(rows_table(rows), partial, **PART_OPTIONS)
    os.replace(partial, target / name)
    return target / name


def read_parts(folders: Iterable[Path]) -> pa.Table:
    """Every part written in these sweep folders, as one table (empty if none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [
        pq.read_table(path, schema=schema())
        for folder in folders
        for path in sorted((folder / ROWS_FOLDER).glob("*.parquet"))
    ]
    return pa.concat_tables(parts) if parts else schema().empty_table()


def sweep_table(
    run_ids: Sequence[str], sources: Sequence[pa.Table]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a sweep whose runs are `run_ids`, in that order: each run's row from the
    first source that has it (this attempt's parts, then an earlier attempt's table). Returns
    the rows and the runs that have no row anywhere (their process died before writing it)."""
    found: dict[str, dict[str, Any]] = {}
    for source in sources:
        for row in source.to_pylist():
            found.setdefault(row["run_id"], row)
    rows = [found[run_id] for run_id in run_ids if run_id in found]
    return rows, [run_id for run_id in run_ids if run_id not in found]


def record_row(
    run_id: str,
    status: str,
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    outcome: str | None,
    histories: Mapping[str, Sequence[float]],
) -> dict[str, Any]:
    """A run's row from what MLflow holds of it (params are strings; non-finite values were
    never logged, so a diverged run's final loss is +inf)."""

    def number(key: str, kind: type) -> Any:
        text = params.get(key)
        if text in (None, "None", "null"):
            return None
        if kind is bool:
            return text == "True"
        return kind(float(text)) if kind is int else kind(text)

    n_points = number("data.n_points", int)
    diverged = metrics.get("diverged_at_epoch")
    finished = status == "FINISHED"
    final_loss = metrics.get("final_loss", math.inf if finished or diverged is not None else None)
    return {
        "run_id": run_id,
        "run_name": None,
        "parent_run_id": None,
        "start_time": None,
        "status": status,
        "config_index": None,
        "method": params.get("method.name"),
        "batch_size": effective_batch_size(number("method.batch_size", int), n_points),
        "shuffle": number("method.shuffle", bool),
        "step_size": number("step_size", float),
        "seed": number("seed", int),
        "epochs": number("epochs", int),
        "dtype": params.get("dtype"),
        "device": params.get("device", "cpu"),
        "convergence_tolerance": number("convergence_tolerance", float),
        "n_points": n_points,
        "x_start": number("data.x_start", float),
        "x_step": number("data.x_step", float),
        "slope": number("data.slope", float),
        "intercept": number("data.intercept", float),
        "noise_std": number("data.noise_std", float),
        "init_w": number("init.w", float),
        "init_b": number("init.b", float),
        "initial_loss": metrics.get("initial_loss"),
        "final_loss": final_loss,
        "final_w": metrics.get("final_w"),
        "final_b": metrics.get("final_b"),
        "optimal_loss": metrics.get("optimal_loss"),
        "outcome": outcome if finished else None,
        "diverged_at_epoch": None if diverged is None else int(diverged),
        **{key: list(histories.get(key, ())) for key in HISTORY_COLUMNS},
    }


def read_table(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(path, schema=schema())


def write_table(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(rows_table(rows), path, **TABLE_OPTIONS)


def _lists(values: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Row c's first lengths[c] values of a (rows, width) array, as a list<float64> column."""
    import pyarrow as pa

    width = values.shape[1]
    keep = np.arange(width)[None, :] < lengths[:, None]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.ascontiguousarray(values, dtype=np.float64)[keep]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.float64()))


def chunk_rows(
    cfg: DictConfig,
    columns: Mapping[str, np.ndarray],
    batch: TrajectoryBatch,
    summaries: RunSummaries,
    config_index: np.ndarray,
    parent_run_id: str | None,
    device: str,
) -> pa.Table:
    """A table sweep's chunk as rows of the table, built column by column from its arrays:
    the config of its block (`cfg`) with each config's `columns` (gdexp.grid.VECTOR_KEYS), and
    what it did. Each row holds what `run_row` gives the same config run alone."""
    import pyarrow as pa

    n = len(config_index)
    block = config_row(cfg, device)
    vector = {
        "step_size": "step_size",
        "seed": "seed",
        "init_w": "init.w",
        "init_b": "init.b",
        "convergence_tolerance": "convergence_tolerance",
        "x_start": "data.x_start",
        "x_step": "data.x_step",
        "slope": "data.slope",
        "intercept": "data.intercept",
        "noise_std": "data.noise_std",
    }
    diverged = np.asarray(summaries.diverged_at_epoch)
    arrays = {
        "run_id": pa.nulls(n, pa.string()),
        "run_name": pa.nulls(n, pa.string()),
        "parent_run_id": pa.array([parent_run_id] * n, pa.string()),
        "start_time": pa.nulls(n, pa.int64()),
        "status": pa.array(["FINISHED"] * n, pa.string()),
        "config_index": pa.array(np.asarray(config_index, dtype=np.int64)),
        **{
            column: pa.array(columns[vector[column]])
            if column in vector
            else pa.array([value] * n, pa.type_for_alias(CONFIG_COLUMNS[column]))
            for column, value in block.items()
        },
        "initial_loss": pa.array(np.asarray(summaries.initial_loss, dtype=np.float64)),
        "final_loss": pa.array(np.asarray(summaries.final_loss, dtype=np.float64)),
        "final_w": pa.array(np.asarray(summaries.final_w, dtype=np.float64)),
        "final_b": pa.array(np.asarray(summaries.final_b, dtype=np.float64)),
        "optimal_loss": pa.array(np.asarray(summaries.optimal_loss, dtype=np.float64)),
        "outcome": pa.array(np.asarray(summaries.outcome, dtype=object), pa.string()),
        "diverged_at_epoch": pa.array(diverged.astype(np.int64), mask=diverged < 0),
        "loss": _lists(batch.epoch_loss, batch.epochs_measured),
        "w": _lists(batch.w, batch.epochs_updated),
        "b": _lists(batch.b, batch.epochs_updated),
    }
    return pa.Table.from_pydict(arrays, schema=schema())


# --- a table sweep's chunks: a part each, gathered in grid order -------------------------------


def chunk_part(folder: Path, start: int, stop: int) -> Path:
    """Where the rows of a table sweep's chunk [start, stop) are kept in its sweep folder."""
    return folder / ROWS_FOLDER / f"rows-{start:012d}-{stop:012d}.parquet"


def write_chunk(folder: Path, start: int, stop: int, rows: pa.Table) -> Path:
    """A finished chunk's rows, kept on disk as soon as it is done (written whole, then moved
    into place: a part is there complete or not at all)."""
    import pyarrow.parquet as pq

    path = chunk_part(folder, start, stop)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    pq.write_table(rows, partial, **PART_OPTIONS)
    os.replace(partial, path)
    return path


def adopt_chunks(folder: Path, earlier: Path) -> int:
    """Link the chunk parts an earlier attempt kept in its folder into this one (a resumed
    sweep's Hydra folder is a new one); returns how many."""
    adopted = 0
    for part in sorted((earlier / ROWS_FOLDER).glob("rows-*.parquet")):
        target = folder / ROWS_FOLDER / part.name
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(part, target)
        except OSError:  # another file system: a copy
            import shutil

            shutil.copyfile(part, target)
        adopted += 1
    return adopted


def gather_chunks(
    folder: Path, chunks: Sequence[tuple[int, int]], path: Path
) -> tuple[dict[str, int], int]:
    """The table of a table sweep from its chunks' parts, in grid order, written to `path` one
    part at a time (memory: one chunk, not the grid). Chunks without a part (not finished) are
    left out. Returns the outcomes counted and the number of rows."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    outcomes: dict[str, int] = {}
    rows = 0
    with pq.ParquetWriter(path, schema(), **TABLE_OPTIONS) as writer:
        for start, stop in chunks:
            part = chunk_part(folder, start, stop)
            if not part.is_file():
                continue
            rows_of_chunk = pq.read_table(part, schema=schema())
            writer.write_table(rows_of_chunk)
            rows += rows_of_chunk.num_rows
            for entry in pc.value_counts(rows_of_chunk["outcome"]).to_pylist():
                key = entry["values"] or "none"
                outcomes[key] = outcomes.get(key, 0) + entry["counts"]
    return outcomes, rows
