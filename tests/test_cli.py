"""End to end: `python -m gdexp` as real subprocesses into a real SQLite MLflow store."""

from __future__ import annotations

import math
import re
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, Store

PARAMS = {
    "method.name", "method.batch_size", "method.shuffle", "step_size", "epochs", "seed", "dtype",
    "convergence_tolerance", "objective", "data.n_points", "data.x_start", "data.x_step",
    "data.slope", "data.intercept", "data.noise_std", "init.w", "init.b", "tracking.uri",
    "tracking.experiment", "tracking.enabled", "tracking.log_step_loss", "tracking.resume",
    "tracking.retry_seconds", "tracking.record", "device",
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
    assert RESULT_LINE.search(done.stdout.splitlines()[-1])  # it ends with loss, w and b

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
    assert run.data.tags["outcome"] == "oscillating"  # at its epoch map's fixed point, ~1e14
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


RESULT_LINE = re.compile(r"(bgd|sgd|minibatch) lr=\S+ seed=\d+: \w+, final loss \S+, w \S+, b \S+$")


def test_the_18_run_grid_nests_under_one_parent(gdexp_cli, store):
    done = gdexp_cli("-m", "method=bgd,sgd", "step_size=0.01,0.05,0.1", "seed=0,1,2")
    assert done.returncode == 0, done.stderr
    # Quiet: the plan, one line per run, progress, the table and the UI address; no launcher
    # chatter, no epoch lines.
    lines = done.stdout.splitlines()
    assert sum(bool(RESULT_LINE.search(line)) for line in lines) == 18
    # Progress lines come every few seconds: a loaded machine prints more of them.
    assert len([line for line in lines if "Progress:" not in line]) <= 18 + 12, done.stdout
    assert "Sweep of 18 runs" in lines[0]
    assert "workflowType=machine_learning" in done.stdout
    for noise in ("Launching", " : method=", "epoch ", "hydra.job.env_set"):
        assert noise not in done.stdout + done.stderr, noise
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
    from gdexp.outcome import OUTCOMES

    outcomes = [int(parent.data.tags[f"runs_{o}"]) for o in OUTCOMES]
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
        (["method=adam"], "gdexp has no method 'adam'; the methods are bgd, minibatch, sgd"),
        (["stepsize=0.1"], "did you mean step_size=0.1?"),
        (["epochs=1.5"], "epochs is an int (a whole number), not 1.5"),
        (["dtype=float16"], "dtype is one of float32, float64"),
        (["-m", "step_size=0.1,-1", "seed=0,1"], "step_size=-1"),  # one bad value in a grid
        (["-m", "method=bgd,adam"], "gdexp has no method 'adam'"),
        (["step_size=0.01,0.1"], "add -m to sweep over them"),
        (["sweeps=tutorial"], "a predefined sweep is added with a plus: +sweeps=tutorial"),
        (["+sweeps=tutorial"], "add -m (python -m gdexp -m +sweeps=tutorial)"),
        (["+sweeps=tutorail"], "did you mean +sweeps=tutorial?"),
        (["+epochs=5"], "set it without the plus: epochs=5"),
        (["step_size=[1"], "step_size=[1: Hydra cannot read it"),
        (["-m", "step_size=interval(0.01,0.1)"], "add hydra/sweeper=optuna to search it"),
        (["-m", "+sweeps=best_step_size"], "searches a range: add hydra/sweeper=optuna"),
        (["-m", "--cfg", "job"], "--multirun and --cfg: choose one"),
        # Past the command-line check (an interpolation), refused by the composed config's.
        (["data.noise_std=0", "step_size=${data.noise_std}"], "step_size=0.0 is invalid"),
    ],
)
def test_bad_input_fails_in_one_line_and_creates_no_run(gdexp_cli, store, args, named):
    done = gdexp_cli(*args)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr and "HYDRA_FULL_ERROR" not in done.stderr
    assert not (store.folder / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("args", "meant"),
    [
        (["epoch=5"], "epochs=5"),
        (["+epoch=5"], "epochs=5"),
        (["-m", "epoch=5,6"], "epochs=5,6"),
        (["stepsize=0.1"], "step_size=0.1"),
        (["method.batchsize=3"], "method.batch_size=3"),
        (["batch_size=3"], "method.batch_size=3"),
        (["-m", "method=bgd,sdg"], "method=sgd"),
        (["-m", "+sweep=tutorial"], "+sweeps=tutorial"),
    ],
)
def test_a_misspelled_key_or_choice_gets_did_you_mean(gdexp_cli, store, args, meant):
    done = gdexp_cli(*args)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert f"did you mean {meant}?" in line
    assert not (store.folder / "mlflow.db").exists() and not (store.folder / "outputs").exists()


def test_a_wrong_type_names_the_field_its_type_and_the_value(gdexp_cli, store):
    done = gdexp_cli("seed=1.5")
    assert done.returncode == 2
    assert done.stderr == "seed=1.5: seed is an int (a whole number), not 1.5\n"
    assert not (store.folder / "mlflow.db").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--cfg", "job", "method=sgd", "method.batch_size=null", "hydra.job.chdir=true"],
        ["--cfg", "job", "tracking.uri=sqlite:///elsewhere/mlflow.db", "data={n_points:5}"],
        ["--cfg", "job", "step_size=${data.x_step}", "++epochs=3"],
        ["-cn", "config", "--cfg", "job", "dtype=float64"],
        ["-cp", str(REPO / "conf"), "-cn", "config", "--cfg", "job"],
        ["--info", "defaults"],
        ["--hydra-help"],
        ["-sc", "install=bash"],
    ],
)
def test_legitimate_command_lines_pass_the_check(gdexp_cli, args):
    done = gdexp_cli(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout and not done.stderr


@pytest.mark.parametrize(
    ("args", "runs"),
    [
        (["hydra.job.chdir=true", "epochs=2"], 1),
        (["-m", "hydra/launcher=batched", "seed=range(0,3)", "epochs=2"], 4),
        (["--multirun", "step_size=0.01,0.1", "init.w=0", "epochs=2",
          "hydra/hydra_logging=disabled"], 3),
        (["-m", "hydra.sweeper.max_batch_size=1", "method=glob(*)", "epochs=2"], 4),
        (["-m", "hydra/sweeper=optuna", "step_size=interval(0.001,0.2)",
          "hydra.sweeper.n_trials=2", "epochs=2"], 3),
    ],
)  # fmt: skip
def test_legitimate_runs_and_sweeps_run(gdexp_cli, store, args, runs):
    done = gdexp_cli(*args)
    assert done.returncode == 0, done.stderr
    assert len(store.runs()) == runs  # a sweep: its runs and their parent


def test_help_says_what_gdexp_is_with_keys_methods_sweeps_launchers_examples(gdexp_cli):
    done = gdexp_cli("--help")
    assert done.returncode == 0 and not done.stderr
    text = done.stdout
    assert text.startswith("gdexp: gradient descent on y = w·x + b")
    rows = {line.split()[0]: line.split()[1:3] for line in text.splitlines() if line[:2] == "  "}
    # Every key of the schema, with its type and default.
    assert rows["step_size"] == ["float", "0.1"]
    assert rows["epochs"] == ["int", "20"]
    assert rows["seed"] == ["int", "0"]
    assert rows["dtype"] == ["float32|float64", "float32"]
    assert rows["method.batch_size"][0] == "int|null"
    assert rows["tracking.uri"] == ["str|null", "null"]
    assert rows["data.noise_std"] == ["float", "0.4"]
    from gdexp.config import schema_keys

    assert {k.key for k in schema_keys()} <= set(rows)
    for method in ("bgd", "sgd", "minibatch"):
        assert method in rows
    for sweep in ("tutorial", "step_sizes", "best_step_size"):
        assert sweep in rows
    assert "-m +sweeps=NAME" in text
    # Every launcher and sweeper gdexp ships or supports: each one Hydra accepts by that name.
    launchers = text.split("Launchers, for sweeps")[1].split("Sweepers")[0]
    listed = {line.split()[0] for line in launchers.splitlines()[1:] if line[:2] == "  "}
    assert listed == {"basic", "batched", "joblib", "submitit_local", "slurm", "slurm_batched"}
    sweepers = text.split("Sweepers (-m hydra/sweeper=NAME):")[1].split("Examples")[0]
    listed = {line.split()[0] for line in sweepers.splitlines()[1:] if line[:2] == "  "}
    assert listed == {"gdexp", "basic", "optuna"}
    examples = [line for line in text.splitlines() if line.startswith("  python -m gdexp ")]
    assert len(examples) >= 3
    # Not Hydra's generic help: no group listing that suggests `sweeps=tutorial` without `+`.
    assert "sweeps: " not in text and "conf/" not in text and "Powered by Hydra" not in text


def test_help_is_the_same_when_hydra_answers_it(gdexp_cli):
    # -cn makes cli() leave --help to Hydra, which renders gdexp's help template.
    ours, hydras = gdexp_cli("--help"), gdexp_cli("-cn", "config", "--help")
    assert hydras.returncode == 0, hydras.stderr
    assert hydras.stdout.strip() == ours.stdout.strip()


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

            def flaky_train(cfg, data, on_epoch=None, **options):
                if cfg.seed == 1:
                    raise RuntimeError("injected failure for seed 1")
                return real_train(cfg, data, on_epoch, **options)

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
    assert "resuming: 2 already FINISHED" in resumed.stdout
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
    assert outcome == {("bgd", "converged"), ("sgd", "oscillating")}


@pytest.mark.slow
def test_step_sizes_sweep_file_covers_the_log_grid(gdexp_cli, store):
    # The grid is the sweep file's; batched, because which launcher runs it is beside the point.
    done = gdexp_cli("-m", "+sweeps=step_sizes", "epochs=2", "hydra/launcher=batched")
    assert done.returncode == 0, done.stderr
    children = [r for r in store.runs() if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 195
    sizes = sorted({float(c.data.params["step_size"]) for c in children})
    assert sizes[0] == 1e-4 and sizes[-1] == 1.0 and len(sizes) == 13
    assert {c.data.params["method.name"] for c in children} == {"bgd", "sgd", "minibatch"}


@pytest.mark.parametrize("verbose", ["hydra.verbose=true", "hydra.verbose=hydra"])
def test_launcher_lines_come_back_when_verbose(gdexp_cli, verbose):
    quiet = gdexp_cli("-m", "seed=0,1", "epochs=2", "tracking.enabled=false")
    loud = gdexp_cli("-m", "seed=0,1", "epochs=2", "tracking.enabled=false", verbose)
    assert quiet.returncode == loud.returncode == 0, loud.stderr
    assert "Launching 1 jobs locally" not in quiet.stdout
    assert "Launching 1 jobs locally" in loud.stdout
    assert "#1 : seed=1" in loud.stdout


@pytest.mark.parametrize(
    "override, hint",
    [
        ("hydra/launcher=foo", ""),
        ("hydra/launcher=bached", "did you mean hydra/launcher=batched? "),
        ("hydra/launcher=slurm_batch", "did you mean hydra/launcher=slurm_batched? "),
        ("hydra/sweeper=optuma", "did you mean hydra/sweeper=optuna? "),
    ],
)  # fmt: skip
def test_an_unknown_launcher_or_sweeper_is_refused_in_one_line(gdexp_cli, store, override, hint):
    done = gdexp_cli("-m", override, "epochs=2")
    assert done.returncode == 2 and done.stdout == ""
    group, value = override.split("=")
    noun = group.split("/")[1]
    listed = (
        "basic, batched, joblib, submitit_local, slurm, slurm_batched"
        if noun == "launcher"
        else "gdexp, basic, optuna"
    )
    assert done.stderr == (
        f"{override}: gdexp has no {noun} '{value}'; {hint}the {noun}s are {listed} "
        "(python -m gdexp --help)\n"
    )
    assert list(store.folder.iterdir()) == []  # nothing made


def test_a_launcher_another_plugin_provides_is_left_to_hydra(gdexp_cli):
    # submitit_slurm is hydra-submitit-launcher's own name: not gdexp's to refuse.
    done = gdexp_cli("-m", "hydra/launcher=submitit_slurm", "seed=1.5")
    assert done.stderr == "seed=1.5: seed is an int (a whole number), not 1.5\n"
