"""Server mode: sweeps logged through a real `mlflow server` on a real PostgreSQL cluster.

The session's throw-away PostgreSQL cluster and `mlflow server` (tests/servers.py) take sweeps
on each launcher: joblib workers, the basic launcher (tracking URI from MLFLOW_TRACKING_URI) and
submitit processes. Every run and every metric point is counted through the server's REST API
and, independently, in PostgreSQL's own tables; each run's config.yaml artifact goes to the
server's artifact store and comes back through the server.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from servers import MlflowServer, Postgres
from test_launchers import EPOCHS, check_sweep, gdexp

pytestmark = pytest.mark.slow


# Metric points per run, by key, as the store must hold them.
PER_EPOCH = ("loss", "w", "b")


def points_in_postgres(postgres: Postgres, experiment_id: str, database: str = "mlflow") -> Counter:
    """(run id, metric key) -> number of points, read from MLflow's tables in PostgreSQL."""
    rows = postgres.query(
        database,
        "SELECT m.run_uuid, m.key, count(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid"
        " WHERE r.experiment_id = %s GROUP BY m.run_uuid, m.key",
        int(experiment_id),
    )
    return Counter({(run, key): n for run, key, n in rows})


def expected_points(children: list) -> Counter:
    """What each child must have logged: a point per epoch of loss, w and b, one per update of
    step_loss, one of each final scalar it reports."""
    expected: Counter = Counter()
    for child in children:
        run_id = child.info.run_id
        for key in PER_EPOCH:
            expected[run_id, key] = EPOCHS
        updates = {"bgd": 1, "sgd": 100, "minibatch": 10}[child.data.params["method.name"]]
        expected[run_id, "step_loss"] = updates * EPOCHS
        for key in set(child.data.metrics) - {*PER_EPOCH, "step_loss"}:
            expected[run_id, key] = 1
    return expected


def check_artifacts(server: MlflowServer, client: MlflowClient, children: list, into: Path):
    """Every child's config.yaml is in the server's artifact store (not in a local ./mlruns)
    and downloads through the server with the child's own config."""
    for child in children:
        run_id = child.info.run_id
        assert child.info.artifact_uri.startswith("mlflow-artifacts:/"), child.info.artifact_uri
        assert [a.path for a in client.list_artifacts(run_id)] == ["config.yaml"]
        stored = list(server.artifacts.glob(f"*/{run_id}/artifacts/config.yaml"))
        assert len(stored) == 1, run_id
        downloaded = Path(client.download_artifacts(run_id, "config.yaml", str(into)))
        text = downloaded.read_text()
        assert text == stored[0].read_text()
        assert f"name: {child.data.params['method.name']}" in text
        assert f"seed: {child.data.params['seed']}" in text
        downloaded.unlink()


def check_server_sweep(server, postgres, tmp_path, experiment, grid) -> list:
    client = MlflowClient(server.url)
    parent, children = check_sweep(client, experiment, grid)
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:/")
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    assert points_in_postgres(postgres, exp_id) == expected_points(children)
    check_artifacts(server, client, children, tmp_path / "downloads")
    # Nothing went to a local store instead.
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    return children


def test_joblib_sweep_through_the_server_loses_no_run_and_no_point(
    mlflow_server, postgres, tmp_path
):
    # Two workers log at once through the server; six of the twelve runs are SGD runs with
    # 2,000 step losses each.
    experiment = "server-joblib"
    done = gdexp(
        *("-m", "hydra/launcher=joblib", "hydra.verbose=true", "hydra.launcher.n_jobs=2"),
        *("method=bgd,sgd", "step_size=0.01,0.1", "seed=0,1,2"),
        f"tracking.uri={mlflow_server.url}",
        f"tracking.experiment={experiment}",
        cwd=tmp_path,
    )
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr
    grid = {"method.name": ["bgd", "sgd"], "step_size": ["0.01", "0.1"], "seed": ["0", "1", "2"]}
    children = check_server_sweep(mlflow_server, postgres, tmp_path, experiment, grid)
    assert sum(c.data.params["method.name"] == "sgd" for c in children) == 6


def test_basic_sweep_through_the_server_named_by_mlflow_tracking_uri(
    mlflow_server, postgres, tmp_path
):
    # No tracking.uri: the server comes from the environment, as a team would set it once.
    experiment = "server-basic"
    gdexp(
        *("-m", "method=bgd,minibatch", "seed=0,1"),
        f"tracking.experiment={experiment}",
        cwd=tmp_path,
        MLFLOW_TRACKING_URI=mlflow_server.url,
    )
    grid = {"method.name": ["bgd", "minibatch"], "seed": ["0", "1"]}
    check_server_sweep(mlflow_server, postgres, tmp_path, experiment, grid)


def test_submitit_sweep_through_the_server(mlflow_server, postgres, tmp_path):
    # Jobs in processes of their own (as on a cluster), pointed at the server by the sweeper.
    experiment = "server-submitit"
    gdexp(
        *("-m", "hydra/launcher=submitit_local", "method=bgd,sgd", "step_size=0.05"),
        f"tracking.uri={mlflow_server.url}",
        f"tracking.experiment={experiment}",
        cwd=tmp_path,
    )
    grid = {"method.name": ["bgd", "sgd"], "step_size": ["0.05"]}
    check_server_sweep(mlflow_server, postgres, tmp_path, experiment, grid)


def test_two_sweeps_started_together_on_a_new_postgres_database(postgres, tmp_path):
    # gdexp talking to PostgreSQL directly: both processes find an empty database and MLflow
    # creates its schema on first use; gdexp's advisory lock lets one do it while the other waits.
    import subprocess
    import sys

    from conftest import clean_env

    uri = postgres.create_database("fresh_for_two")
    # Their own sweep folders: started in the same second, they would share Hydra's default.
    grids = (
        ("seed=0,1,2", "method=bgd", "hydra.sweep.dir=multirun/bgd"),
        ("seed=0,1,2", "method=sgd", "hydra.sweep.dir=multirun/sgd"),
    )
    sweeps = [
        subprocess.Popen(
            [sys.executable, "-m", "gdexp", "-m", *grid, f"tracking.uri={uri}"],
            cwd=tmp_path,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for grid in grids
    ]
    outputs = [sweep.communicate(timeout=300)[0] for sweep in sweeps]
    assert [s.returncode for s in sweeps] == [0, 0], outputs
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gdexp")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("gdexp.kind") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 2 and len(children) == 6
    assert all(r.info.status == "FINISHED" for r in runs), [
        (r.info.run_name, r.info.status, r.data.tags.get("error")) for r in runs
    ]
    found = points_in_postgres(postgres, experiment.experiment_id, "fresh_for_two")
    assert found == expected_points(children)
