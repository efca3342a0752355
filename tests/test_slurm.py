"""Sweeps through a live SLURM cluster, end to end, with real processes.

The session's throw-away cluster (tests/slurm.py: munged, MariaDB + slurmdbd for accounting,
slurmctld and slurmd on this machine) runs `python -m gdexp -m hydra/launcher=slurm ...` as a
user would: one array task per run, submitted by submitit from the launching command. Runs go
to a SQLite file in the launch folder, or to a real `mlflow server` on PostgreSQL; every run and
metric point is counted in the store's own tables. Then the cluster's faults: a task cancelled
with scancel, a task that hits its time limit, the launching command interrupted with Ctrl-C.

After every test no job of the cluster is left in squeue and no run of the test is RUNNING.
The fault tests are slow (each waits out SGD runs of 30-40 s, twice as long on a loaded
machine); the module takes ~5 min on 2 idle cores, the cluster ~4 s of it.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import clean_env, made, reader
from mlflow.tracking import MlflowClient
from servers import MlflowServer, Postgres
from slurm import SlurmCluster, die_with_parent

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
                preexec_fn=die_with_parent(signal.SIGINT),  # Ctrl-C if the tests die first
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

    @functools.cached_property
    def client(self) -> MlflowClient:
        return reader(self.tracking_uri)  # made once the store exists: the sweep makes it

    def experiment_id(self) -> str | None:
        found = self.client.get_experiment_by_name(self.experiment)
        return None if found is None else found.experiment_id

    def runs(self) -> list:
        if not made(self.tracking_uri):
            return []
        experiment_id = self.experiment_id()
        if experiment_id is None:
            return []
        return list(self.client.search_runs([experiment_id], max_results=10_000))

    def children(self) -> list:
        return [r for r in self.runs() if PARENT_TAG in r.data.tags]

    def submitted(self, latest: bool = True) -> dict[str, list[str]]:
        """SLURM job (an array task "17_1", or "18" when submitit submitted a single job) -> the
        overrides submitit submitted it with, from its submission pickle; of the latest
        submission only, unless `latest` is false."""
        from submitit.core.utils import DelayedSubmission

        tasks = {
            pickle.name.removesuffix("_submitted.pkl"): list(DelayedSubmission.load(pickle).args[0])
            for pickle in self.folder.glob("multirun/*/*/.submitit/*/*_submitted.pkl")
        }
        if latest and tasks:
            newest = max(int(task.split("_")[0]) for task in tasks)
            tasks = {t: o for t, o in tasks.items() if int(t.split("_")[0]) == newest}
        return tasks

    def task_of(self, override: str) -> str:
        """The task of the latest array that runs the job with `override` (e.g. "epochs=600")."""
        [task] = [t for t, overrides in self.submitted().items() if override in overrides]
        return task


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
    for sweeps in SWEEPS:  # a launching command the test left running: Ctrl-C, then SIGKILL
        for launch in sweeps.launches:
            if launch.process.poll() is None:
                os.killpg(launch.process.pid, signal.SIGINT)
                try:
                    launch.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
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
    step_loss (if it logs them), one of each final scalar it reports."""
    expected: Counter = Counter()
    for child in children:
        run_id = child.info.run_id
        for key in PER_EPOCH:
            expected[run_id, key] = epochs
        if child.data.params.get("tracking.log_step_loss") != "False":
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
        preexec_fn=die_with_parent(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    job = re.search(r"Submitted batch job (\d+)", done.stdout).group(1)
    for task in range(4):
        text = (tmp_path / f"task-{task}.out").read_text()
        assert text == f"task {task} of {job} on {slurm_cluster.node}\n"
    # Accounting recorded each task's end (submitit reads job states from sacct).
    tasks = [f"{job}_{t}" for t in range(4)]
    assert slurm_cluster.sacct(job, tasks) == dict.fromkeys(tasks, "COMPLETED")
    assert slurm_cluster.squeue() == []


def test_waiting_for_an_array_ends_when_slurm_lists_none_of_its_tasks(
    slurm_cluster: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # A task hands its result back (the file submitit reads) before it exits; here each task
    # lingers 6 s after that, as a slow exit or epilog would. Had the launcher stopped waiting
    # at the results, it would close the sweep with tasks still running.
    import submitit

    from hydra_plugins.gdexp_plugins._submitit import collect

    def hand_back_then_linger(value: int) -> int:
        import atexit
        import time

        atexit.register(time.sleep, 6)
        return value

    env = launch_env(slurm_cluster)  # submitit's sbatch and the launchers' squeue read it
    for key in set(os.environ) - set(env):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(
        slurm_partition=slurm_cluster.partition, slurm_mem="256M", timeout_min=2
    )
    jobs = executor.map_array(hand_back_then_linger, [1, 2])
    results: dict[int, int] = {}
    collect(jobs, results.__setitem__, lambda index, error: pytest.fail(str(error)))
    assert results == {0: 1, 1: 2}
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
    assert sweeps.cluster.sacct(array, tasks) == dict.fromkeys(tasks, "COMPLETED")


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


# --- cluster faults -----------------------------------------------------------------------------
#
# Long runs are SGD runs (100 updates an epoch: 13-16 ms an epoch on an idle core, twice that
# under load) with many epochs, step losses not logged. What each fault leaves behind is checked
# once the queue has drained; what was seen earlier (e.g. tasks still queued when the launching
# command had already exited) is asserted at the end of the test, after the resume, so that one
# failing expectation does not hide the others.


class SweepLeftTasksBehind(AssertionError):
    """The launching command exited while tasks of its array were still queued or running."""


def wait_for(ready: Callable[[], bool], launch: Launch, what: str, timeout: float = 180) -> None:
    """Polls `ready` while the launching command runs; fails with its output if that exits
    first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        if launch.process.poll() is not None:
            pytest.fail(f"waiting for {what}, the command exited:\n{launch.output[-5000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout} s:\n{launch.output[-5000:]}")
        time.sleep(0.25)


def runs_of(sweeps: Sweeps, override: str) -> list:
    """The children whose `overrides` tag holds `override` (e.g. "epochs=600")."""
    return [c for c in sweeps.children() if override in c.data.tags.get("overrides", "").split()]


def check_failure_reported(launch: Launch, code: int, task: str, override: str) -> None:
    """The command exited non-zero and named the task that failed: its SLURM id, or its
    overrides on a line other than submitit's listing of what it submits."""
    assert code != 0, launch.output[-3000:]
    lines = [line for line in launch.output.splitlines() if not re.search(r"\t#\d+ : ", line)]
    named = [line for line in lines if task in line or override in line.split()]
    assert named, f"{task} / {override} not reported:\n{launch.output[-5000:]}"


def check_ended_unfinished(runs: list) -> None:
    """Runs a fault cut short: closed, as FAILED or KILLED, never FINISHED or left RUNNING."""
    assert runs and {r.info.status for r in runs} <= {"FAILED", "KILLED"}, [
        (r.info.run_name, r.info.status) for r in runs
    ]


def check_resumed(
    sweeps: Sweeps, launch: Launch, grid: dict[str, list[str]], rerun: list[str]
) -> None:
    """The re-run submitted only the jobs with the `rerun` overrides (one each), and then the
    sweep is whole: one FINISHED run per grid point, each with all its points, under the
    sweep's one parent (FINISHED now); the runs the fault cut short are still there, closed."""
    submitted = list(sweeps.submitted().values())
    assert len(submitted) == len(rerun), submitted
    assert sorted(o for job in submitted for o in rerun if o in job) == sorted(rerun), submitted
    runs = sweeps.runs()
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert [p.info.status for p in parents] == ["FINISHED"], [p.info.run_name for p in parents]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert {c.data.tags[PARENT_TAG] for c in children} == {parents[0].info.run_id}
    finished = [c for c in children if c.info.status == "FINISHED"]
    expected = {()}
    for values in grid.values():
        expected = {(*point, value) for point in expected for value in values}
    points = [tuple(c.data.params[key] for key in grid) for c in finished]
    assert sorted(points) == sorted(expected), "one FINISHED run per grid point, none twice"
    for child in finished:
        counted = points_through_api(sweeps.client, [child])
        assert counted == expected_points([child], int(child.data.params["epochs"]))
    unfinished = [c for c in children if c.info.status != "FINISHED"]
    assert {c.info.status for c in unfinished} <= {"FAILED", "KILLED"}


CANCEL_GRID_ARGS = ("method=sgd", "epochs=600,2000", "tracking.log_step_loss=false")
CANCEL_GRID = {"method.name": ["sgd"], "epochs": ["600", "2000"]}


@pytest.mark.slow
def test_a_task_cancelled_with_scancel_ends_its_run_and_the_sweep_resumes(sweeps_on):
    # Two tasks run at once: a ~8 s run, cancelled as soon as it is open, and a ~30 s one that
    # the launching command must still wait for, as it waits for the whole array.
    sweeps = sweeps_on()
    cluster = sweeps.cluster
    launch = sweeps.start(*CANCEL_GRID_ARGS)
    wait_for(
        lambda: (
            cluster.squeue()
            and {r.info.status for r in runs_of(sweeps, "epochs=600")} == {"RUNNING"}
        ),
        launch,
        "the run to cancel to be RUNNING",
    )
    task = sweeps.task_of("epochs=600")
    cluster.run("scancel", task)
    code = launch.wait()
    left_at_exit = cluster.squeue()
    check_failure_reported(launch, code, task, "epochs=600")
    # Had the command left tasks running, they end on their own (a run of ~30 s, or slower).
    assert cluster.wait_until_empty(300) == []
    assert cluster.sacct(task.split("_")[0], [task])[task].startswith("CANCELLED")
    check_ended_unfinished(runs_of(sweeps, "epochs=600"))
    assert [r.info.status for r in runs_of(sweeps, "epochs=2000")] == ["FINISHED"]

    again = sweeps.run(*CANCEL_GRID_ARGS)  # the same command: it runs what is not FINISHED
    check_resumed(sweeps, again, CANCEL_GRID, rerun=["epochs=600"])
    assert len(runs_of(sweeps, "epochs=2000")) == 1  # not run again
    if left_at_exit:
        raise SweepLeftTasksBehind(
            f"the launching command exited (code {code}) with {left_at_exit} still queued: "
            "it stopped waiting for the array at the first task without a result, and those "
            "tasks went on logging into a sweep it had already closed"
        )


# The long run trains for ~65 s on a quiet 2-core machine (6.7 ms an epoch), longer under load:
# past the one-minute limit however fast the machine. (At 3,000 epochs it once finished in 27 s,
# before the limit came.)
LONG_EPOCHS = 10_000
LONG = f"epochs={LONG_EPOCHS}"
TIMEOUT_GRID_ARGS = ("method=sgd", f"epochs=20,{LONG_EPOCHS}", "tracking.log_step_loss=false")
# A one-minute limit. SLURM may send the --signal warning up to 60 s early (its timers tick
# every 30 s); submitit asks for USR2 signal_delay_s before the limit, and with the default
# (120 s) that is at once, maybe before Python has started. 20 s: USR2 10-40 s into the task,
# while the long run is on.
TIME_LIMIT = ("hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=20")


@pytest.mark.slow
def test_a_task_that_hits_its_time_limit_ends_its_run_and_the_sweep_resumes(sweeps_on):
    sweeps = sweeps_on()
    cluster = sweeps.cluster
    launch = sweeps.start(*TIMEOUT_GRID_ARGS, *TIME_LIMIT)
    code = launch.wait()
    left_at_exit = cluster.squeue()
    task = sweeps.task_of(LONG)
    check_failure_reported(launch, code, task, LONG)
    assert cluster.wait_until_empty(EMPTY_QUEUE_TIMEOUT) == []
    # Ended by the limit: submitit's USR2 handler raised in the job (the task then ends
    # COMPLETED with the error as its result), or SLURM killed it (TIMEOUT), or USR2 came
    # before Python had a handler for it (FAILED). Its run, if it had one, is closed.
    state = cluster.sacct(task.split("_")[0], [task])[task]
    assert state in ("COMPLETED", "TIMEOUT", "FAILED"), state
    long_runs = runs_of(sweeps, LONG)
    assert {r.info.status for r in long_runs} <= {"FAILED", "KILLED"}, state

    # The same command again, with a limit the run fits in (the preset's 10 min).
    rerun = [o for o in ("epochs=20", LONG) if not finished(runs_of(sweeps, o))]
    again = sweeps.run(*TIMEOUT_GRID_ARGS)
    check_resumed(sweeps, again, {"epochs": ["20", str(LONG_EPOCHS)]}, rerun=rerun)
    if left_at_exit:
        raise SweepLeftTasksBehind(f"exited (code {code}) with {left_at_exit} still queued")


def finished(runs: list) -> bool:
    return any(r.info.status == "FINISHED" for r in runs)


class ArrayNotCancelled(AssertionError):
    """The launching command was interrupted, and its array went on running."""


INTERRUPT_GRID_ARGS = ("method=sgd", "seed=0,1", "epochs=4000", "tracking.log_step_loss=false")


@pytest.mark.slow
def test_ctrl_c_on_the_launching_command_cancels_its_array(sweeps_on):
    # Two ~50 s runs in flight, then Ctrl-C in the launching terminal (SIGINT to its process
    # group). The array must go with it: its runs KILLED, not finished behind the user's back
    # into a sweep marked interrupted.
    sweeps = sweeps_on()
    cluster = sweeps.cluster
    launch = sweeps.start(*INTERRUPT_GRID_ARGS)
    wait_for(
        lambda: (
            len(cluster.squeue()) == 2
            and [r.info.status for r in sweeps.children()] == ["RUNNING", "RUNNING"]
        ),
        launch,
        "both runs to be RUNNING",
    )
    tasks = cluster.squeue()
    os.killpg(launch.process.pid, signal.SIGINT)
    code = launch.wait(timeout=120)
    assert code != 0, launch.output[-3000:]
    assert "nterrupt" in launch.output, launch.output[-3000:]
    # SIGTERM to the tasks, SIGKILL KillWait (5 s) later: gone well within 20 s of the exit.
    left = cluster.wait_until_empty(20)
    if left:
        cluster.run("scancel", *left)  # a clean slate for the next test
        assert cluster.wait_until_empty(EMPTY_QUEUE_TIMEOUT) == []
        raise ArrayNotCancelled(
            f"{left} still queued 20 s after the launching command exited (code {code}): "
            "nothing cancelled the array on Ctrl-C"
        )
    # Cancelled: SLURM's SIGTERM asks each task to stop, and it does at its next epoch, its
    # run KILLED, and exits by itself (COMPLETED) or is killed KillWait later (CANCELLED).
    states = cluster.sacct(tasks[0].split("_")[0], tasks)
    assert all(state.startswith(("CANCELLED", "COMPLETED")) for state in states.values()), states
    children = sweeps.children()
    assert len(children) == 2 and {c.info.status for c in children} <= {"KILLED", "FAILED"}, [
        (c.info.run_name, c.info.status) for c in children
    ]
    time.sleep(5)  # nothing reopens or finishes them afterwards
    assert {c.info.status for c in sweeps.children()} <= {"KILLED", "FAILED"}
