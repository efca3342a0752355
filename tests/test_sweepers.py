"""Any Hydra sweeper makes one tracked sweep: Hydra's basic sweeper and Optuna (real studies),
and with hydra.job.chdir=true every run still lands in <launch folder>/mlflow.db."""

from __future__ import annotations

import math
import re
from urllib.parse import unquote

import pytest

from gdexp import names


def sweep_runs(store) -> tuple[object, list]:
    runs = store.runs()
    parents = [r for r in runs if r.data.tags.get(names.KIND_TAG) == names.SWEEP_KIND]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    [parent] = parents
    children = [r for r in runs if r.data.tags.get(names.PARENT_TAG) == parent.info.run_id]
    assert len(runs) == len(children) + 1  # nothing landed outside the sweep
    return parent, children


def test_basic_sweeper_jobs_are_children_of_one_parent(gdexp_cli, store):
    done = gdexp_cli("-m", "hydra/sweeper=basic", "method=bgd,sgd", "seed=0,1", "epochs=3")
    assert done.returncode == 0, done.stderr
    parent, children = sweep_runs(store)
    assert len(children) == 4 and parent.info.status == "FINISHED"
    assert {(c.data.params["method.name"], c.data.params["seed"]) for c in children} == {
        ("bgd", "0"), ("bgd", "1"), ("sgd", "0"), ("sgd", "1"),
    }  # fmt: skip
    assert parent.data.tags[names.SWEEPER_TAG] == "BasicSweeper"
    assert parent.data.tags[names.N_RUNS_TAG] == "4"
    assert parent.data.tags[names.NOTE_TAG].startswith("4 runs: ")
    check_best_names_every_swept_key(parent, children, done.stdout)


@pytest.mark.parametrize("sweeper", ["gdexp", "basic"])
def test_the_best_run_names_its_method(gdexp_cli, store, sweeper):
    # `method` is a config group: its runs record it as the param method.name.
    done = gdexp_cli(
        "-m", f"hydra/sweeper={sweeper}", "method=sgd,bgd", "step_size=0.05,0.1", "epochs=5"
    )
    assert done.returncode == 0, done.stderr
    parent, children = sweep_runs(store)
    check_best_names_every_swept_key(parent, children, done.stdout if sweeper == "basic" else "")


def check_best_names_every_swept_key(parent, children, output: str) -> None:
    best = min(children, key=lambda run: run.data.metrics.get("final_loss", math.inf))
    swept = [tag.removeprefix(names.GRID_TAG_PREFIX) for tag in parent.data.tags
             if tag.startswith(names.GRID_TAG_PREFIX)] or ["method", "seed"]  # fmt: skip
    params = best.data.params
    assert parent.data.tags[names.BEST_RUN_TAG] == best.info.run_id
    for key in swept:
        value = params.get(key, params.get(f"{key}.name"))
        assert value is not None and parent.data.tags[f"best.{key}"] == value, key
    if output:
        chosen = ", ".join(f"{key}={params.get(key, params.get(f'{key}.name'))}" for key in swept)
        assert f"Best run: {chosen}," in output and "None" not in output, output


@pytest.mark.slow
def test_an_optuna_study_is_one_sweep_with_its_best_trial_on_the_parent(gdexp_cli, store):
    done = gdexp_cli(
        "-m", "hydra/sweeper=optuna", "+sweeps=best_step_size", "method=sgd",
        "hydra.sweeper.n_trials=8", "tracking.log_step_loss=false",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    parent, children = sweep_runs(store)
    assert len(children) == 8 and all(c.info.status == "FINISHED" for c in children)
    assert parent.info.status == "FINISHED"

    def final(run) -> float:
        return run.data.metrics.get("final_loss", math.inf)  # a diverged run logs no final_loss

    # The parent names the trial with the lowest final loss; a diverged trial ranks last.
    best = min(children, key=final)
    assert parent.data.tags[names.BEST_RUN_TAG] == best.info.run_id
    assert parent.data.tags["best.step_size"] == best.data.params["step_size"]
    assert float(parent.data.tags["best.final_loss"]) == pytest.approx(final(best), rel=1e-5)
    diverged = [c for c in children if c.data.tags[names.OUTCOME_TAG] == "diverged"]
    assert all(final(d) > final(best) for d in diverged)
    # The closing lines name the best trial and its curves' address, not a row per trial.
    out = done.stdout
    assert "Sweep done: 8 trials (" in out, out
    assert f"Best run: step_size={best.data.params['step_size']}, final_loss " in out
    assert f"(run {best.info.run_id})" in out
    curves = re.search(r"Loss curves of the best (\d+) trials: (\S+)", out)
    assert curves and int(curves[1]) == sum(c.info.status == "FINISHED" for c in children)
    assert best.info.run_id in unquote(curves[2]) and "/#/metric/loss?" in curves[2]
    assert "step size" not in out  # no outcome table of step sizes × methods
    # Optuna itself agrees on the best trial (it was handed the same objective).
    optuna_best = [line for line in done.stdout.splitlines() if "Best value:" in line]
    assert optuna_best and float(optuna_best[0].split("Best value:")[1]) == pytest.approx(
        final(best), rel=1e-6
    )


def test_a_diverged_run_returns_an_objective_worse_than_any_finite_one(gdexp_cli, store):
    # What an optimising sweeper is handed: a float for every run, +inf for a diverged one,
    # never an exception (a dict return made Optuna fail every trial).
    done = gdexp_cli(
        "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.seed=1",
        "method=sgd", "step_size=choice(1.0,0.01)", "epochs=3", "tracking.log_step_loss=false",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _, children = sweep_runs(store)
    by_step = {c.data.params["step_size"]: c for c in children}
    assert set(by_step) == {"1.0", "0.01"}, "the seeded sampler tried both"
    assert by_step["1.0"].data.tags[names.OUTCOME_TAG] == "diverged"
    [best_line] = [line for line in done.stdout.splitlines() if "Best value:" in line]
    best = float(best_line.split("Best value:")[1])
    assert math.isfinite(best)
    assert best == pytest.approx(by_step["0.01"].data.metrics["final_loss"], rel=1e-6)


@pytest.mark.parametrize(
    "args",
    [
        ("hydra.job.chdir=true", "epochs=2"),
        ("-m", "hydra.job.chdir=true", "seed=0,1", "epochs=2"),
        ("-m", "hydra/sweeper=basic", "hydra.job.chdir=true", "seed=0,1", "epochs=2"),
    ],
    ids=["single", "gdexp-sweep", "basic-sweep"],
)
def test_one_store_in_the_launch_folder_when_jobs_change_directory(gdexp_cli, store, args):
    done = gdexp_cli(*args)
    assert done.returncode == 0, done.stderr
    stray = [p for p in store.folder.rglob("mlflow.db") if p != store.folder / "mlflow.db"]
    assert stray == [], stray
    expected = 1 if args[0] != "-m" else 3  # one run, or two runs and their parent
    assert len(store.runs()) == expected
