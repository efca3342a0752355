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
    if uri.startswith("file:") and not uri.startswith("file://"):
        uri = uri.removeprefix("file:")  # file:/abs/x or file:rel/x, a path like any other
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


def _check_sqlite_store(path: Path, damage: bool = True) -> None:
    """Say in one line why a SQLite store cannot be used, before MLflow tries (it retries a
    database it cannot open for about two minutes, and a read-only or damaged file ends in a
    long SQL traceback, or in a bare "database disk image is malformed" seconds later).
    `damage`: whether to look for damage too (see `_database_problem`).

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
        problem = _database_problem(path, damage)
        if problem == NOT_A_DATABASE:
            raise refuse(
                "the file is not an SQLite database (corrupt, or something else)",
                "Move it away, or p" + elsewhere[1:],
            )
        if problem is not None:
            # Its -wal file holds its latest commits: they go together. `.dump` salvages what
            # can still be read (Debian's sqlite3 3.40.1 fails `.recover` even on a sound file).
            raise refuse(
                f"the database is damaged ({problem})",
                "Move it away with its -wal and -shm files (the next run starts a new store), "
                "or salvage what SQLite can still read, in its folder: "
                f"sqlite3 {path.name} .dump | sqlite3 recovered.db",
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


NOT_A_DATABASE = "not a database"
# SQLite's primary result codes (an extended code carries one in its low byte).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
# Stores this process found intact, by path and inode: a single run checks its store three
# times before it logs (the callback, the run, the Tracker), and a sweep's jobs in its process
# check it once a job; SQLite reads the whole file to check it, so it does that once.
_found_intact: set[tuple[str, int]] = set()


def _database_problem(path: Path, damage: bool = True) -> str | None:
    """What SQLite itself finds wrong with an existing store: NOT_A_DATABASE, or damage as
    SQLite words it; None when it finds nothing (busy, locked or unreadable files are for
    MLflow to report).

    Damage is found by `PRAGMA quick_check` (`damage`): it reads every page of the file,
    checking each b-tree page, so a truncated file or a page overwritten anywhere is found
    before a run starts, not by MLflow half-way through (about 55 ms for the 34 MB store of
    the 195-run `+sweeps=step_sizes`, warm cache). It only reads, and reads a WAL-mode store
    through its write-ahead log, as any reader does.

    The connection may write (mode=rw, which never creates a file): a read-only one makes a
    WAL-mode store's -wal and -shm files and leaves them, where the last connection to close
    removes them; a refused command leaves the store's folder as it was."""
    import sqlite3

    try:
        key = (str(path.resolve()), path.stat().st_ino)
    except OSError:
        return None  # gone or unreadable: for MLflow to report
    if key in _found_intact:
        return None
    pragma = "PRAGMA quick_check(1)" if damage else "PRAGMA schema_version"
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=20)
        try:
            rows = connection.execute(pragma).fetchall()
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
        if code == _SQLITE_NOTADB:
            return NOT_A_DATABASE
        if code == _SQLITE_CORRUPT:
            return f"SQLite: {first_line(error)}"
        return None
    if not damage:
        return None
    if rows != [("ok",)]:
        # "*** in database main ***\nPage 3: btreeInitPage() returns error code 11"
        found = [line for row in rows for line in str(row[0]).splitlines()]
        said = [line for line in found if not line.startswith("***")] or found
        return f"SQLite's quick_check: {said[0] if said else 'no answer'}"
    _found_intact.add(key)
    return None


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
    """Say in one line why `folder` cannot be made or written, without making it: a refused
    command leaves the launch folder as it was (no empty outputs/<date>/<time>), and the folder
    is made once every check has passed (by Hydra's run_job, or when the sweep opens).

    Probed for real: a file is created and removed in the nearest folder that exists."""
    folder = folder.absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        probe = existing / f".gdexp-write-check-{os.getpid()}-{os.urandom(4).hex()}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as error:
        where = "" if existing == folder else f" ({existing} {_cannot(error)})"
        raise TrackingUnavailable(
            f"Cannot write {what} {folder}: {error.strerror or first_line(error)}{where}. Launch "
            "from a writable folder, or point Hydra elsewhere (hydra.run.dir=..., "
            "hydra.sweep.dir=...)."
        ) from error


def _cannot(error: OSError) -> str:
    return "is not a folder" if error.errno == errno.ENOTDIR else "cannot take new files"


# A plain path that names one of these is a SQLite file meant, not a folder of MLflow's files.
DATABASE_SUFFIXES = (".db", ".sqlite", ".sqlite3", ".db3")


def _check_plain_path(uri: str) -> None:
    """A plain path (`tracking.uri=/some/dir/runs.db`, `runs.db`, `file:///some/dir/runs.db`)
    is MLflow's file store, a folder of files, which MLflow 3 deprecates in a paragraph and
    would make at that path after seconds of imports: a path that names a database (its
    suffix, or an existing file) is refused at once, with the sqlite:/// address it meant."""
    from urllib.parse import unquote, urlparse

    path = Path(unquote(urlparse(uri).path))
    meant = path.suffix.lower() in DATABASE_SUFFIXES and not path.is_dir()
    if not (meant or path.is_file()):
        return  # a folder: the file store, as asked
    # resolve_tracking_uri took it from the environment only when tracking.uri was not set.
    from_env = os.environ.get(TRACKING_URI_ENV)
    key = "tracking.uri"
    if from_env and resolve_tracking_uri(from_env) == uri:
        key = TRACKING_URI_ENV
    raise TrackingUnavailable(
        f"Cannot use {key}={path}: MLflow takes a plain path for a folder of its file store "
        f"(deprecated), not a SQLite database. For a SQLite store, write {key}=sqlite:///{path}"
    )


def preflight(uri: str, wait_for_server: float = 0.0, damage: bool = True) -> None:
    """Fail in one line if the store at `uri` cannot be used: a server that does not answer, a
    SQLite file or folder that cannot be written, a full folder, a file that is not a database
    or (`damage`) is damaged, or a plain path to a database file."""
    if is_server(uri):
        _check_server(uri, wait_for_server)
    elif uri.startswith("file:"):
        _check_plain_path(uri)
    database = sqlite_path(uri)
    if database is not None:
        _check_sqlite_store(database, damage)


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
        check_damage: bool = True,
    ) -> None:
        """`wait_for_server`: how long to wait for a tracking server that does not answer (jobs
        of a running sweep wait out a restart; a command that is starting fails at once).
        `check_damage`: read the whole SQLite file for damage first (see `preflight`)."""
        self.uri = uri
        self.experiment = experiment
        self._artifact_uris: dict[str, str] = {}
        preflight(uri, wait_for_server, damage=check_damage)
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

    def run_address(self, run_id: str) -> str:
        """A run's page in the MLflow UI."""
        return f"{self.ui_base()}/#/experiments/{self.experiment_id}/runs/{run_id}"

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
    sweep_folder: Path | None = None  # where its runs leave their rows (gdexp.table)


@dataclass(frozen=True)
class SweepManifest:
    """Where the jobs of a sweep log their runs: a file in the sweep's folder, written by the
    process that opened the sweep (gdexp.sweep) and read by every job, on any launcher that
    shares the folder."""

    tracking_uri: str
    experiment: str
    parent_run_id: str | None  # None: top-level runs (tracked, but not a sweep)
    retry_seconds: float
    sweep_folder: str | None = None  # absolute; None: runs leave no rows

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
        # The sweep checked its store for damage before any job started: a job in a worker
        # process or cluster task does not read the whole file again.
        if tracker is None:
            tracker = Tracker(*key, wait_for_server=self.retry_seconds, check_damage=False)
            _job_trackers[key] = tracker
        else:  # the store is opened once a process; that it still answers is checked each job
            preflight(self.tracking_uri, self.retry_seconds, damage=False)
        folder = Path(self.sweep_folder) if self.sweep_folder else None
        return Destination(tracker, self.parent_run_id, folder)


# Jobs that share a process (Hydra's basic launcher, joblib's reused workers) share one client:
# the store is opened and the experiment found once, not once a run.
_job_trackers: dict[tuple[str, str], Tracker] = {}
