"""The tracking seam: what reaches MLflow, in how many calls, and what never does."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from gdexp.config import MethodConfig, RunConfig
from gdexp.record import finite_metrics, flatten
from gdexp.run import run_experiment
from gdexp.store import Destination, Tracker, resolve_tracking_uri

CLIENT_CALLS = ("create_run", "log_batch", "log_metric", "log_param", "set_tag", "log_text",
                "log_artifact", "log_artifacts", "set_terminated")  # fmt: skip


@pytest.fixture
def client_calls(monkeypatch) -> Counter:
    """Counts the calls gdexp makes on MlflowClient; each call still goes to the real store."""
    calls: Counter = Counter()
    for name in CLIENT_CALLS:
        real = getattr(MlflowClient, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, spy)
    return calls


def test_a_1000_step_sgd_run_logs_its_history_in_a_handful_of_calls(store, client_calls):
    cfg = OmegaConf.structured(RunConfig(method=MethodConfig(name="sgd", batch_size=1), epochs=10))
    summary = run_experiment(cfg, destination=Destination(Tracker(store.uri, "gdexp")))
    assert client_calls["log_metric"] == 0 and client_calls["log_param"] == 0
    assert sum(client_calls.values()) <= 8, client_calls
    history = store.client.get_metric_history(summary.run_id, "step_loss")
    assert len(history) == 1000  # all of it arrived


def test_a_run_is_three_calls_to_the_store(store, client_calls):
    # Created with its tags; config and results in one batch; ended. config.yaml goes straight
    # to the local artifact folder.
    tracker = Tracker(store.uri, "gdexp")
    client_calls.clear()
    summary = run_experiment(
        OmegaConf.structured(RunConfig(method=MethodConfig(name="bgd"))),
        destination=Destination(tracker),
    )
    assert client_calls == Counter(create_run=1, log_batch=1, set_terminated=1)
    run = store.client.get_run(summary.run_id)
    assert run.data.params["step_size"] == "0.1" and "final_loss" in run.data.metrics
    assert "config.yaml" in [a.path for a in store.client.list_artifacts(summary.run_id)]


def test_a_run_that_fails_in_training_still_shows_its_config(store, monkeypatch):
    import gdexp.run

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the update rule")

    monkeypatch.setattr(gdexp.run, "train", broken)
    cfg = OmegaConf.structured(RunConfig(method=MethodConfig(name="bgd")))
    with pytest.raises(RuntimeError):
        run_experiment(cfg, destination=Destination(Tracker(store.uri, "gdexp")))
    [run] = store.runs()
    assert run.info.status == "FAILED" and run.data.params["step_size"] == "0.1"


def test_non_finite_values_are_left_out_not_clamped():
    metrics = finite_metrics("loss", [1.0, math.inf, -math.inf, math.nan, 2.0])
    assert [(m.step, m.value) for m in metrics] == [(0, 1.0), (4, 2.0)]


def test_history_points_are_stamped_across_the_time_they_were_computed_in():
    # One shared timestamp collapses MLflow's time-axis chart to a vertical line; stamps past
    # the span would fall after the run ended.
    metrics = finite_metrics("loss", [4.0, 3.0, 2.0, 1.0, 0.5], span=(1_000, 1_400))
    assert [(m.step, m.timestamp) for m in metrics] == [
        (0, 1_000), (1, 1_100), (2, 1_200), (3, 1_300), (4, 1_400),
    ]  # fmt: skip
    later = finite_metrics("w", [1.0, 2.0], first_step=1, span=(5, 6))
    assert [(m.step, m.timestamp) for m in later] == [(1, 5), (2, 6)]


@pytest.mark.parametrize("launcher", ["basic", "batched"])
def test_every_history_point_is_stamped_inside_its_runs_lifetime(gdexp_cli, store, launcher):
    done = gdexp_cli(
        "-m", f"hydra/launcher={launcher}", "method=sgd,bgd", "seed=0,1", "epochs=30"
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    children = [r for r in store.runs() if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4
    for run in children:
        start, end = run.info.start_time, run.info.end_time
        for key in ("loss", "w", "b", "step_loss", "final_loss"):
            stamps = [m.timestamp for m in store.client.get_metric_history(run.info.run_id, key)]
            assert stamps, key
            assert start <= min(stamps) and max(stamps) <= end, (key, start, end, stamps[-1])


def test_config_is_flattened_with_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": 2}) == {"a.b": 1, "a.c.d": None, "e": 2}


def test_tracking_uri_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path}/sub/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5005")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5005"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    # Relative to the launch folder when given (a job that Hydra moved into its own folder).
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None, "/launch") == "sqlite:////launch/mlflow.db"


def test_artifacts_live_beside_the_sqlite_store_not_in_the_working_folder(
    store, tmp_path_factory, monkeypatch
):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    cfg = OmegaConf.structured(RunConfig(method=MethodConfig(name="bgd"), epochs=2))
    summary = run_experiment(cfg, destination=Destination(Tracker(store.uri, "gdexp")))
    written = store.folder / "mlruns" / "gdexp" / summary.run_id / "artifacts" / "config.yaml"
    assert "step_size: 0.1" in written.read_text()
    assert not (elsewhere / "mlruns").exists()
    [listed] = store.client.list_artifacts(summary.run_id)
    assert listed.path == "config.yaml"


@pytest.mark.parametrize("method", [("bgd", None), ("sgd", 1), ("minibatch", 10)])
def test_the_config_artifact_is_omegaconfs_own_yaml(method):
    from gdexp.record import config_yaml

    cfg = OmegaConf.structured(
        RunConfig(method=MethodConfig(name=method[0], batch_size=method[1]), dtype="float64")
    )
    assert config_yaml(cfg) == OmegaConf.to_yaml(cfg, resolve=True)


def test_a_sqlite_store_is_put_in_write_ahead_log_mode(store):
    import sqlite3

    Tracker(store.uri, "gdexp")  # a new store
    with sqlite3.connect(store.folder / "mlflow.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store.client.get_experiment_by_name("gdexp") is not None  # MLflow reads it as ever
