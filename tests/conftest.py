"""Shared fixtures: a real SQLite MLflow store in a temp folder, gdexp run as a real subprocess."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

# The session's servers and cluster, shared by every test module (one of each per session).
from servers import mlflow_server, postgres  # noqa: F401
from slurm import slurm_cluster  # noqa: F401

from gdexp.store import setup_lock, sqlite_path
from hydra_plugins.gdexp_plugins._common import GdexpConfigsOnly

REPO = Path(__file__).resolve().parents[1]


def made(uri: str) -> bool:
    """Whether the store exists yet: a client would create a SQLite one, and the sweep must."""
    path = sqlite_path(uri)
    return path is None or path.exists()


def reader(uri: str) -> MlflowClient:
    """A client for a store that a running sweep may be creating. Constructing it creates and
    migrates a new database, so that happens under gdexp's set-up lock, as in gdexp's own
    processes: the two never migrate one database at once."""
    with setup_lock(uri):
        return MlflowClient(uri)


@dataclass
class Store:
    folder: Path  # the launch folder: gdexp writes mlflow.db and Hydra's outputs here
    uri: str

    @functools.cached_property
    def client(self) -> MlflowClient:
        # Made on first use: it creates the store, and gdexp must meet a fresh one.
        return reader(self.uri)

    def runs(self, experiment: str = "gdexp") -> list:
        if not made(self.uri):
            return []
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return self.client.search_runs([found.experiment_id], max_results=10_000)


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any tracking settings a developer may have set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GDEXP_"))}
    env["HYDRA_FULL_ERROR"] = "0"
    env.update(extra)
    return env


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path, f"sqlite:///{tmp_path}/mlflow.db")


GdexpCli = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def gdexp_cli(store: Store) -> GdexpCli:
    """Runs `python -m gdexp ARGS` in the store's folder, as a user would."""

    def run(
        *args: str, module: str = "gdexp", timeout: float = 600, cwd: Path | None = None, **env: str
    ):
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd or store.folder,
            env=clean_env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Tests marked `refused_by_design` (Hydra's suites on apps that are not gdexp) may fail only
    with gdexp's one-line refusal; they are then reported as xfail with that line as reason."""
    outcome = yield
    if pyfuncitem.get_closest_marker("refused_by_design") is None:
        return
    error = outcome.exception
    # The sweeper's refusals leave as SystemExit (one line, no Hydra footer); the launcher's as
    # GdexpConfigsOnly, which Hydra prints as one line.
    if isinstance(error, GdexpConfigsOnly | SystemExit):
        message = str(error)
        assert "\n" not in message and "runs gdexp's configs only" in message, message
        outcome.force_exception(pytest.xfail.Exception(f"refused by design: {message}"))


# The session's services: one worker runs every test that needs them, so pytest-xdist starts
# one PostgreSQL cluster, one tracking server and one SLURM cluster, not one per worker.
SESSION_SERVICES = {"postgres", "mlflow_server", "slurm_cluster"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SESSION_SERVICES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("services"))
