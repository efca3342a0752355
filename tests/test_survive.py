"""Sweeps that survive: resume, interrupts, a store that is not there, provenance."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, clean_env
from servers import mlflow_server, postgres

__all__ = ["mlflow_server", "postgres"]  # session fixtures used below


def statuses(store) -> Counter:
    return Counter(r.info.status for r in store.runs())


def children(store) -> list:
    return [r for r in store.runs() if "mlflow.parentRunId" in r.data.tags]


def test_rerunning_a_sweep_skips_finished_runs_and_runs_the_rest(gdexp_cli, store):
    first = gdexp_cli("-m", "seed=0,1,2", "epochs=3")
    assert first.returncode == 0, first.stderr
    again = gdexp_cli("-m", "seed=0,1,2,3,4", "epochs=3")
    assert again.returncode == 0, again.stderr
    assert "Resuming: 3 of 5 runs already FINISHED" in again.stdout
    runs = children(store)
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2", "3", "4"]  # no repeats
    # The resumed sweep, analysed, is whole: its 2 new runs and the 3 it reused.
    from gdexp.analysis import load_runs

    resumed = load_runs(sweep="latest", tracking_uri=store.uri)
    assert sorted(resumed["seed"]) == [0, 1, 2, 3, 4]
    # The same command once more: nothing left to run, and the sweep keeps its parent run.
    third = gdexp_cli("-m", "seed=0,1,2,3,4", "epochs=3")
    assert "Resuming: 5 of 5 runs already FINISHED" in third.stdout
    parents = [r for r in store.runs() if r.data.tags.get("gdexp.kind") == "sweep"]
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    latest = max(parents, key=lambda r: r.info.start_time)
    assert latest.data.tags["skipped_runs"] == "5"
    listed = store.client.download_artifacts(
        latest.info.run_id, "sweep_runs.json", str(store.folder)
    )
    assert len(set(Path(listed).read_text().split('"')) & {r.info.run_id for r in runs}) == 5
    # A changed value is a different config: it runs.
    fourth = gdexp_cli("-m", "seed=0,1", "epochs=4")
    assert "Resuming" not in fourth.stdout
    assert len(children(store)) == 7
    # tracking.resume=false runs everything again.
    fresh = gdexp_cli("-m", "seed=0,1", "epochs=4", "tracking.resume=false")
    assert "Resuming" not in fresh.stdout
    assert len(children(store)) == 9


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


SLOW_GRID = ("method=sgd", "seed=range(0,6)", "epochs=150")  # ~1 s a run


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_sweep_leaves_no_run_running_and_resumes(store, how):
    sweep = start_sweep(store.folder, *SLOW_GRID)
    wait_for(sweep, "epoch 100", count=3)  # the third run is in flight
    sweep.send_signal(how)
    output, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 130
    assert "Interrupted: the runs in flight are marked KILLED" in output
    assert "Traceback" not in output
    count = statuses(store)
    assert count["RUNNING"] == 0
    assert count["KILLED"] == 2  # the parent and the run in flight
    assert count["FINISHED"] == 2

    resumed = start_sweep(store.folder, *SLOW_GRID)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "Resuming: 2 of 6 runs already FINISHED" in output
    finished = [r for r in children(store) if r.info.status == "FINISHED"]
    assert sorted(int(r.data.params["seed"]) for r in finished) == list(range(6))


def test_a_hard_killed_run_is_run_again_on_resume(store):
    sweep = start_sweep(store.folder, "method=sgd", "seed=0,1", "epochs=150")
    wait_for(sweep, "epoch 100", count=2)
    sweep.kill()  # SIGKILL: no cleanup at all
    sweep.wait(timeout=30)
    assert statuses(store)["RUNNING"] == 2  # the parent and the run in flight, left as they were
    resumed = start_sweep(store.folder, "method=sgd", "seed=0,1", "epochs=150")
    output, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, output
    assert "Resuming: 1 of 2 runs already FINISHED" in output
    done = Counter(r.data.params["seed"] for r in children(store) if r.info.status == "FINISHED")
    assert done == {"0": 1, "1": 1}


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
    assert f"Cannot use the MLflow store sqlite:///{blocker}/mlflow.db" in done.stderr
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
    first = start_sweep(store.folder, "seed=range(0,8)", "epochs=3", "tracking.log_step_loss=false")
    second = start_sweep(
        store.folder, "seed=range(100,106)", "epochs=3", "tracking.log_step_loss=false"
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


@pytest.mark.slow
def test_a_500_run_parallel_sweep_loses_no_run_and_no_point(gdexp_cli, store):
    from gdexp.analysis import load_histories, load_runs

    done = gdexp_cli(
        "-m", "seed=range(0,250)", "method=bgd,sgd", "epochs=5", "tracking.log_step_loss=false",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "database is locked" not in done.stdout + done.stderr
    runs = load_runs(sweep="latest", tracking_uri=store.uri)
    assert len(runs) == 500 and set(runs["status"]) == {"FINISHED"}
    histories = load_histories(runs, keys=("loss", "w", "b"))
    assert len(histories) == 500 * 5 * 3
    assert histories.groupby(["run_id", "key"]).size().eq(5).all()


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
        assert "Resuming: 2 of 5 runs already FINISHED" in output
        seeds = sorted(int(r.data.params["seed"]) for r in finished_children(uri))
        assert seeds == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_jobs_wait_out_a_short_server_restart(tmp_path):
    from servers import free_port

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    grid = ("method=sgd", "seed=range(0,4)", "epochs=150", f"tracking.uri={uri}",
            "tracking.retry_seconds=60", "tracking.log_step_loss=false")  # fmt: skip
    with server_on(tmp_path / "server", port) as server:
        sweep = start_sweep(tmp_path, *grid)
        wait_for(sweep, "epoch 100", count=2)
        server.stop()
    with server_on(tmp_path / "server", port):  # back within the retry budget
        output, _ = sweep.communicate(timeout=300)
        assert sweep.returncode == 0, output
        assert len(finished_children(uri)) == 4
        assert "Resuming" not in output


@pytest.mark.slow
def test_a_500_run_parallel_sweep_through_a_server_loses_no_run_and_no_point(
    mlflow_server, tmp_path
):
    from mlflow.tracking import MlflowClient

    from gdexp.analysis import load_histories, load_runs

    done = subprocess.run(
        [sys.executable, "-m", "gdexp", "-m", "seed=range(0,250)", "method=bgd,sgd", "epochs=5",
         "tracking.log_step_loss=false", "tracking.experiment=five_hundred",
         f"tracking.uri={mlflow_server.url}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "database is locked" not in done.stdout + done.stderr
    runs = load_runs("five_hundred", sweep="latest", tracking_uri=mlflow_server.url)
    assert len(runs) == 500 and set(runs["status"]) == {"FINISHED"}
    histories = load_histories(runs, keys=("loss", "w", "b"), tracking_uri=mlflow_server.url)
    assert len(histories) == 500 * 5 * 3
    assert histories.groupby(["run_id", "key"]).size().eq(5).all()
    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("five_hundred")
    assert len(client.search_runs([experiment.experiment_id], max_results=1000)) == 501
