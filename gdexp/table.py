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

from omegaconf import DictConfig

from gdexp.data import dtype_name, effective_batch_size

if TYPE_CHECKING:
    import pyarrow as pa

    from gdexp.outcome import RunSummary
    from gdexp.train import Trajectory

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
    cfg: DictConfig, trajectory: Trajectory, summary: RunSummary, run_id: str | None
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
        **config_row(cfg),
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
    pq.write_table(rows_table(rows), partial)
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

    pq.write_table(rows_table(rows), path)
