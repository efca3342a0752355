"""Throw-away servers for tests: a PostgreSQL cluster and an `mlflow server`, for reuse.

Each starts in its own temp folder, listens on a free port of 127.0.0.1 only, is waited for with
a bounded wait (failing with its log) and is stopped by the fixture that started it, however the
test ends. Use the fixtures (import them into a test module) or the context managers:

    from servers import mlflow_server, postgres  # noqa: F401   (pytest fixtures, session scope)

    with running_postgres() as pg, running_mlflow_server(pg.create_database("mlflow"), folder) as s:
        ...  # s.url is the tracking URI: http://127.0.0.1:<port>

PostgreSQL: the binaries of Debian's `postgresql` package (on PATH, else the newest
/usr/lib/postgresql/*/bin); initdb refuses to run as root, so as root the cluster runs as the
`postgres` user, in a folder it owns. Trust authentication on 127.0.0.1 and a unix socket in the
cluster's own folder: nothing else on the machine can reach it. `fsync=off`: a test cluster need
not survive a crash. The MLflow backend URI uses psycopg2 (`pip install psycopg2-binary`).

`mlflow server`: `--workers 2`, MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false (no background job
runner; about 0.5-0.8 GB in all), artifacts served by the server from `--artifacts-destination`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HOST = "127.0.0.1"
POSTGRES_START_TIMEOUT = 60  # seconds; a fresh cluster starts in well under one
MLFLOW_START_TIMEOUT = 90  # seconds; seen ready in 6-15 s on 2 cores
STOP_TIMEOUT = 20


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_until(ready: Callable[[], bool], timeout: float, failed: Callable[[], str | None]) -> None:
    """Polls `ready` until it holds; raises with `failed()`'s text if that says the start failed
    (e.g. the process died), or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        problem = failed()
        if problem is not None:
            raise RuntimeError(problem)
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout} s")
        time.sleep(0.25)


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group `process` leads (start_new_session=True), SIGKILL if it is
    still there after STOP_TIMEOUT seconds."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


# --- PostgreSQL ---------------------------------------------------------------------------------


def postgres_binary(name: str) -> str | None:
    """`initdb`, `pg_ctl`...: on PATH, else from the newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    candidates.sort(key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


@dataclass
class Postgres:
    folder: Path  # data/, the log and the unix socket
    port: int
    run_as: list[str]  # the command prefix that runs a program as the cluster's owner
    pg_ctl: str
    user: str = "postgres"
    databases: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def uri(self, database: str = "postgres", driver: str = "psycopg2") -> str:
        """A SQLAlchemy URI, e.g. postgresql+psycopg2://postgres@127.0.0.1:PORT/mlflow."""
        return f"postgresql+{driver}://{self.user}@{HOST}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host=HOST, port=self.port, user=self.user, dbname=database)

    def create_database(self, name: str) -> str:
        """Creates an empty database `name` and returns its SQLAlchemy URI."""
        connection = self.connect()
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        self.databases.append(name)
        return self.uri(name)

    def query(self, database: str, sql: str, *args) -> list[tuple]:
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, args)
                return cursor.fetchall()
        finally:
            connection.close()

    def accepts_connections(self) -> bool:
        try:
            self.connect().close()
            return True
        except Exception:
            return False

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [
                    *(*self.run_as, self.pg_ctl, "-D", str(self.data)),
                    *("-m", "immediate", "-w", "-t", str(STOP_TIMEOUT), "stop"),
                ],
                cwd=self.folder,
                capture_output=True,
                timeout=STOP_TIMEOUT + 10,
                check=False,
            )
        _kill_postmaster(self.data)


def _kill_postmaster(data: Path) -> None:
    """If pg_ctl could not stop it, the postmaster (and with it its backends) by its pid file."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _postgres_owner() -> tuple[list[str], int | None, int | None]:
    """(command prefix, uid, gid) to run the cluster as: ourselves, or `postgres` when root."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError as error:
        raise RuntimeError(
            "running as root and there is no `postgres` user to run initdb"
        ) from error
    runuser = shutil.which("runuser")  # util-linux
    if runuser is None:
        raise RuntimeError("running as root and there is no `runuser` to run initdb as postgres")
    return [runuser, "-u", "postgres", "--"], owner.pw_uid, owner.pw_gid


@contextlib.contextmanager
def running_postgres(attempts: int = 3) -> Iterator[Postgres]:
    """A new PostgreSQL cluster in a temp folder, on a free port of 127.0.0.1; stopped and
    deleted on exit."""
    initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
    if not (initdb and pg_ctl):
        raise RuntimeError("PostgreSQL binaries missing: apt-get install postgresql")
    run_as, uid, gid = _postgres_owner()
    # Not under pytest's tmp_path: its root folder is private to us, and `postgres` must get in.
    folder = Path(tempfile.mkdtemp(prefix="gdexp-pg-"))
    if uid is not None:
        os.chown(folder, uid, gid)
    cluster = None
    try:
        data = folder / "data"
        made = subprocess.run(
            [
                *(*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"),
                *("-E", "UTF8", "--no-instructions", "--no-sync"),
            ],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{made.stdout}\n{made.stderr}")
        for attempt in range(attempts):  # the free port may be taken before we bind it
            cluster = Postgres(folder, free_port(), run_as, pg_ctl)
            options = (
                f"-c listen_addresses={HOST} -p {cluster.port} -k {folder} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            started = subprocess.run(
                [
                    *(*run_as, pg_ctl, "-D", str(data), "-l", str(cluster.log), "-o", options),
                    *("-w", "-t", str(POSTGRES_START_TIMEOUT), "start"),
                ],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=POSTGRES_START_TIMEOUT + 30,
                check=False,
            )
            if started.returncode == 0:
                wait_until(cluster.accepts_connections, POSTGRES_START_TIMEOUT, lambda: None)
                break
            cluster.stop()
            if attempt == attempts - 1:
                raise RuntimeError(
                    f"PostgreSQL did not start:\n{started.stderr}\n{tail(cluster.log)}"
                )
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        _kill_postmaster(folder / "data")
        shutil.rmtree(folder, ignore_errors=True)


# --- mlflow server ------------------------------------------------------------------------------


def server_env(**extra: str) -> dict[str, str]:
    """This environment without a developer's tracking settings and with no background jobs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GDEXP_"))}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env.update(extra)
    return env


@dataclass
class MlflowServer:
    url: str  # http://127.0.0.1:<port>, the tracking URI
    port: int
    backend_store_uri: str
    artifacts: Path  # --artifacts-destination: where the server keeps the artifacts it is sent
    log: Path
    process: subprocess.Popen

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self) -> None:
        stop_process_group(self.process)


@contextlib.contextmanager
def running_mlflow_server(
    backend_store_uri: str,
    folder: Path,
    workers: int = 2,
    extra_args: Sequence[str] = (),
    attempts: int = 3,
    port: int | None = None,
) -> Iterator[MlflowServer]:
    """`mlflow server` on `backend_store_uri` (SQLite, PostgreSQL...), serving artifacts from
    folder/artifacts, on `port` (default: a free one) of 127.0.0.1; stopped with its workers on
    exit. `extra_args` go to `mlflow server` as they are (e.g. ["--allowed-hosts", "..."])."""
    folder.mkdir(parents=True, exist_ok=True)
    artifacts = folder / "artifacts"
    artifacts.mkdir(exist_ok=True)
    server = None
    try:
        fixed_port = port
        for attempt in range(attempts):  # a port taken between free_port() and the bind
            port = fixed_port or free_port()
            log = folder / f"mlflow-server-{port}.log"
            with log.open("w") as log_file:
                process = subprocess.Popen(
                    [
                        *(sys.executable, "-m", "mlflow", "server"),
                        *("--backend-store-uri", backend_store_uri),
                        *("--artifacts-destination", str(artifacts)),
                        *("--host", HOST, "--port", str(port), "--workers", str(workers)),
                        *extra_args,
                    ],
                    cwd=folder,
                    env=server_env(),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own process group: the workers go with it
                )
            server = MlflowServer(
                f"http://{HOST}:{port}", port, backend_store_uri, artifacts, log, process
            )
            try:
                wait_until(
                    server.healthy,
                    MLFLOW_START_TIMEOUT,
                    lambda s=server: None if s.process.poll() is None else "mlflow server exited",
                )
                break
            except RuntimeError as error:
                server.stop()
                if attempt == attempts - 1 or "address already in use" not in tail(log).lower():
                    raise RuntimeError(
                        f"mlflow server did not come up ({error}):\n{tail(log)}"
                    ) from None
        yield server
    finally:
        if server is not None:
            server.stop()


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster for the whole session. No skip when PostgreSQL is missing:
    that is a broken test environment (CI installs it)."""
    try:
        with running_postgres() as cluster:
            yield cluster
    except RuntimeError as error:
        pytest.fail(f"could not start PostgreSQL: {error}")


@pytest.fixture(scope="session")
def mlflow_server(postgres: Postgres, tmp_path_factory) -> Iterator[MlflowServer]:
    """`mlflow server` on a new database of the session's PostgreSQL cluster, serving artifacts.
    Tests that share it keep apart by logging to experiments of their own."""
    uri = postgres.create_database("mlflow")
    try:
        with running_mlflow_server(uri, tmp_path_factory.mktemp("mlflow-server")) as server:
            yield server
    except RuntimeError as error:
        pytest.fail(str(error))
