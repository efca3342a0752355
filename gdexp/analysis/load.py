"""Runs and metric histories out of MLflow, as typed pandas frames.

`load_runs` gives one row per run (or per config of a table sweep) with numbers as numbers
(MLflow keeps params as strings); `load_histories` gives per-epoch metrics in long form. Both read
the same store gdexp writes to: by default `gdexp.store.resolve_tracking_uri(None)`, i.e.
$MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db.

A sweep is read from its table (gdexp.table: `results.parquet` on its parent run, a typed row per
config with its loss, w and b per epoch) in one artifact download, and, for a table without its
runs' names and start times, one search for them, the same on SQLite, PostgreSQL and an `mlflow
server`. The table is turned into the frame column by column (no Python object per value), so a
table sweep of 10^5-10^6 configs loads in about a second. Everything else (a sweep without a
table, a sweep still running, every run of an experiment, metrics the table does not hold such as
step_loss) goes through MLflow's public API: `search_runs` page by page, and `get_metric_history`
run by run on a thread pool. gdexp reads no MLflow table directly and touches no private attribute
of MLflow. See benchmarks/load_histories.py and benchmarks/analysis.py for the timings.

A table sweep (`tracking.record=table`: its parent tagged gdexp.record=table) has no child runs:
its configs are rows of its table only, each without a run id and with its place in the grid,
`config_index`. `load_runs` gives them as rows with run_id (and run_name, start_time) null and
config_index set; `load_histories` keys their histories by config_index. A runs sweep's rows all
have a run id and a null config_index. No run id is ever made up.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from gdexp.config import DataConfig, InitConfig, MethodConfig, RunConfig
from gdexp.names import (
    AXIS_PARAM_PREFIX,
    COMMAND_TAG,
    CONFIG_HASH_TAG,
    DIVERGED_AT_METRIC,
    FINAL_METRICS,
    KIND_TAG,
    OUTCOME_TAG,
    PARENT_TAG,
    RECORD_RUNS,
    RECORD_TABLE,
    RECORD_TAG,
    SWEEP_DIR_TAG,
    SWEEP_KIND,
    SWEEP_RUNS_ARTIFACT,
    TABLE_ARTIFACT,
)
from gdexp.store import resolve_tracking_uri
from gdexp.table import COLUMNS as TABLE_COLUMNS
from gdexp.table import HISTORY_COLUMNS as TABLE_HISTORIES
from gdexp.table import record_row

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

LATEST = "latest"

# The table's int64 columns that may be null, as pandas' nullable Int64 (<NA>): config_index
# (null for a run of a runs sweep), diverged_at_epoch (null unless the run turned non-finite).
NULLABLE_INT_COLUMNS = ("config_index", "diverged_at_epoch")
# The table's start_time (int64 ms since the epoch, MLflow's clock) is a UTC timestamp here.
TIME_COLUMN = "start_time"
_FRAME_DTYPES = {"string": "object", "int64": "int64", "float64": "float64", "bool": "bool"}


def _frame_dtype(column: str, kind: str) -> str:
    if column == TIME_COLUMN:
        return "datetime64[ms, UTC]"
    if column in NULLABLE_INT_COLUMNS:
        return "Int64"
    return _FRAME_DTYPES[kind]


# Columns of `load_runs`, in order, with their dtypes: a sweep table's columns (gdexp.table.COLUMNS:
# the run's info, the config, the results) less the per-epoch histories, each named there only.
# Strings are object columns (None where missing: outcome for a run that failed, run_id, run_name
# and start_time for a table sweep's config); final_loss is +inf for a diverged run whose loss
# overflowed (never logged to MLflow); config_index is <NA> for every run of a runs sweep.
RUN_COLUMNS: dict[str, str] = {
    column: _frame_dtype(column, kind)
    for column, kind in TABLE_COLUMNS.items()
    if column not in TABLE_HISTORIES
}
# Params a run must have to be one of gdexp's (gdexp.table.record_row reads the rest).
_REQUIRED_PARAMS = ("method.name", "step_size", "seed", "epochs", "data.n_points")

HISTORY_COLUMNS = ("run_id", "key", "step", "value")
# `load_histories` of a table sweep's configs (no run ids): keyed by their place in the grid.
CONFIG_HISTORY_COLUMNS = ("config_index", "key", "step", "value")
# The step of a table history's first point, as gdexp.record.result_metrics logs it to MLflow:
# loss at step k is measured after k epochs (k = 0, 1, ...), w and b after epochs 1, 2, ...
_FIRST_STEP = {"loss": 0, "w": 1, "b": 1}
_IDS_PER_SEARCH = 100  # run ids per `attributes.run_id IN (...)` filter
# What a sweep's table may say of each run beside gdexp.table.COLUMNS, as MLflow does: its run
# name, its parent's run id and its start time (int64, ms since the epoch). A table without
# them costs a search for its runs (~1 s per 1,000 runs on SQLite).
_INFO_COLUMNS = ("run_name", "parent_run_id", "start_time")

# Where `load_runs` / `load_histories` read from: "table" a sweep's table (gdexp.table), "runs"
# MLflow's runs and metric histories, "auto" the table when the sweep has one.
Source = Literal["auto", "table", "runs"]
SOURCES = ("auto", "table", "runs")


class AnalysisError(Exception):
    """A problem the user can fix (a wrong name, an empty selection); its message says how."""


class StoreNotFound(AnalysisError):
    pass


class ExperimentNotFound(AnalysisError):
    pass


class SweepNotFound(AnalysisError):
    pass


class NoRuns(AnalysisError):
    pass


_CLIENTS: dict[str, MlflowClient] = {}


def open_store(tracking_uri: str | None = None) -> tuple[str, MlflowClient]:
    """(uri, client) of the store; a SQLite file that does not exist is an error (MLflow would
    silently create an empty one). One client per store and process: opening a SQL store checks
    its schema, which costs more than most queries."""
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if path != ":memory:" and not Path(path).is_file():
            _CLIENTS.pop(uri, None)
            raise StoreNotFound(
                f"No MLflow store at {path}: run gdexp in this folder first, or pass "
                "--tracking-uri (or set MLFLOW_TRACKING_URI) to the store it logged to."
            )
    if uri not in _CLIENTS:
        _CLIENTS[uri] = MlflowClient(tracking_uri=uri)
    return uri, _CLIENTS[uri]


def get_experiment_id(client: MlflowClient, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    names = sorted(e.name for e in client.search_experiments())
    there = ", ".join(repr(n) for n in names) if names else "none"
    raise ExperimentNotFound(f"No experiment {experiment!r} in this store; experiments: {there}.")


def _search_all(client: MlflowClient, experiment_id: str, filter_string: str = "") -> list[Run]:
    """Every active run the filter selects, latest first, page by page."""
    runs: list[Run] = []
    token = None
    while True:
        with _gc_paused():
            page = client.search_runs(
                [experiment_id],
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=10_000,
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No garbage collection while a SQL store builds an ORM object per param, tag and metric
    of every run found (50,000 for 1,000 runs), none of them garbage: the collector's passes
    over them cost as much as the search itself."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _sweep_filter() -> str:
    return f"tags.`{KIND_TAG}` = '{SWEEP_KIND}'"


def _describe_sweeps(parents: Sequence[Run], other: bool = False, limit: int = 8) -> str:
    """The sweeps, latest first, by name and id: for error messages."""
    words = "other sweeps" if other else "sweeps"
    if not parents:
        return f"there are no {words} in this experiment"
    shown = "; ".join(f"{p.info.run_name!r} (id {p.info.run_id})" for p in parents[:limit])
    more = f"; and {len(parents) - limit} more" if len(parents) > limit else ""
    return f"{words}, latest first: {shown}{more}"


def find_sweep(client: MlflowClient, experiment_id: str, sweep: str) -> Run:
    """The sweep parent run `sweep` names: a run id, a run name, or "latest"."""
    parents = _search_all(client, experiment_id, _sweep_filter())  # latest first
    if sweep == LATEST:
        if not parents:
            raise SweepNotFound("No sweep in this experiment; run one with `python -m gdexp -m`.")
        return parents[0]
    by_id = [p for p in parents if p.info.run_id == sweep]
    if by_id:
        return by_id[0]
    by_name = [p for p in parents if p.info.run_name == sweep]
    if len(by_name) > 1:
        ids = ", ".join(p.info.run_id for p in by_name)
        raise SweepNotFound(f"{len(by_name)} sweeps are named {sweep!r}; pick one by id: {ids}.")
    if by_name:
        return by_name[0]
    raise SweepNotFound(f"No sweep {sweep!r}; {_describe_sweeps(parents)}.")


@dataclass(frozen=True)
class _Record:
    """What `load_runs` reads of a run from MLflow."""

    run_id: str
    run_name: str | None
    status: str
    start_time: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @classmethod
    def of(cls, run: Run) -> _Record:
        info, data = run.info, run.data
        return cls(
            info.run_id, info.run_name, info.status, info.start_time,
            data.params, data.metrics, data.tags,
        )  # fmt: skip


def _row(run: _Record) -> dict[str, Any] | None:
    """A run's row: its config and results as the sweep's table would record them
    (gdexp.table.record_row, the one reading of MLflow's params), its info from MLflow, its
    outcome from its tag, and its final figures by `_finals`' rule."""
    params, metrics, tags = run.params, run.metrics, run.tags
    if any(key not in params for key in _REQUIRED_PARAMS):
        return None
    row = record_row(run.run_id, run.status, params, metrics, None, {})
    for key in TABLE_HISTORIES:
        del row[key]
    diverged_at = metrics.get(DIVERGED_AT_METRIC)
    row.update(
        run_name=run.run_name,
        parent_run_id=tags.get(PARENT_TAG),
        start_time=run.start_time,
        outcome=tags.get(OUTCOME_TAG),
        **_finals(run.status, metrics, None if diverged_at is None else int(diverged_at)),
    )
    return row


def runs_frame(runs: Iterable[Run | _Record]) -> pd.DataFrame:
    """`load_runs`'s frame from MLflow Run objects (runs without gdexp's params are left out)."""
    rows, skipped = [], []
    for run in runs:
        record = run if isinstance(run, _Record) else _Record.of(run)
        row = _row(record)
        if row is None:
            skipped.append(record.run_id)
        else:
            rows.append(row)
    if skipped:
        log.warning("Left out %d runs without gdexp's config params: %s", len(skipped), skipped)
    return _typed({c: pd.Series([row[c] for row in rows], dtype=object) for c in RUN_COLUMNS})


def _typed(columns: Mapping[str, Any]) -> pd.DataFrame:
    """Columns (any array-likes of one length, named as `RUN_COLUMNS`) as `load_runs`'s frame:
    its columns, dtypes and order, whichever source they came from (so that the sources give
    equal frames). A missing string is None, a missing number NaN or <NA>."""
    typed = {}
    for column, dtype in RUN_COLUMNS.items():
        values = pd.Series(columns[column], dtype=object if dtype == "object" else None)
        if column == TIME_COLUMN:
            values = pd.to_datetime(values, unit="ms", utc=True).astype(dtype)
        elif dtype == "object":
            values = values.where(values.notna(), None)
        else:
            values = values.astype(dtype)
        typed[column] = values.reset_index(drop=True)
    frame = pd.DataFrame(typed)
    # The run id next to last: runs a batched launcher started in the same millisecond keep one
    # order whichever source they came from (a table's order is the sweep's, a search's
    # MLflow's); a table sweep's configs (no run id, no start time) by their place in the grid.
    frame = frame.sort_values(
        ["method", "step_size", "seed", TIME_COLUMN, "run_id", "config_index"], kind="stable"
    )
    return frame.reset_index(drop=True)


# --- reading runs through MLflow's API ---------------------------------------------------------


def _children(client: MlflowClient, experiment_id: str, parent: Run) -> list[Run]:
    return _search_all(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")


def _runs_by_id(client: MlflowClient, experiment_id: str, run_ids: Sequence[str]) -> list[Run]:
    """The active runs among `run_ids`, a search per 100 ids (a filter's length is bounded)."""
    found: list[Run] = []
    for start in range(0, len(run_ids), _IDS_PER_SEARCH):
        ids = ", ".join(f"'{run_id}'" for run_id in run_ids[start : start + _IDS_PER_SEARCH])
        found += _search_all(client, experiment_id, f"attributes.run_id IN ({ids})")
    return found


def _select_runs(client: MlflowClient, experiment_id: str, parent: Run | None) -> list[_Record]:
    """The runs `load_runs` selects, as records: every non-sweep run, or a sweep's runs (its
    children and the runs it reused, one per config)."""
    if parent is None:
        return [_Record.of(r) for r in _search_all(client, experiment_id) if not _is_sweep(r)]
    children = _children(client, experiment_id, parent)
    missing = _reused_ids(client, parent, {r.info.run_id for r in children})
    reused = _runs_by_id(client, experiment_id, missing)
    return _one_per_config([_Record.of(r) for r in children + reused])


def _read_artifact(client: MlflowClient, run_id: str, artifact: str, read: Any) -> Any:
    """`read(path)` of a run's artifact, downloaded into a folder removed afterwards; None if
    the run has no such artifact."""
    with _quiet_downloads(), tempfile.TemporaryDirectory() as scratch:
        try:
            path = client.download_artifacts(run_id, artifact, scratch)
        except Exception:  # MLflow raises its own or an OSError, per artifact store
            return None
        return read(Path(path))


def _reused_ids(client: MlflowClient, parent: Run, children: set[str]) -> list[str]:
    """Runs a resumed sweep reused from elsewhere in the experiment instead of running them
    again: listed in the parent's `sweep_runs.json`, not among its children."""
    listed = _read_artifact(
        client, parent.info.run_id, SWEEP_RUNS_ARTIFACT, lambda p: json.loads(p.read_text())
    )
    if not isinstance(listed, dict):  # an older or interrupted sweep: its children are all
        return []
    return sorted(set(listed.get("run_ids", [])) - children)


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No progress bar on stderr for MLflow's artifact downloads."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _one_per_config(runs: list[_Record]) -> list[_Record]:
    """A resumed sweep may hold a FAILED or KILLED attempt beside the FINISHED run of the same
    config: keep one run per config, the latest FINISHED one if there is one."""
    best: dict[str, _Record] = {}
    for run in runs:
        key = run.tags.get(CONFIG_HASH_TAG, run.run_id)
        rank = (run.status == "FINISHED", run.start_time or 0)
        if key not in best or rank > (best[key].status == "FINISHED", best[key].start_time or 0):
            best[key] = run
    return list(best.values())


def _is_sweep(run: Run) -> bool:
    return run.data.tags.get(KIND_TAG) == SWEEP_KIND


# --- reading a sweep from its table -------------------------------------------------------------


@dataclass(frozen=True)
class _SweepTable:
    """A sweep's table (gdexp.table) as downloaded: its rows as `load_runs`'s columns (arrays,
    not yet typed; the final figures already by `_finals`' rule), and the file itself, whose
    history lists are read (and put in long form) only when asked for: reading its scalar
    columns alone takes a tenth of reading it all. Rows with neither a run id nor a config index
    are left out (nothing could name them)."""

    parent_run_id: str
    columns: dict[str, Any]  # RUN_COLUMNS -> an array per column, a row per kept table row
    parquet: bytes  # the table's file
    kept: np.ndarray | None  # which of its rows are kept (None: all)
    has_info: bool  # the rows hold `_INFO_COLUMNS`: no run need be searched

    @cached_property
    def arrow(self) -> pa.Table:
        """The kept rows' run ids, config indices and history lists, as in the table."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        file = pq.ParquetFile(pa.BufferReader(self.parquet))
        wanted = ("run_id", "config_index", *TABLE_HISTORIES)
        table = file.read(columns=[c for c in wanted if c in file.schema_arrow.names])
        return table if self.kept is None else table.filter(pa.array(self.kept))

    @cached_property
    def run_ids(self) -> frozenset[str]:
        return frozenset(r for r in self.columns["run_id"] if r is not None)

    @cached_property
    def histories(self) -> pd.DataFrame:
        """The histories of the rows with a run id, as MLflow holds them (finite points)."""
        return _table_histories(self.arrow)

    def padded(self, key: str) -> np.ndarray:
        """History `key` of every row as a (rows, longest list) float64 array, NaN past the end
        of a shorter list; made once per key."""
        if key not in self.padded_lists:
            self.padded_lists[key] = _padded_lists(self.arrow.column(key))
        return self.padded_lists[key]

    @cached_property
    def padded_lists(self) -> dict[str, np.ndarray]:
        return {}

    @cached_property
    def config_rows(self) -> pd.Series:
        """Config index -> its row of the table, for the rows without a run id (the first, if
        a config index occurred twice)."""
        index = pd.Series(self.columns["config_index"], dtype="Int64")
        rows = np.flatnonzero(pd.isna(self.columns["run_id"]) & index.notna().to_numpy())
        found = pd.Series(rows, index=index.iloc[rows].astype(np.int64).to_numpy())
        return found[~found.index.duplicated()]


# (tracking uri, parent run id) -> the sweep's table as `load_runs` last downloaded it, so that
# `load_histories` on its frame downloads nothing.
_TABLES: dict[tuple[str, str], _SweepTable] = {}


def _fetch_table(uri: str, client: MlflowClient, parent_run_id: str) -> _SweepTable | None:
    """Download a sweep's table (None if it has none) and keep it for `load_histories`. Every
    call downloads: a resumed sweep rewrites its table on the same parent."""
    import pyarrow as pa
    import pyarrow.parquet as pq  # only here: pyarrow costs its import only when a table is read

    parquet = _read_artifact(client, parent_run_id, TABLE_ARTIFACT, lambda p: p.read_bytes())
    if parquet is None:
        _TABLES.pop((uri, parent_run_id), None)
        return None
    file = pq.ParquetFile(pa.BufferReader(parquet))
    names = file.schema_arrow.names
    scalars = file.read(columns=[c for c in names if c not in TABLE_HISTORIES])
    columns = _finals_columns(_arrow_columns(scalars))
    named = pd.notna(columns["run_id"]) | pd.notna(columns["config_index"])
    kept = None
    if not named.all():  # a config in a runs sweep's table whose run is not known yet
        log.warning(
            "Left out %d rows of the table with neither a run id nor a config index",
            int((~named).sum()),
        )
        columns = {column: values[named] for column, values in columns.items()}
        kept = named
    found = _SweepTable(
        parent_run_id,
        columns,
        parquet,
        kept,
        has_info=set(_INFO_COLUMNS) <= set(names),
    )
    _TABLES[(uri, parent_run_id)] = found
    return found


def _arrow_columns(arrow: pa.Table) -> dict[str, np.ndarray]:
    """The table's columns of `RUN_COLUMNS` as numpy arrays, column by column (no Python object
    per value: a string column is its distinct words, indexed): strings as objects with None
    where null, numbers as numbers (NaN where null), booleans as booleans. A column the table
    lacks (written before it existed, e.g. config_index) is null throughout."""
    import pyarrow as pa

    columns: dict[str, np.ndarray] = {}
    for column in RUN_COLUMNS:
        if column not in arrow.column_names:
            columns[column] = np.full(arrow.num_rows, None, dtype=object)
            continue
        values = arrow.column(column).combine_chunks()
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            encoded = values.dictionary_encode()
            words = np.array([*encoded.dictionary.to_pylist(), None], dtype=object)
            columns[column] = words[encoded.indices.fill_null(len(words) - 1).to_numpy()]
        else:
            columns[column] = values.to_numpy(zero_copy_only=False)
    return columns


def _padded_lists(lists: pa.ChunkedArray) -> np.ndarray:
    """A list<float64> column as a (rows, longest list) array, NaN past each list's end (and for
    a null list); a reshape, not a copy per point, when every list has the same length."""
    import pyarrow.compute as pc

    lists = lists.combine_chunks()
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
    lengths = lengths.astype(np.int64)
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.float64)
    width = int(lengths.max()) if len(lengths) else 0
    if len(lengths) and (lengths == width).all():
        return flat.reshape(len(lengths), width)
    out = np.full((len(lengths), width), np.nan)
    out[np.arange(width) < lengths[:, None]] = flat
    return out


def _finals_columns(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`_finals`' rule on whole columns: each final figure as MLflow would hold it (the finite
    ones; NaN for the rest), except an infinite final loss where the run turned non-finite, or
    finished with a finite initial loss but no finite final one."""
    out = dict(columns)
    finite = {}
    for key in FINAL_METRICS:
        values = np.asarray(pd.to_numeric(pd.Series(columns[key]), errors="coerce"), np.float64)
        finite[key] = np.isfinite(values)
        out[key] = np.where(finite[key], values, np.nan)
    diverged = pd.notna(columns["diverged_at_epoch"])
    ended = (columns["status"] == "FINISHED") & finite["initial_loss"]
    out["final_loss"] = np.where(
        finite["final_loss"], out["final_loss"], np.where(diverged | ended, np.inf, np.nan)
    )
    return out


def _table_histories(arrow: pa.Table) -> pd.DataFrame:
    """The table's list columns in long form, stepped as gdexp.record.result_metrics logs them
    to MLflow (`_FIRST_STEP`), without the non-finite points MLflow never got: equal to what
    `get_metric_history` gives for the same runs. Rows without a run id are left out."""
    import pyarrow.compute as pc

    ids = np.asarray(arrow.column("run_id").to_pylist(), dtype=object)
    parts = []
    for key in TABLE_HISTORIES:
        if key not in arrow.column_names:
            continue
        lists = arrow.column(key).combine_chunks()
        lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
        lengths = lengths.astype(np.int64)
        values = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.float64)
        firsts = np.repeat(np.cumsum(lengths) - lengths, lengths)  # each point's list start
        steps = np.arange(len(values), dtype=np.int64) - firsts + _FIRST_STEP[key]
        run_ids = np.repeat(ids, lengths)
        keep = np.isfinite(values) & np.not_equal(run_ids, None)
        parts.append(
            pd.DataFrame(
                {"run_id": run_ids[keep], "key": key, "step": steps[keep], "value": values[keep]}
            )
        )
    return pd.concat(parts, ignore_index=True) if parts else _empty_history()


def _config_histories(
    table: _SweepTable, config_indices: Sequence[int], keys: Sequence[str]
) -> pd.DataFrame:
    """The histories of `keys` (all in the table) of a table sweep's configs, in long form
    (`CONFIG_HISTORY_COLUMNS`): ordered as `config_indices`, then by key (in `keys` order) and
    step, stepped as `_table_histories` steps them, non-finite points left out as there.

    No sort: each key's lists are laid out as a (configs, epochs) array, padded with NaN past a
    shorter list (a config that diverged stopped there); the arrays of the wanted configs,
    interleaved config by config, are the long form, less its non-finite points."""
    wanted = np.asarray(pd.unique(np.asarray(config_indices, dtype=np.int64)), dtype=np.int64)
    known = table.config_rows
    at = known.index.get_indexer(wanted)  # -1: not in the table
    wanted, rows = wanted[at >= 0], known.to_numpy()[at[at >= 0]]
    padded = [table.padded(key)[rows] for key in keys]  # each (configs, its longest list)
    width = max((p.shape[1] for p in padded), default=0)
    values = np.full((len(rows), len(keys), width), np.nan)
    for k, block in enumerate(padded):
        values[:, k, : block.shape[1]] = block
    steps = np.array([np.arange(width) + _FIRST_STEP[key] for key in keys], dtype=np.int64)
    codes = np.repeat(np.arange(len(keys), dtype=np.intp), width)
    keep = np.isfinite(values).reshape(len(rows), -1)
    per_config = keep.sum(axis=1)
    keep_flat = keep.ravel()
    frame = pd.DataFrame({"config_index": np.repeat(wanted, per_config)})
    # Added column by column: a frame built from all four at once would copy them into blocks.
    frame["key"] = pd.Series(
        np.array(keys, dtype=object)[np.broadcast_to(codes, keep.shape)[keep]], dtype=object
    )
    frame["step"] = np.broadcast_to(steps.ravel(), keep.shape)[keep]
    frame["value"] = values.ravel()[keep_flat]
    return frame


def _finals(
    status: str, metrics: Mapping[str, float], diverged_at: int | None
) -> dict[str, float | int | None]:
    """The final figures as `load_runs` gives them, from the finite ones (the only ones MLflow
    holds): a missing figure is unknown (NaN), except that a run that finished with an initial
    loss but without a final one, or that turned non-finite on the way, ended with an infinite
    final loss."""
    finals: dict[str, float | int | None] = {k: metrics.get(k, math.nan) for k in FINAL_METRICS}
    finals["diverged_at_epoch"] = diverged_at
    ended = status == "FINISHED" and "initial_loss" in metrics
    if "final_loss" not in metrics and (diverged_at is not None or ended):
        finals["final_loss"] = math.inf
    return finals


def _runs_of_table(
    client: MlflowClient, experiment_id: str, parent: Run, table: _SweepTable
) -> pd.DataFrame:
    """The table's rows as `load_runs`'s frame, with their runs' names, parents and start times:
    from the table when it holds them (`_INFO_COLUMNS`; a table sweep's configs have no run, and
    their info is the table's: no name, no start time, the sweep as parent), else from MLflow,
    one search for the parent's children and one per 100 runs a resumed sweep reused from
    elsewhere; a row whose run was deleted since is then left out, as reading the runs leaves
    it out."""
    columns = table.columns
    if not table.has_info:
        ids = columns["run_id"]
        runs = {r.info.run_id: r for r in _children(client, experiment_id, parent)}
        reused = [r for r in ids if r is not None and r not in runs]
        runs.update((r.info.run_id, r) for r in _runs_by_id(client, experiment_id, reused))
        present = np.array([r in runs for r in ids], dtype=bool)
        columns = {column: values[present] for column, values in columns.items()}
        infos = [_info(runs[r]) for r in columns["run_id"]]
        for column in _INFO_COLUMNS:
            columns[column] = np.array([info[column] for info in infos], dtype=object)
    return _typed(columns)


def _info(run: Run) -> dict[str, Any]:
    return {
        "run_name": run.info.run_name,
        "parent_run_id": run.data.tags.get(PARENT_TAG),
        "start_time": run.info.start_time,
    }


# --- load_runs ---------------------------------------------------------------------------------


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")


def load_runs(
    experiment: str = "gdexp",
    sweep: str | None = None,
    tracking_uri: str | None = None,
    *,
    source: Source = "auto",
) -> pd.DataFrame:
    """One row per run, or per config of a table sweep (columns and dtypes: `RUN_COLUMNS`),
    sorted by method, step size, seed, start time, run id and config index.

    `sweep` selects the runs of one sweep: its parent's run id, its run name, or "latest" (the
    most recently started sweep); they are the parent's children and the runs a resumed sweep
    reused, one per config. None takes every run of the experiment that is not a sweep parent.
    Raises an `AnalysisError` subclass when the store, experiment or sweep does not exist or
    holds no runs; the message lists what does exist.

    A table sweep (its parent tagged gdexp.record=table) has no runs: each config of its table
    is a row with run_id, run_name and start_time null and its config_index (its place in the
    grid) set; an interrupted one (KILLED) gives the configs its table holds, those that
    finished. A runs sweep's rows have a null config_index (<NA>).

    `source`: "auto" reads a sweep that has ended from its table (gdexp.table) when it has one,
    a table sweep from its table whatever its state, anything else from MLflow's runs; "table"
    insists on the table; "runs" on MLflow's runs, which a table sweep has none of (an
    `AnalysisError` says so). For a runs sweep the two give equal frames.

    `frame.attrs` records where the runs came from: tracking_uri, experiment, experiment_id,
    sweep (None, or a dict with the parent's run_id, run_name, command, sweep_dir, status,
    record: "runs" or "table" (gdexp.names.RECORD_TAG; "runs" for a sweep from before the tag),
    and axes: {swept key: its values in words}, a table sweep's `axis.<key>` params) and source
    ("table" or "runs").
    """
    _check_source(source)
    uri, client = open_store(tracking_uri)
    experiment_id = get_experiment_id(client, experiment)
    parent = None if sweep is None else find_sweep(client, experiment_id, sweep)
    if source == "table" and parent is None:
        raise AnalysisError("Only a sweep has a table: name one (--sweep ID|NAME|latest).")
    table_sweep = parent is not None and _record(parent) == RECORD_TABLE
    if table_sweep and source == "runs":
        raise AnalysisError(
            f"Sweep {parent.info.run_name!r} (id {parent.info.run_id}) is a table sweep "
            f"({RECORD_TAG}={RECORD_TABLE}): its configs have no MLflow runs to read, only its "
            f"{TABLE_ARTIFACT}; read it with source 'auto' or 'table'."
        )
    table = None
    # A runs sweep still running has no table yet, or an earlier attempt's: read its runs.
    if parent is not None and (
        source == "table" or table_sweep or (source == "auto" and _ended(parent))
    ):
        table = _fetch_table(uri, client, parent.info.run_id)
        if table is None and table_sweep:
            raise AnalysisError(
                f"Table sweep {parent.info.run_name!r} (id {parent.info.run_id}, "
                f"{parent.info.status}) has no {TABLE_ARTIFACT} yet: it is written when the "
                "sweep ends or is interrupted."
            )
        if table is None and source == "table":
            raise AnalysisError(
                f"Sweep {parent.info.run_name!r} (id {parent.info.run_id}) has no "
                f"{TABLE_ARTIFACT}: it ran before sweeps kept a table, or has not ended."
            )
    if table is not None:
        frame = _runs_of_table(client, experiment_id, parent, table)
        if frame.empty:
            raise _no_runs(client, experiment_id, parent)
    else:
        found = _select_runs(client, experiment_id, parent)
        if not found:
            if parent is None:
                raise NoRuns(f"Experiment {experiment!r} holds no runs yet.")
            raise _no_runs(client, experiment_id, parent)
        frame = runs_frame(found)
        if frame.empty:
            raise NoRuns(f"None of the {len(found)} runs selected has gdexp's config params.")
    frame.attrs = {
        "tracking_uri": uri,
        "experiment": experiment,
        "experiment_id": experiment_id,
        "sweep": None if parent is None else _sweep_info(parent),
        "source": "runs" if table is None else "table",
    }
    return frame


def _record(parent: Run) -> str:
    """How a sweep recorded its configs: RECORD_RUNS (a child run each) or RECORD_TABLE."""
    return parent.data.tags.get(RECORD_TAG, RECORD_RUNS)


def _ended(parent: Run) -> bool:
    return parent.info.status not in ("RUNNING", "SCHEDULED")


def _no_runs(client: MlflowClient, experiment_id: str, parent: Run) -> NoRuns:
    others = [
        p
        for p in _search_all(client, experiment_id, _sweep_filter())
        if p.info.run_id != parent.info.run_id
    ]
    what = "configs in its table" if _record(parent) == RECORD_TABLE else "runs"
    return NoRuns(
        f"Sweep {parent.info.run_name!r} (id {parent.info.run_id}) has no {what}; "
        f"{_describe_sweeps(others, other=True)}."
    )


def _sweep_info(parent: Run) -> dict[str, Any]:
    tags, params = parent.data.tags, parent.data.params
    return {
        "run_id": parent.info.run_id,
        "run_name": parent.info.run_name,
        "command": tags.get(COMMAND_TAG),
        "sweep_dir": tags.get(SWEEP_DIR_TAG),
        "status": parent.info.status,
        "record": _record(parent),
        "axes": {
            key.removeprefix(AXIS_PARAM_PREFIX): value
            for key, value in sorted(params.items())
            if key.startswith(AXIS_PARAM_PREFIX)
        },
    }


# --- load_histories ----------------------------------------------------------------------------


def _run_ids(runs: pd.DataFrame | Iterable[str]) -> list[str]:
    if isinstance(runs, pd.DataFrame):
        return [str(r) for r in runs["run_id"]]
    return [str(r) for r in runs]


def _tables_for(
    uri: str, client: MlflowClient, runs: pd.DataFrame | Iterable[str], source: str
) -> list[_SweepTable]:
    """The tables `load_histories` reads from: a `load_runs` frame's own sweep table (the one
    `load_runs` downloaded, or downloaded now), or for run ids the tables this process holds of
    the store."""
    if isinstance(runs, pd.DataFrame):
        sweep = runs.attrs.get("sweep")
        if not sweep or (source == "auto" and runs.attrs.get("source") != "table"):
            return []
        cached = _TABLES.get((uri, sweep["run_id"]))
        found = cached or _fetch_table(uri, client, sweep["run_id"])
        return [found] if found is not None else []
    return [table for (at, _), table in _TABLES.items() if at == uri]


def _from_tables(
    tables: Sequence[_SweepTable], run_ids: Sequence[str], keys: Sequence[str]
) -> tuple[pd.DataFrame, set[str]]:
    """The histories of `keys` (all in the table) of the runs these tables hold, and those runs.
    A run in two tables (reused by a resumed sweep) is read from the first."""
    wanted, covered, parts = set(run_ids), set(), []
    for table in tables:
        mine = (table.run_ids & wanted) - covered
        if mine:
            found = table.histories
            parts.append(found[found["run_id"].isin(mine) & found["key"].isin(keys)])
            covered |= mine
    return (pd.concat(parts, ignore_index=True) if parts else _empty_history()), covered


def _threaded_histories(
    client: MlflowClient, pairs: Sequence[tuple[str, str]], max_workers: int
) -> pd.DataFrame:
    """`get_metric_history` per (run, key) on a thread pool: MLflow's public API has no query
    for many runs at once, and each call waits mostly on the store, not on Python."""
    if not pairs:
        return _empty_history(with_time=True)
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        results = list(pool.map(lambda p: client.get_metric_history(*p), pairs))
    rows = [
        (run_id, key, m.step, m.value, m.timestamp)
        for (run_id, key), history in zip(pairs, results, strict=True)
        for m in history
    ]
    if not rows:
        return _empty_history(with_time=True)
    return pd.DataFrame(rows, columns=[*HISTORY_COLUMNS, "timestamp"])


def _empty_history(with_time: bool = False) -> pd.DataFrame:
    columns = [*HISTORY_COLUMNS, "timestamp"] if with_time else list(HISTORY_COLUMNS)
    return pd.DataFrame(
        {
            c: pd.Series(
                dtype="int64"
                if c in ("step", "timestamp")
                else ("float64" if c == "value" else object)
            )
            for c in columns
        }
    )


def load_histories(
    runs: pd.DataFrame | Iterable[str],
    keys: Sequence[str] = ("loss",),
    tracking_uri: str | None = None,
    *,
    source: Source = "auto",
    max_workers: int = 8,
) -> pd.DataFrame:
    """Metric histories in long form: columns run_id, key, step (int64), value (float64).

    `runs` is a `load_runs` frame (its store is taken from `runs.attrs`) or run ids. Rows are
    ordered as the runs, then by key (in `keys` order) and step; a value logged twice at one step
    counts once (the later). Steps are MLflow's: `loss` at step k after k epochs (from 0), `w`
    and `b` from step 1; non-finite values are absent (MLflow never logged them).

    `source`: "auto" reads loss, w and b from the sweep's table when the frame came from it (or,
    for run ids, from a table this process already downloaded), and the rest (other keys such as
    step_loss, other runs) with MLflow's `get_metric_history`, `max_workers` calls at a time;
    "table" insists on a table for loss, w and b; "runs" reads everything from MLflow.

    A table sweep's frame (its rows have no run id) gets its configs' histories from its table,
    keyed by their place in the grid: columns config_index (int64), key, step, value
    (`CONFIG_HISTORY_COLUMNS`), ordered and stepped as above, non-finite points left out as
    above. Its table holds loss, w and b only; another key, or source "runs", is an
    `AnalysisError` (its configs have no runs).
    """
    _check_source(source)
    if isinstance(runs, str):
        raise TypeError("runs must be a load_runs frame or a list of run ids, not one string")
    keys = [keys] if isinstance(keys, str) else list(dict.fromkeys(keys))
    if tracking_uri is None and isinstance(runs, pd.DataFrame):
        tracking_uri = runs.attrs.get("tracking_uri")
    if isinstance(runs, pd.DataFrame) and runs["run_id"].isna().any():
        return _histories_of_configs(runs, keys, tracking_uri, source)
    run_ids = _run_ids(runs)
    uri, client = open_store(tracking_uri)
    if not run_ids or not keys:
        return _empty_history()
    in_table = [key for key in keys if key in TABLE_HISTORIES]
    parts, covered = [], set()
    if source != "runs" and in_table:
        tables = _tables_for(uri, client, runs, source)
        found, covered = _from_tables(tables, run_ids, in_table)
        if source == "table" and len(covered) < len(set(run_ids)):
            raise AnalysisError(
                f"{len(set(run_ids)) - len(covered)} of these runs are in no sweep table this "
                "process has read: load them with load_runs(sweep=...) first."
            )
        parts.append(found.assign(timestamp=0))
    pairs = [
        (run_id, key)
        for key in keys
        for run_id in dict.fromkeys(run_ids)
        if not (key in in_table and run_id in covered)
    ]
    parts.append(_threaded_histories(client, pairs, max_workers))
    found = pd.concat([p for p in parts if len(p)] or parts[-1:], ignore_index=True)
    run_order = {run_id: i for i, run_id in enumerate(dict.fromkeys(run_ids))}
    key_order = {key: i for i, key in enumerate(keys)}
    found = found.assign(
        _run=found["run_id"].map(run_order), _key=found["key"].map(key_order)
    ).sort_values(["_run", "_key", "step", "timestamp"], kind="stable")
    found = found.drop_duplicates(["run_id", "key", "step"], keep="last")
    frame = found[list(HISTORY_COLUMNS)].reset_index(drop=True)
    return frame.astype({"run_id": object, "key": object, "step": "int64", "value": "float64"})


def _histories_of_configs(
    runs: pd.DataFrame, keys: Sequence[str], tracking_uri: str | None, source: str
) -> pd.DataFrame:
    """`load_histories` of a table sweep's frame (see there)."""
    if runs["run_id"].notna().any():
        raise AnalysisError(
            "This frame mixes runs (with a run id) and a table sweep's configs (without one): "
            "load their histories separately."
        )
    if source == "runs":
        raise AnalysisError(
            "These rows are configs of a table sweep: they have no MLflow runs to read "
            "histories from; their loss, w and b come from the sweep's table (source 'auto' or "
            "'table')."
        )
    other = [key for key in keys if key not in TABLE_HISTORIES]
    if other:
        raise AnalysisError(
            f"A table sweep's table holds {', '.join(TABLE_HISTORIES)} per epoch, not "
            f"{', '.join(other)}: its configs have no runs that could have logged it."
        )
    sweep = runs.attrs.get("sweep")
    if not sweep or runs["config_index"].isna().any():
        raise AnalysisError(
            "Rows without a run id are configs of a table sweep, named by the sweep "
            "(frame.attrs['sweep']) and their config_index; this frame lacks them: load it "
            "with load_runs(sweep=...)."
        )
    uri, client = open_store(tracking_uri)
    table = _TABLES.get((uri, sweep["run_id"])) or _fetch_table(uri, client, sweep["run_id"])
    if table is None:
        raise AnalysisError(f"Sweep {sweep['run_name']!r} has no {TABLE_ARTIFACT} any more.")
    return _config_histories(table, runs["config_index"].to_numpy(dtype=np.int64), keys)


def run_config(row: Mapping[str, Any] | pd.Series) -> DictConfig:
    """The run config (gdexp.config.RunConfig) of one `load_runs` row, e.g. for gdexp.theory.

    Built from the schema's dataclasses directly (no merge). The batch size is the effective one,
    so bgd's comes back as n_points rather than null; training and theory treat both alike.
    """
    config = RunConfig(
        method=MethodConfig(
            name=str(row["method"]),
            batch_size=int(row["batch_size"]),
            shuffle=bool(row["shuffle"]),
        ),
        step_size=float(row["step_size"]),
        epochs=int(row["epochs"]),
        seed=int(row["seed"]),
        dtype=str(row["dtype"]),
        convergence_tolerance=float(row["convergence_tolerance"]),
        data=DataConfig(
            n_points=int(row["n_points"]),
            x_start=float(row["x_start"]),
            x_step=float(row["x_step"]),
            slope=float(row["slope"]),
            intercept=float(row["intercept"]),
            noise_std=float(row["noise_std"]),
        ),
        init=InitConfig(w=float(row["init_w"]), b=float(row["init_b"])),
    )
    return OmegaConf.structured(config)
