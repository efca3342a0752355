"""Sweeps that survive: resume, interrupts, a store that is not there, provenance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, clean_env


def statuses(store) -> Counter:
    return Counter(r.info.status for r in store.runs())


def children(store) -> list:
    return [r for r in store.runs() if "mlflow.parentRunId" in r.data.tags]


def sweeps(store) -> dict[str, list]:
    """Each sweep's parent run id: its children."""
    runs = store.runs()
    parents = [r for r in runs if r.data.tags.get("gdexp.kind") == "sweep"]
    return {
        p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
        for p in parents
    }


def parent_of(store, n_runs: int):
    [parent] = [
        r
        for r in store.runs()
        if r.data.tags.get("gdexp.kind") == "sweep" and r.data.tags.get("n_runs") == str(n_runs)
    ]
    return parent


def test_a_sweep_reuses_only_its_own_runs(gdexp_cli, store):
    assert gdexp_cli("epochs=3").returncode == 0  # a single run: seed 0, outside any sweep
    first = gdexp_cli("-m", "seed=0,1,2", "epochs=3")
    assert first.returncode == 0, first.stderr
    second = gdexp_cli("-m", "seed=0,1,2,3,4", "epochs=3")  # another sweep, overlapping
    assert second.returncode == 0, second.stderr
    assert "resuming" not in first.stdout + second.stdout
    # Each sweep is one parent whose children are exactly its grid: nothing adopted.
    found = sweeps(store)
    assert sorted(len(kids) for kids in found.values()) == [3, 5]
    for kids in found.values():
        assert all(k.info.status == "FINISHED" for k in kids)
        assert len({k.data.tags["gdexp.config_hash"] for k in kids}) == len(kids)
    five = parent_of(store, 5)
    assert five.data.tags["mlflow.note.content"].startswith("5 runs: ")
    tally = sum(int(v) for k, v in five.data.tags.items() if k.startswith("runs_"))
    assert tally == 5 and five.data.tags["reused_runs"] == "0"

    # The same sweep again: it is complete, so nothing runs, and it keeps its one parent.
    third = gdexp_cli("-m", "seed=0,1,2,3,4", "epochs=3")
    assert third.returncode == 0, third.stderr
    assert "resuming: 5 already FINISHED" in third.stdout
    assert sorted(len(kids) for kids in sweeps(store).values()) == [3, 5]
    assert parent_of(store, 5).info.run_id == five.info.run_id
    assert parent_of(store, 5).data.tags["reused_runs"] == "5"

    # tracking.resume=false starts afresh: a new parent, every run again.
    fresh = gdexp_cli("-m", "seed=0,1,2,3,4", "epochs=3", "tracking.resume=false")
    assert fresh.returncode == 0, fresh.stderr
    assert "resuming" not in fresh.stdout
    assert sorted(len(kids) for kids in sweeps(store).values()) == [3, 5, 5]


def start_sweep(folder: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gdexp", "-m", *args],
        cwd=folder, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for(process: subprocess.Popen, text: str, count: int = 1, timeout: float = 120) -> str:
    """Read the sweep's output until `text` has appeared `count` times."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "".join(seen).count(text) >= count:
            return "".join(seen)
    raise AssertionError(f"never saw {text!r} x{count}:\n{''.join(seen)[-3000:]}")


# ~1 s a run; epoch lines (DEBUG in a sweep) shown, to tell when a run is in flight.
SLOW_GRID = ("method=sgd", "seed=range(0,6)", "epochs=150", "hydra.verbose=gdexp.epochs")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_sweep_leaves_no_run_running_and_resumes(store, how):
    sweep = start_sweep(store.folder, *SLOW_GRID)
    wait_for(sweep, "epoch 100", count=3)  # the third run is in flight
    sweep.send_signal(how)
    output, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 130
    signal_name = signal.Signals(how).name
    assert (
        f"Sweep interrupted ({signal_name}): 1 run(s) in flight marked KILLED; 2 finished."
        in output
    )
    assert output.count("nterrupted") == 1  # said once
    assert "Traceback" not in output
    count = statuses(store)
    assert count["RUNNING"] == 0
    assert count["KILLED"] == 2  # the parent and the run in flight
    assert count["FINISHED"] == 2

    resumed = start_sweep(store.folder, *SLOW_GRID)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "resuming: 2 already FINISHED" in output
    # One parent; its 6 configs FINISHED once each; the killed attempt kept and marked as such.
    [(parent_id, kids)] = sweeps(store).items()
    finished = [r for r in kids if r.info.status == "FINISHED"]
    assert sorted(int(r.data.params["seed"]) for r in finished) == list(range(6))
    [killed] = [r for r in kids if r.info.status == "KILLED"]
    rerun = [r for r in finished if r.data.params["seed"] == killed.data.params["seed"]]
    assert killed.data.tags["gdexp.superseded_by"] == rerun[0].info.run_id
    parent = store.client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert sum(int(v) for k, v in parent.data.tags.items() if k.startswith("runs_")) == 6
    assert parent.data.tags["killed_runs"] == "0" and parent.data.tags["failed_runs"] == "0"
    assert parent.data.tags["mlflow.note.content"].startswith("6 runs: ")


def test_an_interrupt_before_any_run_says_nothing_of_runs_in_flight(store, caplog):
    from gdexp.store import Tracker
    from gdexp.sweep import Sweep

    tracker = Tracker(store.uri, "gdexp")
    sweep = Sweep.open(
        tracker, store.folder / "sweep", grid={"seed": "0,1"}, sweeper="gdexp",
        config_hashes=["a", "b"],
    )  # fmt: skip
    sweep.close_interrupted()
    assert "no run in flight; 0 finished" in caplog.text
    assert "marked KILLED" not in caplog.text
    assert store.client.get_run(sweep.parent_run_id).info.status == "KILLED"


def test_a_hard_killed_run_is_run_again_on_resume(store):
    grid = ("method=sgd", "seed=0,1", "epochs=150", "hydra.verbose=gdexp.epochs")
    sweep = start_sweep(store.folder, *grid)
    wait_for(sweep, "epoch 100", count=2)
    sweep.kill()  # SIGKILL: no cleanup at all
    sweep.wait(timeout=30)
    assert statuses(store)["RUNNING"] == 2  # the parent and the run in flight, left as they were
    resumed = start_sweep(store.folder, *grid)
    output, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, output
    assert "resuming: 1 already FINISHED" in output
    done = Counter(r.data.params["seed"] for r in children(store) if r.info.status == "FINISHED")
    assert done == {"0": 1, "1": 1}
    assert statuses(store)["RUNNING"] == 0  # the attempt SIGKILL left RUNNING is now KILLED


def test_an_unreachable_server_fails_in_one_line_before_training(gdexp_cli, store):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = gdexp_cli(f"tracking.uri=http://127.0.0.1:{port}")
    assert done.returncode != 0
    assert f"Cannot reach the MLflow tracking server at http://127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr and "epoch" not in done.stdout
    sweep = gdexp_cli("-m", "seed=0,1", f"tracking.uri=http://127.0.0.1:{port}")
    assert sweep.returncode != 0 and "Cannot reach the MLflow tracking server" in sweep.stderr
    assert "Launching" not in sweep.stdout


def test_an_unwritable_store_fails_in_one_line(gdexp_cli, store):
    blocker = store.folder / "not_a_folder"
    blocker.write_text("a file where the store's folder should be")
    done = gdexp_cli(f"tracking.uri=sqlite:///{blocker}/mlflow.db")
    assert done.returncode != 0
    assert f"Cannot use the MLflow store {blocker}/mlflow.db: its folder" in done.stderr
    assert "Traceback" not in done.stderr and "epoch" not in done.stdout


def test_each_run_records_commit_command_and_versions(gdexp_cli, store):
    import mlflow
    import torch

    assert gdexp_cli("epochs=2", "seed=5").returncode == 0
    [run] = store.runs()
    tags = run.data.tags
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    assert tags["mlflow.source.git.commit"] == (head.stdout.strip() or "unknown")
    assert tags["gdexp.git_dirty"] in ("true", "false", "unknown")
    assert tags["command"] == "python -m gdexp epochs=2 seed=5"
    assert tags["versions.torch"] == torch.__version__
    assert tags["versions.mlflow"] == mlflow.__version__
    assert tags["versions.python"] == ".".join(map(str, sys.version_info[:3]))
    assert "versions.hydra-core" in tags and len(tags["gdexp.config_hash"]) == 32


def histories_by_config(folder: Path) -> dict[str, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("gdexp")
    result = {}
    for run in client.search_runs([experiment.experiment_id]):
        if "mlflow.parentRunId" not in run.data.tags:
            continue
        result[run.data.tags["gdexp.config_hash"]] = [
            (key, m.step, m.value)
            for key in ("loss", "w", "b", "step_loss")
            for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        ]
    return result


@pytest.mark.slow
def test_same_config_bit_identical_with_every_launcher(gdexp_cli, tmp_path_factory):
    grid = ("-m", "method=sgd,minibatch", "seed=0,1", "step_size=0.05", "epochs=6")
    launchers = {
        "basic": (),
        "joblib": ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
        "batched": ("hydra/launcher=batched",),
    }
    found = {}
    for name, extra in launchers.items():
        folder = tmp_path_factory.mktemp(name)
        done = gdexp_cli(*grid, *extra, cwd=folder)
        assert done.returncode == 0, done.stderr
        found[name] = histories_by_config(folder)
    assert len(found["basic"]) == 4
    assert found["joblib"] == found["basic"]
    assert found["batched"] == found["basic"]


@pytest.mark.slow
def test_two_sweeps_at_once_keep_their_runs_apart(store):
    first = start_sweep(
        store.folder,
        "seed=range(0,8)",
        "epochs=3",
        "tracking.log_step_loss=false",
        "hydra.sweep.dir=multirun/first",
    )
    second = start_sweep(
        store.folder,
        "seed=range(100,106)",
        "epochs=3",
        "tracking.log_step_loss=false",
        "hydra.sweep.dir=multirun/second",
    )
    outputs = [sweep.communicate(timeout=300)[0] for sweep in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert not any("database is locked" in out for out in outputs)
    runs = store.runs()
    parents = [r for r in runs if r.data.tags.get("gdexp.kind") == "sweep"]
    assert len(parents) == 2
    for parent in parents:
        seeds = {
            int(r.data.params["seed"])
            for r in runs
            if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        }
        assert seeds in ({*range(0, 8)}, {*range(100, 106)})
        assert len(seeds) == int(parent.data.tags["n_runs"])


def test_a_second_sweep_in_a_running_sweeps_folder_is_refused_before_any_run(store):
    # Hydra names sweep folders by the second: two sweeps started in the same second share one.
    shared = "hydra.sweep.dir=multirun/shared"
    first = start_sweep(store.folder, *SLOW_GRID, shared)
    wait_for(first, "epoch 100")  # the first sweep holds the folder, a run in flight
    second = subprocess.run(
        [sys.executable, "-m", "gdexp", "-m", "seed=100,101", "epochs=3", shared],
        cwd=store.folder, env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    assert second.returncode == 1
    assert "Another sweep is running in" in second.stderr
    assert "hydra.sweep.dir=" in second.stderr and "Traceback" not in second.stderr
    seeds = {r.data.params.get("seed") for r in store.runs()}
    assert not seeds & {"100", "101"}  # the refused sweep created no run
    assert len([r for r in store.runs() if r.data.tags.get("gdexp.kind") == "sweep"]) == 1
    # Once the first sweep has ended, the folder is free again.
    again = subprocess.run(
        [sys.executable, "-m", "gdexp", "-m", "seed=100,101", "epochs=3", shared],
        cwd=store.folder, env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]


# Runs of the large parallel sweeps: 120 in CI, 500 by hand (GDEXP_PARALLEL_RUNS=500).
PARALLEL_RUNS = int(os.environ.get("GDEXP_PARALLEL_RUNS", "120"))


@pytest.mark.slow
def test_a_large_parallel_sweep_loses_no_run_and_no_point(gdexp_cli, store):
    from gdexp.analysis import load_histories, load_runs

    done = gdexp_cli(
        "-m", f"seed=range(0,{PARALLEL_RUNS // 2})", "method=bgd,sgd", "epochs=5",
        "tracking.log_step_loss=false", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "database is locked" not in done.stdout + done.stderr
    # What MLflow received (read from the runs), and the sweep's table agrees with it.
    runs = load_runs(sweep="latest", tracking_uri=store.uri, source="runs")
    assert len(runs) == PARALLEL_RUNS and set(runs["status"]) == {"FINISHED"}
    histories = load_histories(runs, keys=("loss", "w", "b"), source="runs")
    assert len(histories) == PARALLEL_RUNS * 5 * 3
    assert histories.groupby(["run_id", "key"]).size().eq(5).all()
    tabled = load_runs(sweep="latest", tracking_uri=store.uri, source="table")
    pd.testing.assert_frame_equal(tabled, runs)
    pd.testing.assert_frame_equal(load_histories(tabled, keys=("loss", "w", "b")), histories)


def finished_children(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gdexp")
    return [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.info.status == "FINISHED" and "mlflow.parentRunId" in r.data.tags
    ]


def server_on(folder: Path, port: int):
    """`mlflow server` over a SQLite store in `folder` on a given port, so it can come back at
    the same address with the same store."""
    from servers import running_mlflow_server

    return running_mlflow_server(f"sqlite:///{folder}/server.db", folder, workers=1, port=port)


@pytest.mark.slow
def test_a_server_that_goes_away_fails_runs_cleanly_and_resume_completes(tmp_path):
    from mlflow.tracking import MlflowClient
    from servers import free_port

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    grid = ("method=sgd", "seed=range(0,5)", "epochs=150", f"tracking.uri={uri}",
            "hydra.verbose=gdexp.epochs",
            "tracking.retry_seconds=3", "tracking.log_step_loss=false")  # fmt: skip
    with server_on(tmp_path / "server", port) as server:
        sweep = start_sweep(tmp_path, *grid)
        wait_for(sweep, "epoch 100", count=3)  # two runs logged, the third in flight
        server.stop()  # the server goes away and does not come back in time
        output, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 1
    assert "Traceback" not in output
    assert "runs failed" in output and "Run the same command again" in output
    assert "Cannot reach the MLflow tracking server" in output, output[-3000:]

    with server_on(tmp_path / "server", port):  # back: same address, same store
        before = finished_children(uri)
        assert len(before) == 2  # what was logged before the outage is intact
        for run in before:
            assert len(MlflowClient(uri).get_metric_history(run.info.run_id, "loss")) == 150
        resumed = start_sweep(tmp_path, *grid)
        output, _ = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, output
        assert "Sweep of 5 runs; resuming: 2 already FINISHED" in output
        seeds = sorted(int(r.data.params["seed"]) for r in finished_children(uri))
        assert seeds == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_jobs_wait_out_a_short_server_restart(tmp_path):
    from servers import free_port

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    grid = ("method=sgd", "seed=range(0,4)", "epochs=150", f"tracking.uri={uri}",
            "hydra.verbose=gdexp.epochs",
            "tracking.retry_seconds=60", "tracking.log_step_loss=false")  # fmt: skip
    with server_on(tmp_path / "server", port) as server:
        sweep = start_sweep(tmp_path, *grid)
        wait_for(sweep, "epoch 100", count=2)
        server.stop()
    with server_on(tmp_path / "server", port):  # back within the retry budget
        output, _ = sweep.communicate(timeout=300)
        assert sweep.returncode == 0, output
        assert len(finished_children(uri)) == 4
        assert "resuming" not in output


@pytest.mark.slow
def test_a_large_parallel_sweep_through_a_server_loses_no_run_and_no_point(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from gdexp.analysis import load_histories, load_runs

    done = subprocess.run(
        [sys.executable, "-m", "gdexp", "-m", f"seed=range(0,{PARALLEL_RUNS // 2})",
         "method=bgd,sgd", "epochs=5",
         "tracking.log_step_loss=false", "tracking.experiment=parallel",
         f"tracking.uri={mlflow_server.url}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "database is locked" not in done.stdout + done.stderr
    # What the server received (read from the runs), and the sweep's table agrees with it.
    uri = mlflow_server.url
    runs = load_runs("parallel", sweep="latest", tracking_uri=uri, source="runs")
    assert len(runs) == PARALLEL_RUNS and set(runs["status"]) == {"FINISHED"}
    histories = load_histories(runs, keys=("loss", "w", "b"), tracking_uri=uri, source="runs")
    assert len(histories) == PARALLEL_RUNS * 5 * 3
    assert histories.groupby(["run_id", "key"]).size().eq(5).all()
    tabled = load_runs("parallel", sweep="latest", tracking_uri=uri, source="table")
    pd.testing.assert_frame_equal(tabled, runs)
    tabled_histories = load_histories(tabled, keys=("loss", "w", "b"), tracking_uri=uri)
    pd.testing.assert_frame_equal(tabled_histories, histories)
    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("parallel")
    assert (
        len(client.search_runs([experiment.experiment_id], max_results=1000)) == PARALLEL_RUNS + 1
    )


def test_a_sweep_rerun_after_a_code_change_refuses_until_started_afresh(store, tmp_path):
    import shutil

    project = tmp_path / "project"
    for part in ("gdexp", "conf", "sweeps", "hydra_plugins"):
        shutil.copytree(REPO / part, project / part, symlinks=True)

    def sweep(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "gdexp", "-m", "seed=0,1", "epochs=2", *extra],
            cwd=store.folder, env=clean_env(PYTHONPATH=str(project)),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    first = sweep()
    assert first.returncode == 0, first.stderr
    [run] = children(store)[:1]
    assert run.data.tags["gdexp.code"] != "unknown"
    train = project / "gdexp" / "train.py"
    train.write_text(train.read_text() + "\n# an edit that could change the numbers\n")

    again = sweep()
    assert again.returncode != 0
    assert "Traceback" not in again.stderr
    [line] = [line for line in again.stderr.splitlines() if "code" in line]
    old, new = run.data.tags["gdexp.code"], line.split("the code is now ")[1].split(",")[0]
    assert old in line and new != old and "tracking.resume=false" in line
    assert len(children(store)) == 2  # nothing ran

    fresh = sweep("tracking.resume=false")
    assert fresh.returncode == 0, fresh.stderr
    kids = children(store)
    assert len(kids) == 4 and {k.data.tags["gdexp.code"] for k in kids} == {old, new}
