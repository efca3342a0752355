"""Sweeps through a live SLURM cluster, end to end, with real processes.

The session's throw-away cluster (tests/slurm.py: munged, MariaDB + slurmdbd for accounting,
slurmctld and slurmd on this machine) runs `python -m gdexp -m hydra/launcher=slurm ...` as a
user would: one array task per run, submitted by submitit from the launching command. Runs go
to a SQLite file in the launch folder, or to a real `mlflow server` on PostgreSQL; every run and
metric point is counted in the store's own tables. Then the cluster's faults: a task cancelled
with scancel, a task that hits its time limit, the launching command interrupted with Ctrl-C.

After every test no job of the cluster is left in squeue and no run of the test is RUNNING.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import clean_env
from mlflow.tracking import MlflowClient
from servers import MlflowServer, Postgres, mlflow_server, postgres
from slurm import SlurmCluster, slurm_cluster

__all__ = ["mlflow_server", "postgres", "slurm_cluster"]  # the session fixtures used here

PARENT_TAG = "mlflow.parentRunId"
EPOCHS = 20  # gdexp's default
UPDATES_PER_EPOCH = {"bgd": 1, "sgd": 100, "minibatch": 10}  # 100 points
PER_EPOCH = ("loss", "w", "b")
LAUNCH_TIMEOUT = 300  # seconds for one launching command; a 4-run sweep takes ~30 s
EMPTY_QUEUE_TIMEOUT = 60  # seconds for the queue to drain after a test


# --- launching sweeps ---------------------------------------------------------------------------


@dataclass
class Launch:
    """A launching command started in the background, its output in files."""

    process: subprocess.Popen
    out: Path
    err: Path

    @property
    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def wait(self, timeout: float = LAUNCH_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            pytest.fail(f"the launching command ran past {timeout} s:\n{self.output[-5000:]}")

    def jobs(self) -> dict[int, str]:
        """What submitit was handed: job index -> its overrides (the `#i : ...` lines)."""
        found = re.findall(r"\t#(\d+) : (.*)", self.out.read_text(errors="replace"))
        return {int(index): overrides.strip() for index, overrides in found}


@dataclass
class Sweeps:
    """Runs `python -m gdexp -m hydra/launcher=slurm ...` in one launch folder, into one MLflow
    store and experiment, on the session's cluster."""

    cluster: SlurmCluster
    folder: Path
    tracking_uri: str  # what the jobs log to (a file of the folder, or a server)
    experiment: str = "gdexp"
    launched: int = 0
    launches: list[Launch] = field(default_factory=list)

    def command(self, *overrides: str) -> list[str]:
        return [
            *(sys.executable, "-m", "gdexp", "-m", "hydra/launcher=slurm"),
            f"hydra.launcher.partition={self.cluster.partition}",
            "hydra.launcher.mem_gb=1",  # a run peaks at ~0.45 GB; the node has what is free
            f"tracking.experiment={self.experiment}",
            *overrides,
        ]

    def start(self, *overrides: str, **env: str) -> Launch:
        self.launched += 1
        out = self.folder / f"launch-{self.launched}.out"
        err = self.folder / f"launch-{self.launched}.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            process = subprocess.Popen(
                self.command(*overrides),
                cwd=self.folder,
                env=launch_env(self.cluster, **env),
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, as in a terminal: Ctrl-C
            )
        launch = Launch(process, out, err)
        self.launches.append(launch)
        return launch

    def run(self, *overrides: str, **env: str) -> Launch:
        """Runs the command to its end; fails the test with its output unless it exits 0."""
        launch = self.start(*overrides, **env)
        code = launch.wait()
        assert code == 0, f"exit {code}:\n{launch.output[-6000:]}"
        return launch

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    def experiment_id(self) -> str | None:
        found = self.client.get_experiment_by_name(self.experiment)
        return None if found is None else found.experiment_id

    def runs(self) -> list:
        experiment_id = self.experiment_id()
        if experiment_id is None:
            return []
        return list(self.client.search_runs([experiment_id], max_results=10_000))

    def children(self) -> list:
        return [r for r in self.runs() if PARENT_TAG in r.data.tags]


def launch_env(cluster: SlurmCluster, **extra: str) -> dict[str, str]:
    """A clean environment (no tracking settings, no SLURM job of an outer allocation) that
    points SLURM clients at the test cluster."""
    env = {k: v for k, v in clean_env(**extra).items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env["SLURM_CONF"] = str(cluster.conf)
    return env


SWEEPS: list[Sweeps] = []  # of the running test, for the checks after it


@pytest.fixture
def sweeps_on(slurm_cluster: SlurmCluster, tmp_path: Path) -> Callable[..., Sweeps]:
    """Sweeps(tracking_uri=..., experiment=...) in this test's folder; a SQLite file there by
    default, as gdexp's own default store."""

    def make(tracking_uri: str | None = None, experiment: str = "gdexp") -> Sweeps:
        made = Sweeps(
            slurm_cluster, tmp_path, tracking_uri or f"sqlite:///{tmp_path}/mlflow.db", experiment
        )
        SWEEPS.append(made)
        return made

    return make


@pytest.fixture(autouse=True)
def nothing_left_behind(slurm_cluster: SlurmCluster) -> Iterator[None]:
    """After each test: the queue drains (no job outlives its sweep) and no run of the test
    stays RUNNING. Jobs still queued are cancelled, so the next test starts on an idle node."""
    SWEEPS.clear()
    assert slurm_cluster.squeue() == [], "the cluster was not idle before the test"
    yield
    for sweeps in SWEEPS:
        for launch in sweeps.launches:
            if launch.process.poll() is None:
                os.killpg(launch.process.pid, signal.SIGKILL)
                launch.process.wait()
    left = slurm_cluster.wait_until_empty(EMPTY_QUEUE_TIMEOUT)
    if left:
        slurm_cluster.cancel_all()
        slurm_cluster.wait_until_empty(EMPTY_QUEUE_TIMEOUT)
    running = [
        f"{r.info.run_name} ({r.info.run_id})"
        for sweeps in SWEEPS
        for r in sweeps.runs()
        if r.info.status == "RUNNING"
    ]
    SWEEPS.clear()
    assert not left, f"jobs still queued {EMPTY_QUEUE_TIMEOUT} s after the test: {left}"
    assert not running, f"runs left RUNNING: {running}"


# --- checks -------------------------------------------------------------------------------------


def expected_points(children: list, epochs: int = EPOCHS) -> Counter:
    """What each child must hold: a point per epoch of loss, w and b, one per update of
    step_loss, one of each final scalar it reports."""
    expected: Counter = Counter()
    for child in children:
        run_id = child.info.run_id
        for key in PER_EPOCH:
            expected[run_id, key] = epochs
        updates = UPDATES_PER_EPOCH[child.data.params["method.name"]]
        expected[run_id, "step_loss"] = updates * epochs
        for key in set(child.data.metrics) - {*PER_EPOCH, "step_loss"}:
            expected[run_id, key] = 1
    return expected


POINTS_SQL = (
    "SELECT m.run_uuid, m.key, count(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid"
    " WHERE r.experiment_id = {} GROUP BY m.run_uuid, m.key"
)


def points_in_sqlite(path: Path, experiment_id: str) -> Counter:
    """(run id, metric key) -> points, read from MLflow's tables in the SQLite file itself."""
    with sqlite3.connect(path) as db:
        rows = db.execute(POINTS_SQL.format("?"), (int(experiment_id),)).fetchall()
    return Counter({(run, key): n for run, key, n in rows})


def points_in_postgres(postgres: Postgres, experiment_id: str) -> Counter:
    rows = postgres.query("mlflow", POINTS_SQL.format("%s"), int(experiment_id))
    return Counter({(run, key): n for run, key, n in rows})


def points_through_api(client: MlflowClient, children: list) -> Counter:
    return Counter(
        {
            (child.info.run_id, key): len(client.get_metric_history(child.info.run_id, key))
            for child in children
            for key in child.data.metrics
        }
    )


def check_one_sweep(sweeps: Sweeps, grid: dict[str, list[str]]) -> tuple[object, list]:
    """One FINISHED parent run, and under it one FINISHED child for each point of `grid`
    (params named by their dotted keys), none twice. Returns (parent, children)."""
    runs = sweeps.runs()
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(parents) == 1, [(r.info.run_name, r.info.status) for r in parents]
    [parent] = parents
    assert parent.info.status == "FINISHED", parent.info.status
    assert {c.data.tags[PARENT_TAG] for c in children} == {parent.info.run_id}
    expected = {()}
    for values in grid.values():
        expected = {(*point, value) for point in expected for value in values}
    points = [tuple(c.data.params[key] for key in grid) for c in children]
    assert sorted(points) == sorted(expected), "every grid point once, none lost, none twice"
    assert {c.info.status for c in children} == {"FINISHED"}, [
        (c.info.run_name, c.info.status) for c in children
    ]
    return parent, children


def check_reported(output: str, children: list, experiment_id: str) -> None:
    """The launching command printed the sweep's tally (how many runs had each outcome) and
    the address of the runs in the MLflow UI."""
    tally = Counter(c.data.tags["outcome"] for c in children)
    for outcome, n in tally.items():
        pattern = rf"\b{n}\W+{outcome}\b|\b{outcome}\W+{n}\b"
        assert re.search(pattern, output), f"no tally '{n} {outcome}' in:\n{output[-3000:]}"
    assert f"#/experiments/{experiment_id}/" in output, output[-3000:]


# --- the cluster itself -------------------------------------------------------------------------


def test_the_cluster_runs_an_array_job_to_its_end(slurm_cluster: SlurmCluster, tmp_path: Path):
    done = subprocess.run(
        [
            *("sbatch", "--wait", "--array=0-3", f"--partition={slurm_cluster.partition}"),
            *("--mem=64M", "--time=2", f"--output={tmp_path}/task-%a.out"),
            "--wrap",
            "echo task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID on $(hostname -s)",
        ],
        env=launch_env(slurm_cluster),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    job = re.search(r"Submitted batch job (\d+)", done.stdout).group(1)
    for task in range(4):
        text = (tmp_path / f"task-{task}.out").read_text()
        assert text == f"task {task} of {job} on {slurm_cluster.node}\n"
    # Accounting recorded each task's end (submitit reads job states from sacct).
    assert slurm_cluster.sacct(job) == {f"{job}_{t}": "COMPLETED" for t in range(4)}
    assert slurm_cluster.squeue() == []


# --- sweeps -------------------------------------------------------------------------------------

GRID_ARGS = ("method=bgd,sgd", "seed=0,1")
GRID = {"method.name": ["bgd", "sgd"], "seed": ["0", "1"]}


def test_sweep_on_slurm_into_a_sqlite_file_in_the_launch_folder(sweeps_on, tmp_path: Path):
    sweeps = sweeps_on()  # gdexp's default store: <launch folder>/mlflow.db
    launch = sweeps.run(*GRID_ARGS)
    assert (tmp_path / "mlflow.db").exists()
    _, children = check_one_sweep(sweeps, GRID)
    experiment_id = sweeps.experiment_id()
    expected = expected_points(children)
    assert points_in_sqlite(tmp_path / "mlflow.db", experiment_id) == expected
    assert points_through_api(sweeps.client, children) == expected
    check_reported(launch.output, children, experiment_id)
    # Each run was a task of one SLURM array: one submitit folder per task, each COMPLETED.
    tasks = sorted(p.name for p in tmp_path.glob("multirun/*/*/.submitit/*_*") if p.is_dir())
    assert len(tasks) == 4 and len({t.split("_")[0] for t in tasks}) == 1, tasks
    array = tasks[0].split("_")[0]
    assert sweeps.cluster.sacct(array) == {t: "COMPLETED" for t in tasks}


@pytest.mark.slow
def test_sweep_on_slurm_through_a_tracking_server_on_postgresql(
    sweeps_on, mlflow_server: MlflowServer, postgres: Postgres, tmp_path: Path
):
    sweeps = sweeps_on(mlflow_server.url, experiment="slurm-server")
    launch = sweeps.run(*GRID_ARGS, f"tracking.uri={mlflow_server.url}")
    _, children = check_one_sweep(sweeps, GRID)
    experiment_id = sweeps.experiment_id()
    expected = expected_points(children)
    assert points_in_postgres(postgres, experiment_id) == expected
    assert points_through_api(sweeps.client, children) == expected
    check_reported(launch.output, children, experiment_id)
    assert f"{mlflow_server.url}/#/experiments/{experiment_id}/" in launch.output
    # Nothing went to a local store instead.
    assert not (tmp_path / "mlflow.db").exists()
