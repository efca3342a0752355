"""Hydra's launcher contract, on gdexp's own app, for each of gdexp's launchers.

The assertions of Hydra's LauncherTestSuite and BatchedSweeperTestSuite
(hydra/test_utils/launcher_common_tests.py), ported from Hydra's test app to gdexp's: its
config (conf/), its task function (gdexp.__main__.main), its sweeper. tests/test_hydra_suites.py
runs Hydra's suites as they are, on Hydra's test app, which gdexp's plugins refuse by design.
Here the sweeps run in this process through Hydra's own test runner (`hydra_sweep_runner`),
so the JobReturns each launcher hands back can be checked: their overrides, config, return value
(the run's objective, as MLflow holds it), `hydra_cfg`, `working_dir`, the job folders with
`.hydra/`, and the batches the launcher was given (`hydra.sweeper.max_batch_size`).

Each deviation of a launcher from the contract is one xfail with its reason (DEVIATIONS). The
SLURM launchers run on the session's cluster (tests/slurm.py) and skip, saying why, without one.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Store
from hydra import compose, initialize_config_dir, version
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import OmegaConf

from gdexp.__main__ import CONFIG_DIR, main

TASK = main.__wrapped__  # the function @hydra.main wraps: what Hydra's launchers call per job


@dataclass(frozen=True)
class Launcher:
    id: str
    overrides: tuple[str, ...]
    slurm: bool = False
    # What this launcher does not do of Hydra's contract: {check: reason} (see DEVIATIONS).
    deviations: dict[str, str] = field(default_factory=dict)


# Measured by benchmarks/job_folders.py (1,000 BGD configs, batched, tracked); README says it.
FOLDERS_OFF = (
    "job folders are off by default on gdexp's batched launchers "
    "(hydra.launcher.job_folders=true writes them): they cost a dense sweep a third more time, "
    "13-15 ms of CPU a job (benchmarks/job_folders.py: 1,000 BGD configs, CPU 1.33x)"
)
NO_JOB_LOG = (
    "a batched launcher trains its jobs together in one process: their log lines go to the "
    "sweep's log, there is no <job folder>/gdexp.log per job"
)
DEVIATIONS = {
    "batched": {"job_folders": FOLDERS_OFF, "job_log": NO_JOB_LOG},
    "batched,job_folders": {"job_log": NO_JOB_LOG},
    "slurm_batched": {"job_folders": FOLDERS_OFF, "job_log": NO_JOB_LOG},
    "slurm_batched,job_folders": {"job_log": NO_JOB_LOG},
}

LOCAL = [
    Launcher("basic", ("hydra/launcher=basic",)),
    Launcher("batched", ("hydra/launcher=batched",), deviations=DEVIATIONS["batched"]),
    Launcher(
        "batched,job_folders",
        ("hydra/launcher=batched", "hydra.launcher.job_folders=true"),
        deviations=DEVIATIONS["batched,job_folders"],
    ),
]
CLUSTER = [
    Launcher("slurm", ("hydra/launcher=slurm",), slurm=True),
    Launcher(
        "slurm_batched",
        ("hydra/launcher=slurm_batched",),
        slurm=True,
        deviations=DEVIATIONS["slurm_batched"],
    ),
    Launcher(
        "slurm_batched,job_folders",
        ("hydra/launcher=slurm_batched", "hydra.launcher.job_folders=true"),
        slurm=True,
        deviations=DEVIATIONS["slurm_batched,job_folders"],
    ),
]


def params(launchers: list[Launcher]) -> list:
    return [
        pytest.param(launcher, id=launcher.id, marks=[pytest.mark.slow] if launcher.slurm else [])
        for launcher in launchers
    ]


@pytest.fixture
def launch_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The launch folder (the test's cwd) and its store, named by MLFLOW_TRACKING_URI so that a
    sweep needs no tracking override: Hydra's `sweep_1_job` runs one job with no overrides."""
    for key in list(os.environ):
        if key.startswith(("MLFLOW_", "GDEXP_")):
            monkeypatch.delenv(key)
    store = Store(tmp_path, f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.chdir(tmp_path)
    version.setbase("1.3")  # gdexp's @hydra.main; Singleton state, restored after the test
    yield store


@pytest.fixture
def run_sweep(request, launch_folder: Store, hydra_sweep_runner, monkeypatch):
    """`python -m gdexp -m <launcher> ARGS`, in this process: Hydra's SweepTaskFunction on
    gdexp's config and task function. Use it as a context: the sweep folder is gone after."""

    def run(launcher: Launcher, *args: str, sweep_dir: str = "sweep"):
        # What `-m` adds to a command line (hydra._internal.utils._run_hydra); Hydra's test
        # runner calls Hydra.multirun without it, and gdexp's task reads it.
        overrides = ["hydra.mode=MULTIRUN", *launcher.overrides]
        if launcher.slurm:
            cluster = request.getfixturevalue("slurm_cluster")  # skips without a cluster
            monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
            overrides += [
                f"hydra.launcher.partition={cluster.partition}",
                "hydra.launcher.mem_gb=1",  # a run peaks at ~0.45 GB
            ]
        return hydra_sweep_runner(
            calling_file=None,
            calling_module="gdexp.__main__",
            task_function=TASK,
            config_path=CONFIG_DIR,
            config_name="config",
            overrides=[*overrides, *args],
            temp_dir=launch_folder.folder / sweep_dir,
        )

    return run


def expected_config(overrides: list[str]) -> dict:
    """The job's config as Hydra composes it (its compose API), without the hydra node."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides), enum_to_str=True)


def deviates(launcher: Launcher, check: str) -> None:
    if check in launcher.deviations:
        pytest.xfail(f"{launcher.id}: {launcher.deviations[check]}")


def check_job_returns(
    launcher: Launcher,
    returns: list[JobReturn],
    expected_overrides: list[list[str]],
    store: Store,
    sweep_dir: Path,
    chdir: bool = False,
) -> None:
    """Hydra's assertions on each JobReturn (sweep_1_job, sweep_2_jobs, sweep_two_config_groups,
    BatchedSweeperTestSuite), for gdexp's app; then its job folders (or the xfail saying why
    there are none)."""
    assert [r.overrides for r in returns] == expected_overrides
    objectives = {
        r.data.tags["overrides"]: r.data.metrics["final_loss"]
        for r in store.runs()
        if "mlflow.parentRunId" in r.data.tags
    }
    for num, ret in enumerate(returns):
        assert ret.status == JobStatus.COMPLETED, ret._return_value
        assert OmegaConf.to_container(ret.cfg, enum_to_str=True) == expected_config(ret.overrides)
        # The return value is the task function's: the run's objective (objective=final_loss).
        assert isinstance(ret.return_value, float)
        assert ret.return_value == objectives[" ".join(ret.overrides)]
        # run_job's task name is Hydra's JobRuntime name, taken from the calling module
        # (gdexp/__main__.py: "__main__"), not hydra.job.name ("gdexp", which names the log).
        assert ret.task_name == "__main__"
        hydra = ret.hydra_cfg.hydra
        assert hydra.job.name == "gdexp"
        assert hydra.job.id is not None and hydra.job.num == num
        assert list(hydra.overrides.task) == ret.overrides
        assert hydra.runtime.output_dir == str(sweep_dir / str(num))
        # run_job: the job's folder when Hydra changes into it, else the launching process's.
        if not chdir:
            assert ret.working_dir == os.getcwd()
    assert len({r.hydra_cfg.hydra.runtime.output_dir for r in returns}) == len(returns)

    deviates(launcher, "job_folders")
    for ret in returns:
        folder = Path(ret.hydra_cfg.hydra.runtime.output_dir) / ".hydra"
        # Hydra's verify_dir_outputs, and the files' text as run_job writes it (to_yaml).
        assert OmegaConf.load(folder / "overrides.yaml") == OmegaConf.create(ret.overrides)
        assert (folder / "config.yaml").read_text() == OmegaConf.to_yaml(ret.cfg)
        assert (folder / "hydra.yaml").read_text() == OmegaConf.to_yaml(ret.hydra_cfg)
    if chdir:
        assert [ret.working_dir for ret in returns] == [
            ret.hydra_cfg.hydra.runtime.output_dir for ret in returns
        ]
        deviates(launcher, "job_log")
        for ret in returns:
            # Hydra's verify_dir_outputs, but for the log's name: it looks for <task_name>.log,
            # and Hydra's job logging writes <hydra.job.name>.log (here they differ, see above).
            assert (Path(ret.working_dir) / f"{ret.hydra_cfg.hydra.job.name}.log").exists()


@pytest.mark.usefixtures("hydra_restore_singletons")
class TestLauncherContract:
    """LauncherTestSuite's tests, on gdexp's app."""

    @pytest.mark.parametrize("launcher", params(LOCAL))
    def test_sweep_1_job(self, launcher, run_sweep, launch_folder):
        with run_sweep(launcher) as sweep:
            [[ret]] = sweep.returns
            assert ret.overrides == []
            check_job_returns(launcher, [ret], [[]], launch_folder, Path(sweep.temp_dir))

    @pytest.mark.parametrize("launcher", params(LOCAL + CLUSTER))
    def test_sweep_2_jobs(self, launcher, run_sweep, launch_folder):
        with run_sweep(launcher, "seed=0,1", "epochs=2") as sweep:
            multirun = OmegaConf.load(Path(sweep.temp_dir) / "multirun.yaml")
            assert list(multirun.hydra.overrides.task) == ["seed=0,1", "epochs=2"]
            returns = [ret for batch in sweep.returns for ret in batch]
            expected = [["seed=0", "epochs=2"], ["seed=1", "epochs=2"]]
            check_job_returns(launcher, returns, expected, launch_folder, Path(sweep.temp_dir))

    @pytest.mark.parametrize("launcher", params(LOCAL))
    def test_sweep_2_jobs_in_their_folders(self, launcher, run_sweep, launch_folder):
        """hydra.job.chdir=true, where Hydra's `verify_dir_outputs` applies: working_dir is the
        job's folder, with `.hydra/` and the job's log."""
        with run_sweep(launcher, "seed=0,1", "epochs=2", "hydra.job.chdir=true") as sweep:
            returns = [ret for batch in sweep.returns for ret in batch]
            expected = [["seed=0", "epochs=2"], ["seed=1", "epochs=2"]]
            check_job_returns(
                launcher, returns, expected, launch_folder, Path(sweep.temp_dir), chdir=True
            )

    @pytest.mark.parametrize("launcher", params(LOCAL))
    def test_not_sweeping_hydra_overrides(self, launcher, run_sweep):
        unsupported = "Sweeping over Hydra's configuration is not supported : 'hydra.verbose=tr"
        with (
            pytest.raises(HydraException, match=re.escape(unsupported)),
            run_sweep(launcher, "seed=0,1", "hydra.verbose=true,false"),
        ):
            pass

    @pytest.mark.parametrize("launcher", params(LOCAL))
    def test_sweep_1_job_strict_and_bad_key(self, launcher, run_sweep, launch_folder):
        with pytest.raises(HydraException, match="boo"), run_sweep(launcher, "boo=bar"):
            pass
        assert launch_folder.runs() == []

    @pytest.mark.parametrize("launcher", params(LOCAL))
    def test_sweep_2_optimizers(self, launcher, run_sweep, launch_folder):
        """Hydra's `group1=file1,file2`: a config group swept (method=bgd,sgd)."""
        with run_sweep(launcher, "method=bgd,sgd", "epochs=2") as sweep:
            returns = [ret for batch in sweep.returns for ret in batch]
            assert [r.cfg.method.name for r in returns] == ["bgd", "sgd"]
            assert [r.hydra_cfg.hydra.runtime.choices.method for r in returns] == ["bgd", "sgd"]
            expected = [["method=bgd", "epochs=2"], ["method=sgd", "epochs=2"]]
            check_job_returns(launcher, returns, expected, launch_folder, Path(sweep.temp_dir))

    @pytest.mark.parametrize("launcher", params(LOCAL))
    def test_sweep_and_override(self, launcher, run_sweep, launch_folder):
        """Hydra's `db=mysql,postgresql db.user=someone`: a group swept, a key of it set."""
        grid = ("method=bgd,minibatch", "method.shuffle=false", "epochs=2")
        with run_sweep(launcher, *grid) as sweep:
            returns = [ret for batch in sweep.returns for ret in batch]
            assert [(r.cfg.method.name, r.cfg.method.shuffle) for r in returns] == [
                ("bgd", False),
                ("minibatch", False),
            ]
            expected = [
                ["method=bgd", "method.shuffle=False", "epochs=2"],  # as Hydra's sweeper
                ["method=minibatch", "method.shuffle=False", "epochs=2"],  # writes them
            ]
            check_job_returns(launcher, returns, expected, launch_folder, Path(sweep.temp_dir))


GRID = ["method=bgd,sgd", "seed=0,1,2", "epochs=2"]
GRID_JOBS = [
    [f"method={m}", f"seed={s}", "epochs=2"] for m in ("bgd", "sgd") for s in (0, 1, 2)
]  # Hydra's order: the last key varies fastest


@pytest.mark.usefixtures("hydra_restore_singletons")
class TestBatchesContract:
    """BatchedSweeperTestSuite's test, on gdexp's app: with hydra.sweeper.max_batch_size the
    launcher gets batches of exactly that size, the last one smaller (each batch is one call of
    its `launch`, one entry of the sweep's returns)."""

    @pytest.mark.parametrize("launcher", params(LOCAL + CLUSTER[:2]))
    def test_sweep_2_jobs_2_batches(self, launcher, run_sweep, launch_folder):
        with run_sweep(launcher, *GRID, "hydra.sweeper.max_batch_size=2") as sweep:
            multirun = OmegaConf.load(Path(sweep.temp_dir) / "multirun.yaml")
            assert list(multirun.hydra.overrides.task) == GRID
            assert [len(batch) for batch in sweep.returns] == [2, 2, 2]
            flat = [ret for batch in sweep.returns for ret in batch]
            check_job_returns(launcher, flat, GRID_JOBS, launch_folder, Path(sweep.temp_dir))

    @pytest.mark.parametrize("launcher", params(LOCAL))
    def test_last_batch_is_smaller(self, launcher, run_sweep):
        with run_sweep(launcher, *GRID, "hydra.sweeper.max_batch_size=4") as sweep:
            assert [len(batch) for batch in sweep.returns] == [4, 2]
            flat = [ret for batch in sweep.returns for ret in batch]
            assert [ret.overrides for ret in flat] == GRID_JOBS
            assert [ret.hydra_cfg.hydra.job.num for ret in flat] == list(range(6))
            # A JobReturn pickles (submitit, joblib) with its hydra_cfg, however it was made.
            copied = pickle.loads(pickle.dumps(flat[-1]))
            assert copied.hydra_cfg == flat[-1].hydra_cfg and copied.cfg == flat[-1].cfg
            assert copied.return_value == flat[-1].return_value

    @pytest.mark.parametrize("launcher", params(LOCAL))
    def test_without_max_batch_size(self, launcher, run_sweep):
        """Unset, gdexp's choice: the basic launcher gets the grid in slices of about a
        twentieth (progress is reported between them), the batched launcher gets it whole."""
        with run_sweep(launcher, *GRID) as sweep:
            sizes = [len(batch) for batch in sweep.returns]
            assert sizes == ([1] * 6 if launcher.id == "basic" else [6])


def test_max_batch_size_below_one_is_refused_in_one_line(gdexp_cli, store):
    done = gdexp_cli("-m", "seed=0,1", "epochs=2", "hydra.sweeper.max_batch_size=0")
    assert done.returncode != 0
    assert "hydra.sweeper.max_batch_size=0: a batch is at least one job" in done.stderr
    assert "Traceback" not in done.stderr
    assert store.runs() == []


def test_batched_job_folders_are_the_basic_launchers(run_sweep, launch_folder):
    """The three files of each job folder, as the batched launcher writes them, are the basic
    launcher's (Hydra's `run_job`) but where the two sweeps differ: the launcher and the sweep
    folder. This pins what the batched launcher rebuilds of Hydra's job composition (its
    `hydra` node: choices, override_dirname, job number, output folder)."""
    grid = ["method=bgd,sgd", "+sweeps=tutorial", "seed=0", "step_size=0.1,0.05", "epochs=2"]
    folders = {}
    for launcher, name in ((LOCAL[0], "basic"), (LOCAL[2], "batched")):
        with run_sweep(launcher, *grid, "tracking.resume=false", sweep_dir=name) as sweep:
            folders[name] = {
                path.relative_to(sweep.temp_dir).as_posix(): path.read_text()
                for path in Path(sweep.temp_dir).glob("*/.hydra/*.yaml")
            }
            assert len(folders[name]) == 4 * 3
    for path, basic in folders["basic"].items():
        batched = folders["batched"][path]
        if path.endswith("hydra.yaml"):
            basic, batched = (
                OmegaConf.to_container(OmegaConf.create(text).hydra) for text in (basic, batched)
            )
            for node in (basic, batched):
                del node["launcher"]
                node["overrides"]["hydra"] = None
                node["sweep"]["dir"] = None
                node["runtime"]["output_dir"] = node["runtime"]["output_dir"].rsplit("/", 1)[1]
                node["runtime"]["choices"]["hydra/launcher"] = None
        assert batched == basic, path


def test_what_an_unrelated_app_sees_of_gdexps_plugins(tmp_path):
    """As with any installed Hydra plugin, the configs gdexp's plugin modules register (at
    import, in Hydra's ConfigStore) are choices of Hydra's own groups in every app: its
    `--hydra-help` and completion of `hydra/launcher=` and `hydra/sweeper=` list them. Nothing
    else of gdexp: not its conf/ (search path), its slurm presets, its help or its keys."""
    import subprocess
    import sys

    from conftest import REPO, clean_env

    app = REPO / "tests" / "apps" / "unrelated" / "app.py"

    def offered(line: str) -> set[str]:
        done = subprocess.run(
            [sys.executable, str(app), "-sc", "query=bash"], cwd=tmp_path, text=True,
            env=clean_env(COMP_LINE=f"python app.py {line}"), capture_output=True, timeout=120,
        )  # fmt: skip
        return set(done.stdout.split())

    launchers = offered("hydra/launcher=")
    assert {"hydra/launcher=batched", "hydra/launcher=gdexp_slurm_batched"} <= launchers
    # gdexp's presets in its conf/ (slurm, slurm_batched) are in gdexp's search path only.
    assert not {"hydra/launcher=slurm", "hydra/launcher=slurm_batched"} & launchers
    assert "hydra/sweeper=gdexp" in offered("hydra/sweeper=")
    assert offered("hydra/help=") == {"hydra/help=default"}  # gdexp's help: gdexp's app only
    assert offered("+") == {"+hydra"}
    searchpath = subprocess.run(
        [sys.executable, str(app), "--info", "searchpath"], cwd=tmp_path, env=clean_env(),
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    providers = [row.split("|")[1].strip() for row in searchpath.splitlines() if "://" in row]
    assert providers == ["hydra", "main", "schema"], searchpath  # Hydra's, the app's, the store
