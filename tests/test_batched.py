"""Batched sweeps: one process, one tensor computation, the same runs as the per-job path."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, Store
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from gdexp.config import register_configs
from hydra_plugins.gdexp_plugins._job_configs import JobConfigs

register_configs()

GRID = [
    "method=bgd,sgd,minibatch",
    "step_size=0.001,0.1,1.5",
    "seed=0,1",
    "dtype=float32,float64",
    "data.noise_std=0,0.4",
    "epochs=8",
]  # 72 runs: converged, converging and diverged (including inf/NaN) in both dtypes


def test_job_configs_equal_hydras_own_composition():
    jobs = [
        [f"method={m}", f"step_size={s}", "seed=3", "+sweeps=tutorial", "data.noise_std=0"]
        for m in ("bgd", "sgd", "minibatch")
        for s in ("0.1", "1e-4")
    ] + [["method=minibatch", "method.batch_size=7", "init={w: 1.0, b: 2.0}"]]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", [], run_mode=RunMode.MULTIRUN)
        composer = JobConfigs(loader, master)
        for job in jobs:
            fast = composer.compose(job)
            hydra_own = loader.load_sweep_config(master, job)
            with open_dict(hydra_own):
                del hydra_own["hydra"]
            assert OmegaConf.to_container(fast) == OmegaConf.to_container(hydra_own), job
            assert OmegaConf.get_type(fast.method) is OmegaConf.get_type(hydra_own.method)


def children(store):
    return {
        r.data.tags["overrides"]: r for r in store.runs() if "mlflow.parentRunId" in r.data.tags
    }


def histories(store: Store, run_id: str) -> dict:
    return {
        key: [
            (m.step, m.value)
            for m in sorted(store.client.get_metric_history(run_id, key), key=lambda m: m.step)
        ]
        for key in ("loss", "w", "b", "step_loss")
    }


def assert_same_runs(store: Store, other: Store, n_runs: int) -> None:
    """The two stores hold the same sweep: for each job, the same status, name, params, metrics,
    tags (but where the command ran), every history point and config.yaml, bit for bit."""
    expected, actual = children(store), children(other)
    assert len(expected) == n_runs and set(actual) == set(expected)
    outcomes = {r.data.tags["outcome"] for r in expected.values()}
    assert {"converged", "diverged"} <= outcomes and len(outcomes) >= 3  # a mixed grid
    assert any("diverged_at_epoch" in r.data.metrics for r in expected.values())

    def comparable(tags: dict) -> dict:
        return {
            k: v
            for k, v in tags.items()
            if (not k.startswith("mlflow.") or k == "mlflow.note.content") and k != "command"
        }

    for overrides, want in expected.items():
        got = actual[overrides]
        assert got.info.status == want.info.status == "FINISHED"
        assert got.info.run_name == want.info.run_name
        assert got.data.params == want.data.params
        assert got.data.metrics == want.data.metrics  # latest values: finals, step_size, ...
        assert comparable(got.data.tags) == comparable(want.data.tags)
        assert histories(other, got.info.run_id) == histories(store, want.info.run_id)
        configs = [
            Path(s.client.download_artifacts(r.info.run_id, "config.yaml", str(s.folder)))
            for s, r in ((other, got), (store, want))
        ]
        assert configs[0].read_text() == configs[1].read_text()


@pytest.mark.slow
def test_batched_runs_equal_per_job_runs(gdexp_cli, store, tmp_path_factory):
    per_job = gdexp_cli("-m", *GRID)
    assert per_job.returncode == 0, per_job.stderr
    other = tmp_path_factory.mktemp("batched")  # same config, its own store
    batched = gdexp_cli("-m", *GRID, "hydra/launcher=batched", cwd=other)
    assert batched.returncode == 0, batched.stderr
    assert "Progress: 72/72 runs (100%)" in batched.stdout
    batched_store = Store(other, f"sqlite:///{other}/mlflow.db")

    assert_same_runs(store, batched_store, 72)


def test_batched_sweep_reports_progress_and_nests_runs(gdexp_cli, store):
    done = gdexp_cli(
        "-m", "method=bgd,sgd", "step_size=0.01,0.1", "seed=0,1,2", "tracking.log_step_loss=false",
        "hydra/launcher=batched",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Training 12 runs batched in one process" in done.stdout
    assert done.stdout.count("Progress: 12/12 runs (100%)") == 1 and "left" in done.stdout
    runs = store.runs()
    [parent] = [r for r in runs if r.data.tags.get("gdexp.kind") == "sweep"]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(kids) == 12 and len(runs) == 13
    assert all("step_loss" not in r.data.metrics for r in kids)  # epoch-level metrics only
    assert all(len(store.client.get_metric_history(r.info.run_id, "loss")) == 20 for r in kids)


def test_per_job_sweep_reports_progress(gdexp_cli, store):
    done = gdexp_cli("-m", "seed=0,1,2,3", "epochs=2", "tracking.log_step_loss=false")
    assert done.returncode == 0, done.stderr
    # One line per finished run, and progress (at most every hydra.sweeper.progress_seconds).
    for seed in range(4):
        assert done.stdout.count(f"bgd lr=0.1 seed={seed}: ") == 1
    assert done.stdout.count("Progress: 4/4 runs (100%)") == 1


def test_grid_jobs_are_hydras_basic_sweep_in_its_order():
    # grid_jobs uses Hydra's BasicSweeper.split_arguments (a private module): this pins its
    # order and its rule that a later value of a key replaces an earlier one.
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.gdexp_plugins._job_configs import grid_jobs

    parsed = OverridesParser.create().parse_overrides(
        ["seed=0,1", "method=bgd,sgd", "epochs=3", "seed=5,6"]
    )
    assert grid_jobs(parsed) == [
        ["seed=5", "method=bgd", "epochs=3"],
        ["seed=5", "method=sgd", "epochs=3"],
        ["seed=6", "method=bgd", "epochs=3"],
        ["seed=6", "method=sgd", "epochs=3"],
    ]
