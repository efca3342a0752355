"""Where runs are stored: the MLflow store's address, opening it (with one-line errors), and the
Tracker that creates, logs to, searches and closes runs.

MLflow is imported when a Tracker is made, not with this module: `preflight` checks a store
(a server that answers, a SQLite file that can be written) before anything heavy is loaded, so
a refusal comes at once.

Everything is logged through `MlflowClient.log_batch` in chunks MLflow accepts (1,000 metrics,
100 params, 100 tags a call), so a run costs a handful of calls however long its history is.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.errors import CompactHydraException

from gdexp.names import ERROR_TAG, PARENT_TAG, SWEEP_MANIFEST, TRACKING_URI_ENV

if TYPE_CHECKING:
    from mlflow.entities import Metric, Run
    from mlflow.tracking import MlflowClient

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
DEFAULT_STORE = "mlflow.db"  # in the launch folder

log = logging.getLogger(__name__)


class TrackingUnavailable(CompactHydraException):
    """The MLflow store cannot be reached or written; said in one line, before any training."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, or None for any other store (or :memory:)."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def resolve_tracking_uri(
    configured: str | None = None, launch_dir: str | Path | None = None
) -> str:
    """`configured`, else $MLFLOW_TRACKING_URI, else sqlite:///<launch folder>/mlflow.db; local
    paths are made absolute against the launch folder (default: the working directory), so every
    job of a sweep writes to the same store wherever it runs (hydra.job.chdir included)."""
    base = Path(launch_dir) if launch_dir is not None else Path.cwd()
    uri = configured or os.environ.get(TRACKING_URI_ENV) or f"sqlite:///{DEFAULT_STORE}"
    path = sqlite_path(uri)
    if path is not None:
        return f"sqlite:///{(base / path).resolve()}"
    if "://" not in uri:  # a bare folder: MLflow's file store
        return (base / uri).resolve().as_uri()
    return uri


def configure_retries(retry_seconds: float) -> None:
    """Bound how long MLflow's HTTP client retries a server that does not answer: exponential
    backoff 1, 2, 4, ... s, as many retries as fit in `retry_seconds`."""
    retries = 0
    while 2 ** (retries + 1) - 1 <= retry_seconds:
        retries += 1
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(min(max(retry_seconds, 5), 30)))


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store live beside it, in mlruns/<experiment>/ (MLflow's default
    is ./mlruns of whatever folder the experiment happened to be created from)."""
    path = sqlite_path(uri)
    if path is None:
        return None  # a server or database decides for itself
    folder = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return (path.parent / "mlruns" / folder).as_uri()


# pg_advisory_lock key of gdexp's store set-up (any fixed 64-bit number, the same everywhere).
POSTGRES_SETUP_LOCK = 0x6764_6578_7001


@contextlib.contextmanager
def setup_lock(uri: str) -> Iterator[None]:
    """Holds a lock that every gdexp process takes while it opens the store: MLflow creates and
    migrates a new database on first use, and two processes doing that at once (two sweeps
    started together, or a sweep and a reader polling its store) corrupt its schema or fail on
    a half-made table. A SQLite store's folder is locked with flock; a PostgreSQL database with
    an advisory lock of its own."""
    path = sqlite_path(uri)
    if path is not None:
        with _folder_lock(path.parent):
            yield
    elif uri.startswith(("postgresql", "postgres:")):
        with _postgres_lock(uri):
            yield
    else:
        yield


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    import fcntl

    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # no such folder: opening the store will say so
        yield
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


@contextlib.contextmanager
def _postgres_lock(uri: str) -> Iterator[None]:
    import psycopg2

    # SQLAlchemy's postgresql+psycopg2://... is libpq's postgresql://...
    dsn = "postgresql://" + uri.split("://", 1)[1]
    try:
        connection = psycopg2.connect(dsn, connect_timeout=10)
    except psycopg2.Error:  # opening the store will say why
        yield
        return
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", (POSTGRES_SETUP_LOCK,))
        yield
    finally:
        connection.close()  # the session ends, and its advisory lock with it


def use_write_ahead_log(path: Path) -> None:
    """Put a SQLite store in WAL journal mode (persistent, in the file): each of MLflow's commits
    costs about a third less, and readers (the MLflow UI, analysis) no longer block a sweep's
    writes. Like any SQLite file, the store must then live on a local disk."""
    import sqlite3

    with contextlib.suppress(sqlite3.Error):  # busy or unusable: MLflow's default mode stays
        connection = sqlite3.connect(path, timeout=20)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()


# A new store's schema takes about 1 MB: a folder that cannot take that much fails here, in one
# line, instead of half-way through MLflow's migration.
NEW_STORE_BYTES = 2**20


def _check_sqlite_store(path: Path) -> None:
    """Say in one line why a SQLite store cannot be used, before MLflow tries (it retries a
    database it cannot open for about two minutes, and a read-only or corrupt file ends in a
    long SQL traceback).

    The database file itself is never opened but through SQLite: closing any other descriptor
    of it drops every POSIX lock this process's SQLite connections hold on it, and another
    process may then checkpoint and delete the write-ahead log under them (a corrupt store;
    sqlite.org/howtocorrupt.html, 2.2). Jobs run in the sweep's process check the store again
    while the sweep's connections are open."""

    def refuse(problem: str, advice: str) -> TrackingUnavailable:
        return TrackingUnavailable(f"Cannot use the MLflow store {path}: {problem}. {advice}")

    elsewhere = "Point tracking.uri (or MLFLOW_TRACKING_URI) at a writable place."
    if not path.parent.is_dir():
        problem = "is not a folder" if path.parent.exists() else "does not exist"
        raise refuse(f"its folder {path.parent} {problem}", "Create it, or p" + elsewhere[1:])
    if path.exists():
        if not os.access(path, os.W_OK):
            read_only = os.statvfs(path).f_flag & os.ST_RDONLY
            why = "Read-only file system" if read_only else "Permission denied"
            raise refuse(f"the file cannot be written ({why})", elsewhere)
        if not _is_sqlite_database(path):
            raise refuse(
                "the file is not an SQLite database (corrupt, or something else)",
                "Move it away, or p" + elsewhere[1:],
            )
    # SQLite writes a journal beside the database, so the folder must take new files too.
    probe = path.parent / f".{path.name}.gdexp-probe"
    size = 0 if path.exists() else NEW_STORE_BYTES
    try:
        with probe.open("wb") as handle:
            handle.write(b"\0" * size)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        what = "full" if error.errno == errno.ENOSPC else f"not writable ({error.strerror})"
        raise refuse(f"its folder {path.parent} is {what}", elsewhere) from error
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def _is_sqlite_database(path: Path) -> bool:
    """False only when SQLite itself says the file is not a database (busy, locked or
    unreadable files are for MLflow to report)."""
    import sqlite3

    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=20)
        try:
            connection.execute("PRAGMA schema_version").fetchone()
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        return "not a database" not in str(error)
    return True


def _check_server(uri: str, wait_seconds: float = 0.0) -> None:
    """Fail in one line when nothing answers at a server address, at once or after waiting up to
    `wait_seconds` for it to come back (MLflow's own client would retry for minutes first)."""
    import requests

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=10)
            return
        except requests.RequestException as error:
            if time.monotonic() >= deadline:
                raise TrackingUnavailable(
                    f"Cannot reach the MLflow tracking server at {uri}: {type(error).__name__}. "
                    "Is it running? (`mlflow server --host ... --port ...`)"
                ) from error
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0)))


def writable_folder(folder: Path, what: str) -> None:
    """Create `folder` if need be, or say in one line why it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".gdexp-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise TrackingUnavailable(
            f"Cannot write {what} {folder}: {error.strerror or first_line(error)}. Launch from a "
            "writable folder, or point Hydra elsewhere (hydra.run.dir=..., hydra.sweep.dir=...)."
        ) from error


def preflight(uri: str, wait_for_server: float = 0.0) -> None:
    """Fail in one line if the store at `uri` cannot be used: a server that does not answer, a
    SQLite file or folder that cannot be written, or is full or corrupt."""
    if is_server(uri):
        _check_server(uri, wait_for_server)
    database = sqlite_path(uri)
    if database is not None:
        _check_sqlite_store(database)


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def search_all(
    client: MlflowClient, experiment_ids: Sequence[str], filter_string: str = "", **kwargs: Any
) -> list[Run]:
    """Every run that matches, all pages."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            list(experiment_ids), filter_string, max_results=10_000, page_token=token, **kwargs
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


class Tracker:
    """An MLflow store and experiment that runs are logged to."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        client: MlflowClient | None = None,
        wait_for_server: float = 0.0,
    ) -> None:
        """`wait_for_server`: how long to wait for a tracking server that does not answer (jobs
        of a running sweep wait out a restart; a command that is starting fails at once)."""
        self.uri = uri
        self.experiment = experiment
        self._artifact_uris: dict[str, str] = {}
        preflight(uri, wait_for_server)
        from mlflow.tracking import MlflowClient

        try:
            with setup_lock(uri):
                database = sqlite_path(uri)
                if database is not None:
                    use_write_ahead_log(database)
                self.client = client or MlflowClient(tracking_uri=uri)
                self.experiment_id = self._ensure_experiment(experiment)
        except Exception as error:
            raise TrackingUnavailable(
                f"Cannot use the MLflow store {uri}: {first_line(error)}"
            ) from error

    def _ensure_experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            experiment_id = self.client.create_experiment(
                name, artifact_location=_artifact_location(self.uri, name)
            )
        except Exception:  # another process created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id
        # Model-training work, not GenAI: the MLflow UI then offers the runs table first.
        self.client.set_experiment_tag(
            experiment_id, "mlflow.experimentKind", "custom_model_development"
        )
        return experiment_id

    def start_run(
        self, name: str, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str:
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        self._artifact_uris[run.info.run_id] = run.info.artifact_uri
        return run.info.run_id

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """`MlflowClient.log_text`, minus its lookup of the run: for a run this tracker created
        in a local artifact store the file is written straight to the run's artifact folder."""
        uri = self._artifact_uris.get(run_id, "")
        local = uri.startswith("file://") or (uri.startswith("/") and "://" not in uri)
        if not local:
            self.client.log_text(run_id, text, artifact_file)
            return
        target = Path(uri.removeprefix("file://")) / artifact_file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    def log(
        self,
        run_id: str,
        params: Mapping[str, Any] | None = None,
        metrics: list[Metric] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Params, metrics and tags in as few `log_batch` calls as MLflow's limits allow."""
        from mlflow.entities import Param, RunTag

        metrics = metrics or []
        param_list = [Param(k, str(v)) for k, v in (params or {}).items()]
        tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        calls = max(
            math.ceil(len(metrics) / MAX_METRICS_PER_BATCH),
            math.ceil(len(param_list) / MAX_PARAMS_PER_BATCH),
            math.ceil(len(tag_list) / MAX_TAGS_PER_BATCH),
        )
        for i in range(calls):
            self.client.log_batch(
                run_id,
                metrics=metrics[i * MAX_METRICS_PER_BATCH : (i + 1) * MAX_METRICS_PER_BATCH],
                params=param_list[i * MAX_PARAMS_PER_BATCH : (i + 1) * MAX_PARAMS_PER_BATCH],
                tags=tag_list[i * MAX_TAGS_PER_BATCH : (i + 1) * MAX_TAGS_PER_BATCH],
                synchronous=True,
            )

    def end_run(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)
        self._artifact_uris.pop(run_id, None)

    def search(self, filter_string: str) -> list[Run]:
        """Every run of the experiment that matches, all pages."""
        return search_all(self.client, [self.experiment_id], filter_string)

    def children(self, parent_run_id: str, status: str | None = None) -> list[Run]:
        where = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
        if status:
            where += f" and attributes.status = '{status}'"
        return self.search(where)

    @contextlib.contextmanager
    def run(
        self, name: str, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> Iterator[str]:
        """A new run that is always closed: see `closing`."""
        run_id = self.start_run(name, parent_run_id, tags)
        with self.closing(run_id):
            yield run_id

    @contextlib.contextmanager
    def closing(self, run_id: str) -> Iterator[None]:
        """Closes a run however the block ends: FINISHED, FAILED (with the error as a tag) or
        KILLED (interrupted)."""
        status = "FAILED"
        try:
            yield
            status = "FINISHED"
        except (KeyboardInterrupt, SystemExit):
            status = "KILLED"
            raise
        except Exception as error:
            with contextlib.suppress(Exception):  # the store itself may be what failed
                self.client.set_tag(run_id, ERROR_TAG, f"{type(error).__name__}: {error}"[:5000])
            raise
        finally:
            try:
                self.end_run(run_id, status)
            except Exception as error:
                if status == "FINISHED":
                    raise
                # Do not hide why the run stopped behind why it could not be closed; a run left
                # RUNNING is marked KILLED when its sweep closes, and run again on resume.
                log.error("Could not mark run %s %s: %s", run_id, status, first_line(error))

    def ui_hint(self) -> str:
        """Where to look: the address, and for a local store the command that serves it."""
        if is_server(self.uri):
            return f"MLflow UI: {self.ui_address()}"
        if self.uri == resolve_tracking_uri(f"sqlite:///{DEFAULT_STORE}"):
            server = "`mlflow ui` here"
        else:
            server = f"`mlflow ui --backend-store-uri {self.uri}`"
        return f"MLflow UI (run {server}): {self.ui_address()}"

    def ui_base(self) -> str:
        """The UI's address: the server's, or where `mlflow ui` serves a local store."""
        return self.uri.rstrip("/") if is_server(self.uri) else "http://127.0.0.1:5000"

    def ui_address(self) -> str:
        """The runs table of this experiment in the MLflow UI's model-training view."""
        return (
            f"{self.ui_base()}/#/experiments/{self.experiment_id}/runs"
            "?workflowType=machine_learning"
        )

    def compare_address(self, run_ids: Sequence[str], metric: str = "loss") -> str:
        """MLflow's metric page for these runs: `metric` against the step (epochs), log y.

        MLflow 3.x's page reads `runs` only as the first parameter and shows "invalid URL"
        without `metric` (a JSON string); `plot_layout` sets its log-scale switch to match."""
        from urllib.parse import quote

        def compact(value: object) -> str:
            return json.dumps(value, separators=(",", ":"))

        query = {
            "runs": compact(list(run_ids)),
            "metric": compact(metric),
            "experiments": compact([self.experiment_id]),
            "plot_metric_keys": compact([metric]),
            "plot_layout": compact({"yaxis": {"type": "log"}}),
            "x_axis": "step",
            "y_axis_scale": "log",
        }
        encoded = "&".join(f"{key}={quote(value, safe='')}" for key, value in query.items())
        return f"{self.ui_base()}/#/metric/{quote(metric, safe='')}?{encoded}"


def open_tracker(
    configured_uri: str | None,
    experiment: str,
    retry_seconds: float,
    launch_dir: str | Path | None = None,
    wait_for_server: float = 0.0,
) -> Tracker:
    """The store a run or sweep logs to, with MLflow's HTTP retries bounded first."""
    configure_retries(retry_seconds)
    return Tracker(
        resolve_tracking_uri(configured_uri, launch_dir),
        experiment,
        wait_for_server=wait_for_server,
    )


@dataclass(frozen=True)
class Destination:
    """Where a run is logged: a store and experiment, and the sweep's parent run if any."""

    tracker: Tracker
    parent_run_id: str | None = None


@dataclass(frozen=True)
class SweepManifest:
    """Where the jobs of a sweep log their runs: a file in the sweep's folder, written by the
    process that opened the sweep (gdexp.sweep) and read by every job, on any launcher that
    shares the folder."""

    tracking_uri: str
    experiment: str
    parent_run_id: str | None  # None: top-level runs (tracked, but not a sweep)
    retry_seconds: float

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SWEEP_MANIFEST).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, folder: Path) -> SweepManifest | None:
        path = folder / SWEEP_MANIFEST
        return cls(**json.loads(path.read_text())) if path.is_file() else None

    def destination(self) -> Destination:
        """The job's store and parent run. A job of a running sweep waits out a restart of
        the tracking server, up to the sweep's retry budget."""
        configure_retries(self.retry_seconds)
        key = (self.tracking_uri, self.experiment)
        tracker = _job_trackers.get(key)
        if tracker is None:
            tracker = Tracker(*key, wait_for_server=self.retry_seconds)
            _job_trackers[key] = tracker
        else:  # the store is opened once a process; that it still answers is checked each job
            preflight(self.tracking_uri, self.retry_seconds)
        return Destination(tracker, self.parent_run_id)


# Jobs that share a process (Hydra's basic launcher, joblib's reused workers) share one client:
# the store is opened and the experiment found once, not once a run.
_job_trackers: dict[tuple[str, str], Tracker] = {}
