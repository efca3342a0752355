"""Runs and metric histories out of MLflow, as typed pandas frames.

`load_runs` gives one row per run with numbers as numbers (MLflow keeps params as strings);
`load_histories` gives per-epoch metrics in long form. Both read the same store gdexp writes to:
by default `gdexp.store.resolve_tracking_uri(None)`, i.e. $MLFLOW_TRACKING_URI or
sqlite:///<cwd>/mlflow.db.

A SQL store (SQLite, PostgreSQL) is read straight from MLflow's tables, a few queries per 500
runs; other stores (REST, file) through MLflow's API, histories run by run on a thread pool. See
benchmarks/load_histories.py and benchmarks/analysis.py for what that buys.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from gdexp.config import DataConfig, InitConfig, MethodConfig, RunConfig
from gdexp.names import (
    COMMAND_TAG,
    CONFIG_HASH_TAG,
    DIVERGED_AT_METRIC,
    FINAL_METRICS,
    KIND_TAG,
    OUTCOME_TAG,
    PARENT_TAG,
    SWEEP_DIR_TAG,
    SWEEP_KIND,
    SWEEP_RUNS_ARTIFACT,
)
from gdexp.store import resolve_tracking_uri

log = logging.getLogger(__name__)

LATEST = "latest"

# Columns of `load_runs`, in order, with their dtypes.
RUN_COLUMNS: dict[str, str] = {
    "run_id": "object",
    "run_name": "object",
    "parent_run_id": "object",
    "status": "object",
    "outcome": "object",  # one of gdexp.outcome.OUTCOMES; None for a run that failed
    "method": "object",
    "step_size": "float64",
    "seed": "int64",
    "epochs": "int64",
    "batch_size": "int64",  # effective: n_points for bgd (batch_size None)
    "shuffle": "bool",
    "dtype": "object",
    "convergence_tolerance": "float64",
    "n_points": "int64",
    "x_start": "float64",
    "x_step": "float64",
    "slope": "float64",
    "intercept": "float64",
    "noise_std": "float64",
    "init_w": "float64",
    "init_b": "float64",
    "initial_loss": "float64",
    "final_loss": "float64",  # +inf for a diverged run whose loss overflowed (not logged)
    "final_w": "float64",
    "final_b": "float64",
    "optimal_loss": "float64",
    "diverged_at_epoch": "Int64",  # nullable: <NA> unless the run turned non-finite
    "start_time": "datetime64[ms, UTC]",
}

# Run column -> MLflow param it comes from (all but batch_size, which needs n_points too).
_PARAM_COLUMNS = {
    "method": "method.name",
    "step_size": "step_size",
    "seed": "seed",
    "epochs": "epochs",
    "shuffle": "method.shuffle",
    "dtype": "dtype",
    "convergence_tolerance": "convergence_tolerance",
    "n_points": "data.n_points",
    "x_start": "data.x_start",
    "x_step": "data.x_step",
    "slope": "data.slope",
    "intercept": "data.intercept",
    "noise_std": "data.noise_std",
    "init_w": "init.w",
    "init_b": "init.b",
}
_REQUIRED_PARAMS = ("method.name", "step_size", "seed", "epochs", "data.n_points")

HISTORY_COLUMNS = ("run_id", "key", "step", "value")
_BULK_CHUNK = 500  # run ids per bulk query: well under SQLite's limit on bound variables


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
    runs: list[Run] = []
    token = None
    while True:
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


def _number(text: str | None, kind: type) -> Any:
    if text is None or text == "None":
        return None
    if kind is bool:
        return text.strip().lower() == "true"
    if kind is int:
        return int(float(text)) if "." in text or "e" in text.lower() else int(text)
    return kind(text)


_KINDS = {"object": str, "float64": float, "int64": int, "bool": bool}


@dataclass(frozen=True)
class _Record:
    """What `load_runs` reads of a run, from MLflow's API or straight from its SQL tables."""

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
    params, metrics, tags = run.params, run.metrics, run.tags
    if any(key not in params for key in _REQUIRED_PARAMS):
        return None
    row: dict[str, Any] = {
        "run_id": run.run_id,
        "run_name": run.run_name,
        "parent_run_id": tags.get(PARENT_TAG),
        "status": run.status,
        "outcome": tags.get(OUTCOME_TAG),
    }
    for column, param in _PARAM_COLUMNS.items():
        row[column] = _number(params.get(param), _KINDS[RUN_COLUMNS[column]])
    n = row["n_points"]
    batch = _number(params.get("method.batch_size"), int)
    row["batch_size"] = min(batch or n, n)
    for key in FINAL_METRICS:
        row[key] = metrics.get(key, math.nan)
    diverged_at = metrics.get(DIVERGED_AT_METRIC)
    row["diverged_at_epoch"] = None if diverged_at is None else int(diverged_at)
    # Non-finite values are never logged: a run that finished with an initial loss but without a
    # final loss (or that turned non-finite on the way) ended with an infinite one.
    ended = run.status == "FINISHED" and "initial_loss" in metrics
    if "final_loss" not in metrics and (diverged_at is not None or ended):
        row["final_loss"] = math.inf
    row["start_time"] = run.start_time
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
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    for column, dtype in RUN_COLUMNS.items():
        if column == "start_time":
            frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True).astype(dtype)
        elif dtype == "object":
            frame[column] = frame[column].astype(object)
        else:
            frame[column] = frame[column].astype(dtype)
    frame = frame.sort_values(["method", "step_size", "seed", "start_time"], kind="stable")
    return frame.reset_index(drop=True)


# --- reading runs -----------------------------------------------------------------------------
# A SQL store (SQLite, PostgreSQL, MySQL) is read straight from MLflow's tables in a few queries
# per 500 runs: its search API builds ORM objects per param, tag and metric, ~1 ms a run. Any
# other store (a server, a file store), or a SQL store whose tables are not as expected, is read
# through MLflow's API.


def _engine(client: MlflowClient) -> Any:
    return getattr(_store(client), "engine", None)


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _BULK_CHUNK):
        yield list(ids[start : start + _BULK_CHUNK])


def _tables() -> dict[str, Any]:
    """MLflow's tables, as far as they are read here (SQLAlchemy Core: quoted per dialect)."""
    from sqlalchemy import column, table

    def columns(*names: str) -> list:
        return [column(name) for name in names]

    return {
        "runs": table(
            "runs",
            *columns("run_uuid", "name", "status", "start_time", "experiment_id"),
            column("lifecycle_stage"),
        ),
        "params": table("params", *columns("run_uuid", "key", "value")),
        "tags": table("tags", *columns("run_uuid", "key", "value")),
        "latest_metrics": table("latest_metrics", *columns("run_uuid", "key", "value", "is_nan")),
        "metrics": table(
            "metrics", *columns("run_uuid", "key", "step", "value", "timestamp", "is_nan")
        ),
    }


def _sql_run_ids(engine: Any, experiment_id: str, parent_id: str | None) -> list[str]:
    """Active runs of the experiment: the children of `parent_id`, or with None every run that
    is not a sweep parent."""
    from sqlalchemy import and_, exists, select

    t = _tables()
    runs, tags = t["runs"], t["tags"]
    active = and_(runs.c.experiment_id == int(experiment_id), runs.c.lifecycle_stage == "active")
    if parent_id is None:
        sweep = exists().where(
            and_(
                tags.c.run_uuid == runs.c.run_uuid,
                tags.c.key == KIND_TAG,
                tags.c.value == SWEEP_KIND,
            )
        )
        query = select(runs.c.run_uuid).where(active, ~sweep)
    else:
        query = (
            select(runs.c.run_uuid)
            .join(tags, tags.c.run_uuid == runs.c.run_uuid)
            .where(active, tags.c.key == PARENT_TAG, tags.c.value == parent_id)
        )
    with engine.connect() as connection:
        return [row[0] for row in connection.execute(query)]


def _sql_records(engine: Any, run_ids: Sequence[str]) -> list[_Record]:
    """The runs `run_ids` that are active, with their params, tags and latest metrics."""
    from sqlalchemy import select

    t = _tables()
    runs = t["runs"]
    records = []
    with engine.connect() as connection:
        for ids in _chunks(run_ids):
            found: dict[str, tuple[dict, dict, dict]] = {}
            rows = connection.execute(
                select(runs.c.run_uuid, runs.c.name, runs.c.status, runs.c.start_time).where(
                    runs.c.run_uuid.in_(ids), runs.c.lifecycle_stage == "active"
                )
            ).all()
            for run_id, *_ in rows:
                found[run_id] = ({}, {}, {})
            for position, name in enumerate(("params", "latest_metrics", "tags")):
                kv = t[name]
                wanted = [kv.c.run_uuid, kv.c.key, kv.c.value]
                if name == "latest_metrics":
                    wanted.append(kv.c.is_nan)
                for run_id, key, value, *nan in connection.execute(
                    select(*wanted).where(kv.c.run_uuid.in_(ids))
                ):
                    if run_id not in found:
                        continue
                    if name == "latest_metrics":
                        value = math.nan if nan[0] else float(value)
                    found[run_id][position][key] = value
            records += [
                _Record(run_id, name, status, start, *found[run_id])
                for run_id, name, status, start in rows
            ]
    return records


def _select_runs(client: MlflowClient, experiment_id: str, parent: Run | None) -> list[_Record]:
    """The runs `load_runs` selects, as records: every non-sweep run, or a sweep's runs (its
    children and the runs it reused, one per config)."""
    engine = _engine(client)
    if engine is not None:
        try:
            return _sql_select(client, engine, experiment_id, parent)
        except Exception as error:  # MLflow's tables are not what we read: use its API
            log.warning("Reading runs through MLflow's API: its tables did not answer (%s)", error)
    if parent is None:
        return [_Record.of(r) for r in _search_all(client, experiment_id) if not _is_sweep(r)]
    children = [
        _Record.of(r)
        for r in _search_all(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    ]
    missing = _reused_ids(client, parent, {r.run_id for r in children})
    reused = []
    for start in range(0, len(missing), 100):
        ids = ", ".join(f"'{run_id}'" for run_id in missing[start : start + 100])
        reused += _search_all(client, experiment_id, f"attributes.run_id IN ({ids})")
    return _one_per_config(children + [_Record.of(r) for r in reused])


def _sql_select(
    client: MlflowClient, engine: Any, experiment_id: str, parent: Run | None
) -> list[_Record]:
    if parent is None:
        return _sql_records(engine, _sql_run_ids(engine, experiment_id, None))
    children = _sql_run_ids(engine, experiment_id, parent.info.run_id)
    missing = _reused_ids(client, parent, set(children))
    return _one_per_config(_sql_records(engine, children + missing))


def _reused_ids(client: MlflowClient, parent: Run, children: set[str]) -> list[str]:
    """Runs a resumed sweep reused from elsewhere in the experiment instead of running them
    again: listed in the parent's `sweep_runs.json`, not among its children."""
    try:
        with _quiet_downloads():
            path = client.download_artifacts(parent.info.run_id, SWEEP_RUNS_ARTIFACT)
        listed = json.loads(Path(path).read_text())
    except Exception:  # an older or interrupted sweep has no list: its children are all it has
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


def load_runs(
    experiment: str = "gdexp", sweep: str | None = None, tracking_uri: str | None = None
) -> pd.DataFrame:
    """One row per run (columns and dtypes: `RUN_COLUMNS`).

    `sweep` selects the runs of one sweep: its parent's run id, its run name, or "latest" (the
    most recently started sweep); they are the parent's children and the runs a resumed sweep
    reused, one per config. None takes every run of the experiment that is not a sweep parent.
    Raises an `AnalysisError` subclass when the store, experiment or sweep does not exist or
    holds no runs; the message lists what does exist.

    `frame.attrs` records where the runs came from: tracking_uri, experiment, experiment_id and
    sweep (None, or a dict with the parent's run_id, run_name, command and sweep_dir).
    """
    uri, client = open_store(tracking_uri)
    experiment_id = get_experiment_id(client, experiment)
    parent = None if sweep is None else find_sweep(client, experiment_id, sweep)
    found = _select_runs(client, experiment_id, parent)
    if not found and parent is None:
        raise NoRuns(f"Experiment {experiment!r} holds no runs yet.")
    if not found:
        others = [
            p
            for p in _search_all(client, experiment_id, _sweep_filter())
            if p.info.run_id != parent.info.run_id
        ]
        raise NoRuns(
            f"Sweep {parent.info.run_name!r} (id {parent.info.run_id}) has no runs; "
            f"{_describe_sweeps(others, other=True)}."
        )
    frame = runs_frame(found)
    if frame.empty:
        raise NoRuns(f"None of the {len(found)} runs selected has gdexp's config params.")
    frame.attrs = {
        "tracking_uri": uri,
        "experiment": experiment,
        "experiment_id": experiment_id,
        "sweep": None if parent is None else _sweep_info(parent),
    }
    return frame


def _sweep_info(parent: Run) -> dict[str, Any]:
    tags = parent.data.tags
    return {
        "run_id": parent.info.run_id,
        "run_name": parent.info.run_name,
        "command": tags.get(COMMAND_TAG),
        "sweep_dir": tags.get(SWEEP_DIR_TAG),
        "status": parent.info.status,
    }


def _run_ids(runs: pd.DataFrame | Iterable[str]) -> list[str]:
    if isinstance(runs, pd.DataFrame):
        return [str(r) for r in runs["run_id"]]
    return [str(r) for r in runs]


def _store(client: MlflowClient) -> Any:
    # MlflowClient does not expose its store; the MLflow server reaches the same object to answer
    # its own bulk history endpoint (mlflow.server.handlers.get_metric_history_bulk_handler).
    return getattr(getattr(client, "_tracking_client", None), "store", None)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No garbage collection while the ORM builds thousands of row objects, none of them
    garbage: the collector's passes over them cost more than the query itself (2-3x)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _bulk_histories(store: Any, run_ids: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
    parts = []
    for key in keys:
        for start in range(0, len(run_ids), _BULK_CHUNK):
            chunk = list(run_ids[start : start + _BULK_CHUNK])
            with _gc_paused():
                found = store.get_metric_history_bulk(chunk, key, max_results=2**62)
            parts.append(
                pd.DataFrame(
                    {
                        "run_id": [m.run_id for m in found],
                        "key": key,
                        "step": np.fromiter((m.step for m in found), np.int64, len(found)),
                        "value": np.fromiter((m.value for m in found), np.float64, len(found)),
                        "timestamp": np.fromiter((m.timestamp for m in found), np.int64),
                    }
                )
            )
    return pd.concat(parts, ignore_index=True) if parts else _empty_history(with_time=True)


def _sql_histories(engine: Any, run_ids: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
    from sqlalchemy import select

    metrics = _tables()["metrics"]
    c = metrics.c
    rows = []
    with engine.connect() as connection:
        for ids in _chunks(run_ids):
            query = select(c.run_uuid, c.key, c.step, c.value, c.timestamp, c.is_nan).where(
                c.key.in_(list(keys)), c.run_uuid.in_(ids)
            )
            rows += connection.execute(query).all()
    if not rows:
        return _empty_history(with_time=True)
    frame = pd.DataFrame.from_records(
        rows, columns=["run_id", "key", "step", "value", "timestamp", "is_nan"]
    )
    frame["value"] = frame["value"].astype("float64").mask(frame["is_nan"].astype(bool))
    return frame.drop(columns="is_nan").astype({"step": "int64", "timestamp": "int64"})


def _threaded_histories(
    client: MlflowClient, run_ids: Sequence[str], keys: Sequence[str], max_workers: int
) -> pd.DataFrame:
    pairs = [(run_id, key) for key in keys for run_id in run_ids]
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
    bulk: bool | None = None,
    max_workers: int = 8,
) -> pd.DataFrame:
    """Metric histories in long form: columns run_id, key, step (int64), value (float64).

    `runs` is a `load_runs` frame (its store is taken from `runs.attrs`) or run ids. Rows are
    ordered as the runs, then by key (in `keys` order) and step; a value logged twice at one step
    counts once (the later). `bulk`: None reads a SQL store's metrics table directly (one query
    per 500 runs), and any other store with a thread pool of per-run queries; True uses the SQL
    store's own bulk query (MLflow's `get_metric_history_bulk`), False the thread pool.
    """
    if isinstance(runs, str):
        raise TypeError("runs must be a load_runs frame or a list of run ids, not one string")
    keys = [keys] if isinstance(keys, str) else list(keys)
    if tracking_uri is None and isinstance(runs, pd.DataFrame):
        tracking_uri = runs.attrs.get("tracking_uri")
    run_ids = _run_ids(runs)
    _, client = open_store(tracking_uri)
    if not run_ids or not keys:
        return _empty_history()
    store = _store(client)
    has_bulk = hasattr(store, "get_metric_history_bulk")
    if bulk and not has_bulk:
        raise AnalysisError(f"The store {type(store).__name__} has no bulk history query.")
    found = None
    if bulk is None and _engine(client) is not None:
        try:
            found = _sql_histories(_engine(client), run_ids, keys)
        except Exception as error:  # MLflow's tables are not what we read: use its API
            log.warning("Reading histories through MLflow's API (%s)", error)
    if found is None and (bulk or (bulk is None and has_bulk)):
        found = _bulk_histories(store, run_ids, keys)
    elif found is None:
        found = _threaded_histories(client, run_ids, keys, max_workers)
    run_order = {run_id: i for i, run_id in enumerate(dict.fromkeys(run_ids))}
    key_order = {key: i for i, key in enumerate(keys)}
    found = found.assign(
        _run=found["run_id"].map(run_order), _key=found["key"].map(key_order)
    ).sort_values(["_run", "_key", "step", "timestamp"], kind="stable")
    found = found.drop_duplicates(["run_id", "key", "step"], keep="last")
    frame = found[list(HISTORY_COLUMNS)].reset_index(drop=True)
    return frame.astype({"run_id": object, "key": object, "step": "int64", "value": "float64"})


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
