"""Parallel and cluster launchers: every job of a sweep lands, complete, under the sweep's parent.

Real Hydra multiruns in subprocesses: joblib workers (loky processes) and submitit's local
executor (one process per job), each logging on its own into a store that did not exist before
the sweep. The SLURM preset cannot run without a cluster: it is composed by Hydra and rendered
into the sbatch script submitit would submit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, clean_env
from mlflow.tracking import MlflowClient

from gdexp.outcome import OUTCOMES

LAUNCHER_PRESETS = sorted((REPO / "conf" / "hydra" / "launcher").glob("*.yaml"))
PARENT_TAG = "mlflow.parentRunId"
EPOCHS = 20
STEPS = {"bgd": EPOCHS, "sgd": 100 * EPOCHS, "minibatch": 10 * EPOCHS}  # 100 points, batch 10
SCALARS = {"step_size", "initial_loss", "final_loss", "final_w", "final_b", "optimal_loss"}


def history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [p.value for p in sorted(client.get_metric_history(run_id, key), key=lambda p: p.step)]


def check_sweep(
    client: MlflowClient, experiment: str, grid: dict[str, list[str]]
) -> tuple[object, list]:
    """The experiment holds exactly one sweep over `grid`: one FINISHED parent run and one
    FINISHED child per grid point under it, each with its whole history. Returns them."""
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id], max_results=10_000)
    parents = [r for r in runs if r.data.tags.get("gdexp.kind") == "sweep"]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    n_jobs = 1
    for values in grid.values():
        n_jobs *= len(values)
    assert len(parents) == 1, [r.info.run_name for r in parents]
    assert len(children) == n_jobs and len(runs) == n_jobs + 1, (len(children), len(runs))
    [parent] = parents
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["n_runs"] == str(n_jobs)
    assert {c.data.tags[PARENT_TAG] for c in children} == {parent.info.run_id}
    assert sum(int(parent.data.tags[f"runs_{o}"]) for o in OUTCOMES) == n_jobs
    assert parent.data.tags["failed_runs"] == "0"

    points = {tuple(c.data.params[key] for key in grid) for c in children}
    expected = {()}
    for values in grid.values():
        expected = {(*point, value) for point in expected for value in values}
    assert points == expected  # every grid point once: none lost, none twice
    for child in children:
        run_id, method = child.info.run_id, child.data.params["method.name"]
        assert child.info.status == "FINISHED", child.info.run_name
        assert child.data.tags["outcome"] in OUTCOMES
        for key in ("loss", "w", "b"):
            assert len(history(client, run_id, key)) == EPOCHS, (child.info.run_name, key)
        assert len(history(client, run_id, "step_loss")) == STEPS[method], child.info.run_name
        assert set(child.data.metrics) >= SCALARS
    return parent, children


def ran_in_parallel(children: list) -> bool:
    """Whether two of the runs were open at the same time (one after the other, each ends before
    the next starts)."""
    open_until = None
    for start, end in sorted((c.info.start_time, c.info.end_time) for c in children):
        if open_until is not None and start < open_until:
            return True
        open_until = end if open_until is None else max(open_until, end)
    return False


def gdexp(*args: str, cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "gdexp", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.mark.slow
def test_joblib_sweep_on_a_new_store_logs_every_run_under_its_parent(tmp_path):
    # Two worker processes log at once into a SQLite store that does not exist yet: the
    # schema migration and the experiment are the sweeper's job, before any worker starts
    # (without that, parallel jobs race on the migration and runs go missing). Not the `store`
    # fixture: its MlflowClient would create the store before the sweep.
    grid = {
        "method.name": ["bgd", "sgd", "minibatch"],
        "step_size": ["0.01", "0.1"],
        "seed": ["0", "1", "2", "3"],
    }
    db = tmp_path / "mlflow.db"
    done = gdexp(
        "-m",
        "hydra/launcher=joblib",
        "hydra.verbose=true",
        "hydra.launcher.n_jobs=2",
        "method=bgd,sgd,minibatch",
        "step_size=0.01,0.1",
        "seed=0,1,2,3",
        cwd=tmp_path,
    )
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr  # the jobs ran in workers
    assert db.exists()
    _, children = check_sweep(MlflowClient(f"sqlite:///{db}"), "gdexp", grid)
    assert ran_in_parallel(children)


@pytest.mark.slow
def test_joblib_runs_a_small_grid_in_parallel(tmp_path):
    done = gdexp(
        *("-m", "hydra/launcher=joblib", "hydra.verbose=true", "hydra.launcher.n_jobs=2"),
        *("method=bgd,sgd", "seed=0,1", "tracking.log_step_loss=false"),
        cwd=tmp_path,
    )
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gdexp").experiment_id])
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    # The grid went to joblib whole (not in slices of one, which would run it serially). When
    # the runs then overlap depends on worker start-up, so it is not asserted.
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr
    assert "is launching 4 jobs" in done.stdout + done.stderr


@pytest.mark.slow
def test_two_joblib_sweeps_in_one_process_each_keep_their_runs(tmp_path):
    # As a notebook or a driver script would: gdexp's entry point called twice in one process.
    script = tmp_path / "two_sweeps.py"
    script.write_text(
        "import sys\n"
        "from gdexp.__main__ import main\n"
        "for seeds in ('0,1', '2,3'):\n"
        "    sys.argv = ['gdexp', '-m', 'hydra/launcher=joblib', 'hydra.launcher.n_jobs=2',\n"
        "                f'seed={seeds}', 'tracking.log_step_loss=false']\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as done:\n"
        "        assert not done.code, done.code\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gdexp").experiment_id])
    sweeps = {r.info.run_id: r.data.tags["grid.seed"] for r in runs if "grid.seed" in r.data.tags}
    assert sorted(sweeps.values()) == ["0,1", "2,3"]
    landed = {
        r.data.params["seed"]: sweeps[r.data.tags[PARENT_TAG]]
        for r in runs
        if PARENT_TAG in r.data.tags
    }
    assert landed == {"0": "0,1", "1": "0,1", "2": "2,3", "3": "2,3"}


@pytest.mark.slow
def test_submitit_local_sweep_lands_every_run_under_one_parent(store):
    # One process per job, started by submitit; each must find its sweep's manifest, or the
    # runs would land as top-level runs. Two launches of two jobs (max_batch_size):
    # submitit_local starts all the jobs it is given at once.
    grid = {"method.name": ["bgd", "sgd"], "seed": ["0", "1"]}
    gdexp(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.sweeper.max_batch_size=2",
        "method=bgd,sgd",
        "seed=0,1",
        cwd=store.folder,
    )
    parent, children = check_sweep(store.client, "gdexp", grid)
    # Each job trained in a submitit process: its log there has its one result line.
    logs = list(Path(parent.data.tags["sweep_dir"]).glob(".submitit/*/*_log.out"))
    assert len(logs) == len(children)
    names = {
        f"{c.data.params['method.name']} lr=0.1 seed={c.data.params['seed']}" for c in children
    }
    for log in logs:
        [line] = [line for line in log.read_text().splitlines() if "final loss" in line]
        assert any(f"{name}: " in line for name in names), line


@pytest.mark.parametrize("preset", LAUNCHER_PRESETS, ids=lambda p: p.stem)
def test_launcher_preset_documents_its_command_and_composes(preset, tmp_path):
    first = preset.read_text().splitlines()[0]
    assert first.startswith("# python -m gdexp -m ") and f"hydra/launcher={preset.stem}" in first
    done = gdexp(
        f"hydra/launcher={preset.stem}", "--cfg", "hydra", "-p", "hydra.launcher", cwd=tmp_path
    )
    launcher = yaml.safe_load(done.stdout)
    assert launcher["_target_"].startswith("hydra_plugins.")


def composed_launcher(name: str, tmp_path: Path, *overrides: str) -> dict:
    done = gdexp(
        f"hydra/launcher={name}", *overrides, "--cfg", "hydra", "-p", "hydra.launcher", cwd=tmp_path
    )
    return yaml.safe_load(done.stdout)


def test_slurm_preset_asks_for_small_jobs_that_inherit_the_sweep_environment(tmp_path):
    from submitit.slurm.slurm import SlurmExecutor, _convert_mem, _make_sbatch_string

    launcher = composed_launcher("slurm", tmp_path, "hydra.launcher.partition=cpu")
    # hydra-submitit-launcher's settings, submitted and waited for by gdexp's launcher.
    assert launcher["_target_"].endswith("slurm_launcher.GdexpSlurmLauncher")
    # What the launcher hands submitit, renamed as submitit does, rendered as sbatch would get it
    # for a 100-job array.
    generic = SlurmExecutor._equivalence_dict()
    skip = {"_target_", "submitit_folder", "name", "max_num_timeout"}
    params = {generic.get(k, k): v for k, v in launcher.items() if k not in skip and v is not None}
    params["mem"] = _convert_mem(params["mem"])
    script = _make_sbatch_string(
        command="python -u -m submitit.core._submit /tmp/x",
        folder="/tmp/x",
        map_count=100,
        **params,
    )
    flags = {line for line in script.splitlines() if line.startswith("#SBATCH")}
    assert {
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --nodes=1",
        "#SBATCH --mem=2GB",
        "#SBATCH --time=10",
        "#SBATCH --partition=cpu",
        f"#SBATCH --array=0-99%{launcher['array_parallelism']}",
        # A tracking server's credentials (MLFLOW_TRACKING_USERNAME/_PASSWORD) in the launching
        # shell must reach the jobs.
        "#SBATCH --export=ALL",
    } <= flags
    assert launcher["array_parallelism"] < 100
