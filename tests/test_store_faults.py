"""Every store fault in one line, at once, before any training, with no run created and no
folder left in the launch folder.

Read-only and full file systems are real: tmpfs mounts made for the test (as root, chmod does not
make a folder read-only). Without the right to mount, those cases are skipped, saying why.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from conftest import clean_env

from gdexp.store import preflight

FAULT_SECONDS = 5.0

# A single run, a sweep on gdexp's sweeper, a sweep on Hydra's basic sweeper (which gdexp's
# callback tracks): each checks the store, and its folder, its own way.
MODES = {
    "single": (),
    "sweep": ("-m", "seed=0,1"),
    "basic_sweeper": ("-m", "seed=0,1", "hydra/sweeper=basic"),
}


@contextmanager
def tmpfs(folder: Path, *options: str) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(("size=1m", *options)), "tmpfs", str(folder)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def refused(gdexp_cli, *args: str, cwd: Path, **env: str) -> str:
    """Runs gdexp in the launch folder `cwd`, checks the refusal is one line, quick and clean,
    and leaves the launch folder as it was (no outputs/ or multirun/ folder); returns the line."""
    before = listing(cwd)
    start = time.monotonic()
    done = gdexp_cli(*args, cwd=cwd, **env)
    took = time.monotonic() - start
    assert listing(cwd) == before
    assert done.returncode != 0, done.stdout[-2000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    lines = [line for line in lines if "HYDRA_FULL_ERROR" not in line]
    assert len(lines) == 1, done.stderr
    assert took < FAULT_SECONDS, f"{took:.1f} s"
    assert "epoch" not in done.stdout and "final loss" not in done.stdout  # nothing trained
    return lines[0]


@pytest.mark.parametrize("sweep", [(), ("-m", "seed=0,1")], ids=["single", "sweep"])
def test_a_new_store_in_a_read_only_folder(gdexp_cli, tmp_path, sweep):
    with tmpfs(tmp_path / "ro", "ro") as folder:
        uri = f"tracking.uri=sqlite:///{folder}/mlflow.db"
        line = refused(gdexp_cli, *sweep, uri, cwd=tmp_path)
    assert f"{folder}/mlflow.db" in line and "not writable" in line and "tracking.uri" in line


def test_an_existing_store_on_a_read_only_file_system(gdexp_cli, store, tmp_path):
    assert gdexp_cli("epochs=2").returncode == 0  # a real store with a run in it
    folder = tmp_path / "frozen"
    with tmpfs(folder) as mounted:
        shutil.copy(store.folder / "mlflow.db", mounted / "mlflow.db")
        remount = subprocess.run(["mount", "-o", "remount,ro", str(mounted)], capture_output=True)
        assert remount.returncode == 0, remount.stderr
        line = refused(gdexp_cli, f"tracking.uri=sqlite:///{mounted}/mlflow.db", cwd=tmp_path)
    assert f"{mounted}/mlflow.db" in line and "cannot be written" in line


@pytest.mark.parametrize("sweep", [(), ("-m", "seed=0,1")], ids=["single", "sweep"])
def test_a_read_only_launch_folder(gdexp_cli, tmp_path, sweep):
    with tmpfs(tmp_path / "launch", "ro") as folder:
        line = refused(gdexp_cli, *sweep, cwd=folder)
        assert str(folder) in line and "hydra." in line  # names the folder and the way out
        assert list(folder.iterdir()) == []


def test_a_full_disk(gdexp_cli, tmp_path):
    with tmpfs(tmp_path / "full") as folder:
        (folder / "filler").write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))
        line = refused(gdexp_cli, f"tracking.uri=sqlite:///{folder}/mlflow.db", cwd=tmp_path)
        assert f"{folder}/mlflow.db" in line and "full" in line
        assert not (folder / "mlflow.db").exists()


def test_a_corrupt_store(gdexp_cli, store):
    database = store.folder / "mlflow.db"
    database.write_bytes(uuid.uuid4().bytes * 256)  # 4 KB of random bytes
    line = refused(gdexp_cli, cwd=store.folder)
    assert str(database) in line and "not an SQLite database" in line
    assert database.read_bytes()[:16] != b"SQLite format 3\0"  # left as it was


def test_checking_a_store_in_use_keeps_sqlites_locks(tmp_path):
    # Jobs run in a sweep's process check the store while the sweep's connections are open. A
    # check that closed a descriptor of its own on the file dropped their locks: the next
    # process to close its connection then took the store for unused and deleted the
    # write-ahead log under them (CI once read "database disk image is malformed").
    database = tmp_path / "mlflow.db"
    held = sqlite3.connect(database)
    held.execute("PRAGMA journal_mode=WAL")
    held.execute("CREATE TABLE t (x)")
    held.commit()
    preflight(f"sqlite:///{database}")
    other = "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('SELECT * FROM t').close()"
    subprocess.run([sys.executable, "-c", other, str(database)], check=True)
    assert (tmp_path / "mlflow.db-wal").exists()  # still in use: nobody removed its log
    held.execute("INSERT INTO t VALUES (1)")
    held.commit()
    assert sqlite3.connect(database).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_store_whose_folder_is_missing(gdexp_cli, tmp_path):
    line = refused(gdexp_cli, f"tracking.uri=sqlite:///{tmp_path}/nowhere/mlflow.db", cwd=tmp_path)
    assert f"{tmp_path}/nowhere" in line and "does not exist" in line


@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> Path:
    """A store made by gdexp itself (one run; ~1 MB, WAL mode), copied by each test that
    damages it."""
    folder = tmp_path_factory.mktemp("real_store")
    done = subprocess.run(
        [sys.executable, "-m", "gdexp", "epochs=2"],
        cwd=folder, env=clean_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return folder / "mlflow.db"


def copied(real_store: Path, folder: Path) -> Path:
    database = folder / "mlflow.db"
    shutil.copy(real_store, database)
    return database


def page_of(database: Path, table: str) -> tuple[int, int]:
    """(page number, page size) of a table's root page: a page the store's runs live in."""
    # Not read-only: a read-only connection leaves a WAL-mode store's -wal and -shm behind.
    with closing(sqlite3.connect(database)) as connection:
        (page,) = connection.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name = ?", (table,)
        ).fetchone()
        (size,) = connection.execute("PRAGMA page_size").fetchone()
    return page, size


def damaged(line: str, database: Path) -> None:
    assert f"Cannot use the MLflow store {database}: the database is damaged (SQLite" in line
    assert "Move it away" in line and "sqlite3 mlflow.db .dump | sqlite3 recovered.db" in line


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_a_truncated_store(gdexp_cli, store, real_store, mode):
    database = copied(real_store, store.folder)
    os.truncate(database, database.stat().st_size // 2)  # a copy cut short, a disk that filled
    cut = database.read_bytes()
    line = refused(gdexp_cli, *mode, cwd=store.folder)
    damaged(line, database)
    assert "malformed" in line  # SQLite's own word for it
    assert database.read_bytes() == cut  # left as it was, for whoever recovers it


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_a_store_with_a_page_overwritten(gdexp_cli, store, real_store, mode):
    # The file still starts as an SQLite database, and opens: only reading the page finds it.
    database = copied(real_store, store.folder)
    page, size = page_of(database, "runs")
    with database.open("r+b") as handle:  # no SQLite connection of this process has it open
        handle.seek((page - 1) * size)
        handle.write(random.Random(16).randbytes(size))
    garbled = database.read_bytes()
    line = refused(gdexp_cli, *mode, cwd=store.folder)
    damaged(line, database)
    assert f"Page {page}" in line  # where SQLite found it
    assert database.read_bytes() == garbled


def test_a_sound_store_in_use_is_not_taken_for_damaged(real_store, tmp_path):
    # A WAL-mode store whose latest pages are in its -wal file, held open by another
    # connection: the file alone is shorter than the database, and it is sound.
    database = copied(real_store, tmp_path)
    with closing(sqlite3.connect(database)) as held:
        held.execute("PRAGMA wal_autocheckpoint=0")  # the pages stay in the log
        held.execute("CREATE TABLE grown (x BLOB)")
        held.executemany("INSERT INTO grown VALUES (?)", [(b"\1" * 4000,)] * 100)
        held.commit()
        (pages,) = held.execute("PRAGMA page_count").fetchone()
        (size,) = held.execute("PRAGMA page_size").fetchone()
        assert database.stat().st_size < pages * size and (tmp_path / "mlflow.db-wal").exists()
        preflight(f"sqlite:///{database}")  # raises if it took the store for damaged
        assert (tmp_path / "mlflow.db-wal").exists()


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
@pytest.mark.parametrize("absolute", [True, False], ids=["absolute", "relative"])
def test_a_plain_path_to_a_database(gdexp_cli, store, mode, absolute):
    # MLflow would take it for a folder of its file store, and make one there.
    typed = str(store.folder / "runs.db") if absolute else "runs.db"
    line = refused(gdexp_cli, *mode, f"tracking.uri={typed}", cwd=store.folder)
    assert line.startswith(f"Cannot use tracking.uri={store.folder}/runs.db: ")
    assert f"write tracking.uri=sqlite:///{store.folder}/runs.db" in line


def test_a_plain_path_in_the_environment(gdexp_cli, store):
    line = refused(gdexp_cli, cwd=store.folder, MLFLOW_TRACKING_URI="runs.db")
    assert f"write MLFLOW_TRACKING_URI=sqlite:///{store.folder}/runs.db" in line


def test_a_file_uri_to_a_database(gdexp_cli, store):
    line = refused(gdexp_cli, f"tracking.uri=file://{store.folder}/runs.sqlite", cwd=store.folder)
    assert f"write tracking.uri=sqlite:///{store.folder}/runs.sqlite" in line


def test_a_run_refused_for_its_composed_config_leaves_no_folder(gdexp_cli, store):
    # Only the composed config shows it (an interpolation): refused before Hydra makes the
    # run's folder, as the command-line check refuses what it sees.
    line = refused(gdexp_cli, "data.noise_std=0", "step_size=${data.noise_std}", cwd=store.folder)
    assert line == "step_size=0.0 is invalid: it must be a finite number > 0"
