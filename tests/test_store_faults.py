"""Every store fault in one line, at once, before any training, with no run created.

Read-only and full file systems are real: tmpfs mounts made for the test (as root, chmod does not
make a folder read-only). Without the right to mount, those cases are skipped, saying why.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gdexp.store import preflight

FAULT_SECONDS = 5.0


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


def refused(gdexp_cli, *args: str, cwd: Path | None = None) -> str:
    """Runs gdexp, checks the refusal is one line, quick and clean; returns the line."""
    start = time.monotonic()
    done = gdexp_cli(*args, cwd=cwd)
    took = time.monotonic() - start
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
        line = refused(gdexp_cli, *sweep, f"tracking.uri=sqlite:///{folder}/mlflow.db")
    assert f"{folder}/mlflow.db" in line and "not writable" in line and "tracking.uri" in line


def test_an_existing_store_on_a_read_only_file_system(gdexp_cli, store, tmp_path):
    assert gdexp_cli("epochs=2").returncode == 0  # a real store with a run in it
    folder = tmp_path / "frozen"
    with tmpfs(folder) as mounted:
        shutil.copy(store.folder / "mlflow.db", mounted / "mlflow.db")
        remount = subprocess.run(["mount", "-o", "remount,ro", str(mounted)], capture_output=True)
        assert remount.returncode == 0, remount.stderr
        line = refused(gdexp_cli, f"tracking.uri=sqlite:///{mounted}/mlflow.db")
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
        line = refused(gdexp_cli, f"tracking.uri=sqlite:///{folder}/mlflow.db")
        assert f"{folder}/mlflow.db" in line and "full" in line
        assert not (folder / "mlflow.db").exists()


def test_a_corrupt_store(gdexp_cli, store):
    database = store.folder / "mlflow.db"
    database.write_bytes(uuid.uuid4().bytes * 256)  # 4 KB of random bytes
    line = refused(gdexp_cli)
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
    line = refused(gdexp_cli, f"tracking.uri=sqlite:///{tmp_path}/nowhere/mlflow.db")
    assert f"{tmp_path}/nowhere" in line and "does not exist" in line
