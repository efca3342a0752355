"""End to end: `python -m gdexp` as real subprocesses into a real SQLite MLflow store."""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, Store

PARAMS = {
    "method.name", "method.batch_size", "method.shuffle", "step_size", "epochs", "seed", "dtype",
    "convergence_tolerance", "data.n_points", "data.x_start", "data.x_step", "data.slope",
    "data.intercept", "data.noise_std", "init.w", "init.b", "tracking.uri", "tracking.experiment",
    "tracking.enabled", "tracking.log_step_loss", "tracking.resume", "tracking.retry_seconds",
}  # fmt: skip


def history(store: Store, run_id: str, key: str) -> list[float]:
    points = store.client.get_metric_history(run_id, key)
    return [p.value for p in sorted(points, key=lambda p: p.step)]


def test_default_run_is_the_reference_bgd(gdexp_cli, store):
    done = gdexp_cli()
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert output.count("epoch ") == 20  # one log line per epoch
    assert "workflowType=machine_learning" in output

    [run] = store.runs()
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "bgd lr=0.1 seed=0"
    assert "mlflow.parentRunId" not in run.data.tags  # a single run is a top-level run
    assert set(run.data.params) == PARAMS
    assert run.data.params["method.name"] == "bgd"
    assert run.data.params["data.slope"] == "-5.0"
    assert run.data.metrics["step_size"] == 0.1
    loss = history(store, run.info.run_id, "loss")
    assert len(loss) == 20 and 550 < loss[0] < 650 and 0.2 < loss[-1] < 0.3
    assert len(history(store, run.info.run_id, "w")) == 20
    assert run.data.metrics["final_w"] == pytest.approx(-5.0, abs=0.02)
    assert -0.35 < run.data.metrics["final_b"] < -0.2
    assert 0 < run.data.metrics["optimal_loss"] < run.data.metrics["final_loss"]
    assert run.data.tags["outcome"] == "converged"
    assert "batch GD" in run.data.tags["mlflow.note.content"]
    config = store.client.download_artifacts(run.info.run_id, "config.yaml", str(store.folder))
    assert "step_size: 0.1" in Path(config).read_text()


def test_sgd_explodes_with_every_logged_value_finite(gdexp_cli, store):
    done = gdexp_cli("method=sgd", "step_size=0.1")
    assert done.returncode == 0, done.stderr
    [run] = store.runs()
    assert run.data.metrics["final_loss"] > 1e10
    assert run.data.tags["outcome"] == "diverged"
    assert run.data.tags["overrides"] == "method=sgd step_size=0.1"
    for key in ("loss", "w", "b", "step_loss"):
        values = history(store, run.info.run_id, key)
        assert all(math.isfinite(v) and abs(v) < sys.float_info.max for v in values), key
    assert len(history(store, run.info.run_id, "step_loss")) == 2000


def test_a_run_that_turns_non_finite_stops_and_logs_no_inf(gdexp_cli, store):
    done = gdexp_cli("step_size=1.0", "epochs=100")
    assert done.returncode == 0, done.stderr
    [run] = store.runs()
    assert run.data.tags["outcome"] == "diverged"
    diverged_at = run.data.metrics["diverged_at_epoch"]
    assert 0 < diverged_at < 100
    assert "final_loss" not in run.data.metrics  # it was inf: left out, not stored as 1.8e308
    loss = history(store, run.info.run_id, "loss")
    assert len(loss) == diverged_at  # the epoch whose loss overflowed is not logged
    assert all(math.isfinite(v) and abs(v) < sys.float_info.max for v in loss)


def test_the_18_run_grid_nests_under_one_parent(gdexp_cli, store):
    done = gdexp_cli("-m", "method=bgd,sgd", "step_size=0.01,0.05,0.1", "seed=0,1,2")
    assert done.returncode == 0, done.stderr
    runs = store.runs()
    parents = [r for r in runs if r.data.tags.get("gdexp.kind") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 18 and len(runs) == 19
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["command"].startswith("python -m gdexp -m method=bgd,sgd")
    assert parent.data.tags["grid.step_size"] == "0.01,0.05,0.1"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    combos = {
        (c.data.params["method.name"], c.data.params["step_size"], c.data.params["seed"])
        for c in children
    }
    assert len(combos) == 18
    for child in children:
        assert child.info.status == "FINISHED"
        assert set(child.data.params) == PARAMS
        assert len(history(store, child.info.run_id, "loss")) == 20
        steps = len(history(store, child.info.run_id, "step_loss"))
        assert steps == (2000 if child.data.params["method.name"] == "sgd" else 20)
    outcomes = [int(parent.data.tags[f"runs_{o}"]) for o in ("converged", "converging", "diverged")]
    assert sum(outcomes) == 18


def test_same_seed_same_trajectory_in_two_processes(gdexp_cli, store):
    for seed in (3, 3, 4):
        assert gdexp_cli("method=minibatch", f"seed={seed}", "epochs=5").returncode == 0
    runs = sorted(store.runs(), key=lambda r: r.info.start_time)
    first, again, other = (history(store, r.info.run_id, "step_loss") for r in runs)
    assert first == again
    assert first != other


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["step_size=0"], "step_size=0"),
        (["step_size=-0.1"], "step_size=-0.1"),
        (["step_size=nan"], "step_size=nan"),
        (["epochs=0"], "epochs=0"),
        (["method=sgd", "method.batch_size=0"], "method.batch_size=0"),
        (["method=adam"], "Could not find 'method/adam'"),
        (["stepsize=0.1"], "Key 'stepsize' not in 'RunConfig'"),
        (["epochs=1.5"], "Value '1.5' of type 'float' could not be converted to Integer"),
        (["-m", "step_size=0.1,-1", "seed=0,1"], "step_size=-1"),  # one bad value in a grid
        (["-m", "method=bgd,adam"], "Could not find 'method/adam'"),
    ],
)
def test_bad_input_fails_cleanly_and_creates_no_run(gdexp_cli, store, args, named):
    done = gdexp_cli(*args)
    assert done.returncode != 0
    assert named in done.stderr
    assert "Traceback" not in done.stderr
    assert store.runs() == []


def test_a_job_that_raises_is_failed_while_the_others_finish(store, gdexp_cli):
    # A wrapper around gdexp's own entry point whose training raises for seed 1: the failure
    # happens inside a real job of a real multirun.
    script = store.folder / "flaky_gdexp.py"
    script.write_text(
        textwrap.dedent(
            """
            import gdexp.run as run
            from gdexp.__main__ import main

            real_train = run.train

            def flaky_train(cfg, data, on_epoch=None):
                if cfg.seed == 1:
                    raise RuntimeError("injected failure for seed 1")
                return real_train(cfg, data, on_epoch)

            run.train = flaky_train
            main()
            """
        )
    )
    import subprocess
    import sys

    from conftest import clean_env

    done = subprocess.run(
        [sys.executable, str(script), "-m", "seed=0,1,2"],
        cwd=store.folder, env=clean_env(PYTHONPATH=str(REPO)), capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode != 0
    assert "1 of 3 runs failed" in done.stderr
    runs = store.runs()
    children = {r.data.params["seed"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert set(children) == {"0", "1", "2"}
    assert children["1"].info.status == "FAILED"
    assert "injected failure for seed 1" in children["1"].data.tags["error"]
    assert (
        children["1"].data.params["method.name"] == "bgd"
    )  # its config was logged before it failed
    for seed in ("0", "2"):
        assert children[seed].info.status == "FINISHED"
        assert len(history(store, children[seed].info.run_id, "loss")) == 20
    [parent] = [r for r in runs if r.data.tags.get("gdexp.kind") == "sweep"]
    assert parent.info.status == "FAILED" and parent.data.tags["failed_runs"] == "1"

    # Resuming with the real gdexp runs only the failed job again, under the same parent.
    resumed = gdexp_cli("-m", "seed=0,1,2")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming: 2 of 3 runs already FINISHED" in resumed.stdout
    rerun = [
        r for r in store.runs() if r.data.params.get("seed") == "1" and r.info.status == "FINISHED"
    ]
    assert len(rerun) == 1
    assert rerun[0].data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_tutorial_sweep_file_runs_bgd_and_sgd_over_five_seeds(gdexp_cli, store):
    done = gdexp_cli("-m", "+sweeps=tutorial", "tracking.log_step_loss=false")
    assert done.returncode == 0, done.stderr
    children = [r for r in store.runs() if "mlflow.parentRunId" in r.data.tags]
    grid = sorted((c.data.params["method.name"], c.data.params["seed"]) for c in children)
    assert grid == sorted((m, str(s)) for m in ("bgd", "sgd") for s in range(5))
    assert {c.data.params["step_size"] for c in children} == {"0.1"}
    outcome = {(c.data.params["method.name"], c.data.tags["outcome"]) for c in children}
    assert outcome == {("bgd", "converged"), ("sgd", "diverged")}


@pytest.mark.slow
def test_step_sizes_sweep_file_covers_the_log_grid(gdexp_cli, store):
    done = gdexp_cli("-m", "+sweeps=step_sizes", "epochs=2", "tracking.log_step_loss=false")
    assert done.returncode == 0, done.stderr
    children = [r for r in store.runs() if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 195
    sizes = sorted({float(c.data.params["step_size"]) for c in children})
    assert sizes[0] == 1e-4 and sizes[-1] == 1.0 and len(sizes) == 13
    assert {c.data.params["method.name"] for c in children} == {"bgd", "sgd", "minibatch"}
