"""`hydra/launcher=slurm_batched` on the session's live SLURM cluster (tests/slurm.py): a grid in
chunks, one array task per chunk, each run logged as its own child, bit-identical to the local
batched launcher; a cancelled task leaves nothing RUNNING and a re-run completes the sweep."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import Store, clean_env
from slurm import SlurmCluster
from test_batched import GRID, assert_same_runs

pytestmark = pytest.mark.slow


# The commands a test started; one still running when the test ends gets Ctrl-C (it cancels
# its array), so a failed test leaves no task to hold the cluster for the next.
LAUNCHED: list[subprocess.Popen] = []


def chunked(cluster: SlurmCluster, store: Store, *args: str, **popen) -> subprocess.Popen:
    sweep = subprocess.Popen(
        [
            sys.executable, "-m", "gdexp", "-m", *args, "hydra/launcher=slurm_batched",
            f"hydra.launcher.partition={cluster.partition}", "hydra.launcher.mem_gb=1",
        ],
        cwd=store.folder, env=clean_env(SLURM_CONF=cluster.env["SLURM_CONF"]),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen,
    )  # fmt: skip
    LAUNCHED.append(sweep)
    return sweep


def runs_of_sweep(store: Store) -> list:
    return [r for r in store.runs() if "mlflow.parentRunId" in r.data.tags]


def wait_until_training(
    sweep: subprocess.Popen, cluster: SlurmCluster, store: Store, runs: int, timeout: float = 180
) -> None:
    """Polls until `runs` of the sweep's runs are RUNNING (their tasks are training); fails
    with the command's output (and the queue, on a timeout) if it exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while len([r for r in runs_of_sweep(store) if r.info.status == "RUNNING"]) < runs:
        if sweep.poll() is not None:
            output, _ = sweep.communicate()
            pytest.fail(f"waiting for {runs} runs to train, the command exited:\n{output[-5000:]}")
        if time.monotonic() > deadline:
            queue = cluster.run("squeue", "--all", "--long", check=False)
            sweep.kill()
            output, _ = sweep.communicate()
            pytest.fail(
                f"{runs} runs not training after {timeout} s; queue:\n{queue}\n{output[-5000:]}"
            )
        time.sleep(0.5)


@pytest.fixture(autouse=True)
def nothing_left_behind(slurm_cluster, store):
    yield
    for sweep in LAUNCHED:
        if sweep.poll() is None:
            sweep.send_signal(signal.SIGINT)
            try:
                sweep.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                sweep.kill()
                sweep.communicate()
    LAUNCHED.clear()
    deadline = time.monotonic() + 60
    while slurm_cluster.squeue() and time.monotonic() < deadline:
        time.sleep(1)
    assert slurm_cluster.squeue() == []
    assert [r.info.run_name for r in store.runs() if r.info.status == "RUNNING"] == []


def test_chunked_cluster_runs_equal_local_batched_runs(
    slurm_cluster, gdexp_cli, store, tmp_path_factory
):
    on_cluster = chunked(slurm_cluster, store, *GRID, "hydra.launcher.runs_per_task=30")
    output, _ = on_cluster.communicate(timeout=600)
    assert on_cluster.returncode == 0, output[-5000:]
    assert "Submitted 72 runs as 3 array tasks of up to 30 runs" in output
    local = tmp_path_factory.mktemp("local")
    done = gdexp_cli("-m", *GRID, "hydra/launcher=batched", cwd=local)
    assert done.returncode == 0, done.stderr
    assert_same_runs(Store(local, f"sqlite:///{local}/mlflow.db"), store, 72)


def test_a_cancelled_task_fails_its_runs_and_a_rerun_completes_the_sweep(slurm_cluster, store):
    # Two tasks of one long SGD run each (~25 s on a quiet machine; at 1,000 epochs a task could
    # finish before its cancellation reached it); one is cancelled while it trains.
    grid = ("method=sgd", "seed=0,1", "epochs=4000", "tracking.log_step_loss=false",
            "hydra.launcher.runs_per_task=1")  # fmt: skip
    sweep = chunked(slurm_cluster, store, *grid)
    wait_until_training(sweep, slurm_cluster, store, runs=2)  # both tasks
    [task, *_] = sorted(slurm_cluster.squeue())
    slurm_cluster.run("scancel", task)
    output, _ = sweep.communicate(timeout=600)
    assert sweep.returncode != 0, output[-3000:]
    # scancel's SIGTERM stops the task at its next epoch (its run KILLED), or SLURM kills it:
    # either way the command names the task and its failed run.
    assert f"array task {task}" in output and "1 of 2 runs failed" in output, output[-3000:]
    statuses = sorted(r.info.status for r in runs_of_sweep(store))
    assert statuses == ["FINISHED", "KILLED"]

    again = chunked(slurm_cluster, store, *grid)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output[-3000:]
    assert "resuming: 1 already FINISHED" in output
    finished = [r for r in runs_of_sweep(store) if r.info.status == "FINISHED"]
    assert sorted(r.data.params["seed"] for r in finished) == ["0", "1"]


def test_ctrl_c_cancels_the_array_and_leaves_nothing_running(slurm_cluster, store):
    grid = ("method=sgd", "seed=0,1", "epochs=1000", "tracking.log_step_loss=false",
            "hydra.launcher.runs_per_task=1")  # fmt: skip
    sweep = chunked(slurm_cluster, store, *grid)
    wait_until_training(sweep, slurm_cluster, store, runs=1)
    assert slurm_cluster.squeue()
    sweep.send_signal(signal.SIGINT)
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, output[-3000:]
    assert "cancelled array job" in output and "Traceback" not in output
    deadline = time.monotonic() + 60
    while slurm_cluster.squeue() and time.monotonic() < deadline:
        time.sleep(1)
    assert slurm_cluster.squeue() == []  # cancelled, not left to finish
    statuses = {r.info.status for r in store.runs()}
    assert "RUNNING" not in statuses and "KILLED" in statuses


def test_a_table_sweep_on_the_cluster_gathers_the_in_process_table_bit_for_bit(
    slurm_cluster, gdexp_cli, store, tmp_path_factory
):
    from test_table_sweep import parents, table_of

    from gdexp import table

    grid = (*GRID, "tracking.record=table", "hydra.launcher.table_chunk=10")
    on_cluster = chunked(slurm_cluster, store, *grid, "hydra.launcher.configs_per_task=30")
    output, _ = on_cluster.communicate(timeout=600)
    assert on_cluster.returncode == 0, output[-5000:]
    # Blocks of 12 configs (method x dtype) in chunks of 10 and 2: tasks of whole chunks, <= 30.
    assert "Submitted 72 configs in 12 chunks as 3 array tasks" in output, output[-3000:]
    local = tmp_path_factory.mktemp("local")
    done = gdexp_cli("-m", *grid, "hydra/launcher=batched", cwd=local)
    assert done.returncode == 0, done.stderr
    [there] = parents(store)
    [here] = parents(Store(local, f"sqlite:///{local}/mlflow.db"))
    assert there.info.status == "FINISHED"
    gathered = table_of(store, there.info.run_id)
    in_process = table_of(Store(local, f"sqlite:///{local}/mlflow.db"), here.info.run_id)
    assert gathered.drop(columns="parent_run_id").equals(in_process.drop(columns="parent_run_id"))
    assert list(gathered.columns) == list(table.COLUMNS) and len(gathered) == 72
