"""gdexp.analysis on real runs: loading, figures, the report and its CLI, and its errors.

One module-scoped lab folder holds a single run, a small earlier sweep and the main sweep
(bgd, sgd x step size 0.01, 0.05, 0.1, 1 x seed 0, 1: converged, converging, stalled,
oscillating and blowing up to infinity all occur), run once as real `python -m gdexp`
subprocesses. Figures are checked as a reader sees them: drawn with matplotlib's renderer,
every legend entry must stand for drawn data, and no two texts may overlap.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import clean_env
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle
from matplotlib.text import Text
from mlflow.entities import Metric, Param, Run
from mlflow.tracking import MlflowClient

from gdexp import theory
from gdexp.analysis import (
    AnalysisError,
    ExperimentNotFound,
    NoRuns,
    StoreNotFound,
    SweepNotFound,
    figures,
    load_histories,
    load_runs,
    loss_curves,
    parameter_path,
    run_config,
    sgd_theory_curve,
    step_size_map,
    theory_table,
)
from gdexp.analysis import load as load_module
from gdexp.analysis.figures import DIVERGED_TOP, THEORY_SGD_LABEL, legend_groups
from gdexp.analysis.report import AGREES, format_radius, main, summary_table
from gdexp.data import least_squares_fit, make_run_data
from gdexp.names import TABLE_ARTIFACT
from gdexp.outcome import OUTCOMES

# One worker runs them all: the lab (module scope) is then built once, not once per worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("analysis_lab")]

NO_STEP_LOSS = "tracking.log_step_loss=false"
MAIN_SWEEP = ("-m", "method=bgd,sgd", "step_size=0.01,0.05,0.1,1", "seed=0,1", NO_STEP_LOSS)
STEP_SIZES = [0.01, 0.05, 0.1, 1.0]
N_MAIN = 16
REPORT_FILES = {
    "report.md",
    "summary.csv",
    "summary.md",
    "loss_curves.png",
    "step_size_map.png",
    "parameter_path.png",
}


def run_module(folder: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=folder,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


@dataclass
class Lab:
    folder: Path
    uri: str
    client: MlflowClient
    main: Run  # the main sweep's parent run (the latest sweep)
    earlier: Run  # a 2-run sweep started before it
    single: Run  # a run outside any sweep

    def children(self, parent: Run) -> list[Run]:
        return self.client.search_runs(
            [parent.info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            max_results=1000,
        )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    folder = tmp_path_factory.mktemp("lab")
    for args in (
        ("method=sgd", "step_size=0.05", "seed=7", NO_STEP_LOSS),
        ("-m", "method=bgd", "step_size=0.05", "seed=0,1", NO_STEP_LOSS),
        MAIN_SWEEP,
    ):
        result = run_module(folder, "gdexp", *args)
        assert result.returncode == 0, result.stderr
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("gdexp").experiment_id
    everything = client.search_runs([experiment_id], max_results=1000)
    sweeps = sorted(
        (r for r in everything if r.data.tags.get("gdexp.kind") == "sweep"),
        key=lambda r: r.info.start_time,
    )
    single = [
        r
        for r in everything
        if "mlflow.parentRunId" not in r.data.tags and "gdexp.kind" not in r.data.tags
    ]
    assert len(sweeps) == 2 and len(single) == 1
    return Lab(folder, uri, client, main=sweeps[1], earlier=sweeps[0], single=single[0])


@pytest.fixture(scope="module")
def runs(lab: Lab) -> pd.DataFrame:
    return load_runs(sweep="latest", tracking_uri=lab.uri)


@pytest.fixture(scope="module")
def histories(runs: pd.DataFrame) -> pd.DataFrame:
    return load_histories(runs, keys=("loss", "w", "b"))


@pytest.fixture(scope="module")
def theory_frame(runs: pd.DataFrame) -> pd.DataFrame:
    return theory_table(runs)


def cell(runs: pd.DataFrame, method: str, step_size: float) -> pd.DataFrame:
    return runs[(runs["method"] == method) & np.isclose(runs["step_size"], step_size)]


# --- loading ----------------------------------------------------------------------------------


def test_load_runs_gives_one_typed_row_per_child_of_the_sweep(lab: Lab, runs: pd.DataFrame):
    children = {r.info.run_id: r for r in lab.children(lab.main)}
    assert len(children) == N_MAIN
    assert sorted(runs["run_id"]) == sorted(children)
    assert lab.main.info.run_id not in set(runs["run_id"])
    assert (runs["parent_run_id"] == lab.main.info.run_id).all()

    dtypes = runs.dtypes.astype(str).to_dict()
    for column in ("step_size", "x_start", "noise_std", "init_w", "final_loss", "final_w"):
        assert dtypes[column] == "float64", column
    for column in ("seed", "epochs", "batch_size", "n_points"):
        assert dtypes[column] == "int64", column
    assert dtypes["shuffle"] == "bool"
    assert dtypes["diverged_at_epoch"] == "Int64"
    # Every sweep's frame has the table's columns; a run of a runs sweep has no config index.
    assert list(runs.columns) == list(load_module.RUN_COLUMNS)
    assert dtypes["config_index"] == "Int64" and runs["config_index"].isna().all()

    assert sorted(runs["step_size"].unique()) == STEP_SIZES
    assert sorted(runs["seed"].unique()) == [0, 1]
    assert set(runs.loc[runs["method"] == "bgd", "batch_size"]) == {100}  # effective: N
    assert set(runs.loc[runs["method"] == "sgd", "batch_size"]) == {1}
    assert (runs["epochs"] == 20).all() and not runs["shuffle"].any()
    assert (runs["init_w"] == -10.0).all() and (runs["slope"] == -5.0).all()
    assert (runs["status"] == "FINISHED").all()

    # Every final figure is MLflow's own metric, as a number.
    for row in runs.itertuples():
        metrics = children[row.run_id].data.metrics
        assert row.run_name == children[row.run_id].info.run_name
        assert row.outcome == children[row.run_id].data.tags["outcome"]
        for key in ("initial_loss", "final_w", "final_b", "optimal_loss"):
            if key in metrics:
                assert getattr(row, key) == metrics[key]
            else:
                assert np.isnan(getattr(row, key))


def test_a_run_that_blew_up_has_infinite_final_loss(runs: pd.DataFrame):
    for method in ("bgd", "sgd"):
        blew_up = cell(runs, method, 1.0)
        assert len(blew_up) == 2 and (blew_up["outcome"] == "diverged").all()
        assert np.isposinf(blew_up["final_loss"]).all()
        assert blew_up["diverged_at_epoch"].notna().all()
    # SGD at 0.1 rose to ~1e14 and bounces there (float32): oscillating, its loss finite.
    settled = cell(runs, "sgd", 0.1)
    assert (settled["outcome"] == "oscillating").all()
    assert np.isfinite(settled["final_loss"]).all() and (settled["final_loss"] > 1e6).all()
    assert settled["diverged_at_epoch"].isna().all()
    assert (cell(runs, "sgd", 0.05)["outcome"] == "stalled").all()


def test_every_outcome_of_the_vocabulary_occurs_in_the_lab(runs: pd.DataFrame):
    # The lab is built to exercise the figures and the report on every kind of run.
    assert set(runs["outcome"]) == set(OUTCOMES)


def test_a_sweep_loads_from_its_table_and_everything_else_from_its_runs(lab: Lab, runs):
    assert runs.attrs["source"] == "table"  # the main sweep ended and has results.parquet
    through_api = load_runs(sweep="latest", tracking_uri=lab.uri, source="runs")
    pd.testing.assert_frame_equal(through_api, runs)
    assert through_api.attrs == {**runs.attrs, "source": "runs"}
    everything = load_runs(tracking_uri=lab.uri)  # not one sweep: no table to read
    assert everything.attrs["source"] == "runs"
    with pytest.raises(AnalysisError, match="Only a sweep has a table"):
        load_runs(tracking_uri=lab.uri, source="table")


def test_sweeps_are_selected_by_id_name_or_latest(lab: Lab, runs: pd.DataFrame):
    main_ids = sorted(runs["run_id"])
    by_id = load_runs(sweep=lab.main.info.run_id, tracking_uri=lab.uri)
    by_name = load_runs(sweep=lab.main.info.run_name, tracking_uri=lab.uri)
    assert sorted(by_id["run_id"]) == main_ids == sorted(by_name["run_id"])
    assert runs.attrs["sweep"]["run_id"] == lab.main.info.run_id

    earlier = load_runs(sweep=lab.earlier.info.run_name, tracking_uri=lab.uri)
    assert sorted(earlier["run_id"]) == sorted(r.info.run_id for r in lab.children(lab.earlier))
    assert len(earlier) == 2 and set(earlier["step_size"]) == {0.05}


def test_all_runs_leave_out_only_the_sweep_parents(lab: Lab):
    everything = load_runs(tracking_uri=lab.uri)
    assert len(everything) == N_MAIN + 2 + 1
    parents = {lab.main.info.run_id, lab.earlier.info.run_id}
    assert not parents & set(everything["run_id"])
    single = everything[everything["run_id"] == lab.single.info.run_id]
    assert len(single) == 1 and single["parent_run_id"].isna().all()
    assert single["seed"].item() == 7 and everything.attrs["sweep"] is None


def test_histories_are_complete_and_match_mlflow(lab: Lab, runs, histories):
    assert list(histories.columns) == ["run_id", "key", "step", "value"]
    assert str(histories["step"].dtype) == "int64" and str(histories["value"].dtype) == "float64"
    assert list(histories["run_id"].drop_duplicates()) == [
        r for r in runs["run_id"] if r in set(histories["run_id"])
    ]
    finite = runs[np.isfinite(runs["final_loss"])]
    assert len(finite) == N_MAIN - 4
    for run_id in finite["run_id"]:
        of_run = histories[histories["run_id"] == run_id]
        assert list(of_run.loc[of_run["key"] == "loss", "step"]) == list(range(20))
        assert list(of_run.loc[of_run["key"] == "w", "step"]) == list(range(1, 21))
        assert list(of_run.loc[of_run["key"] == "b", "step"]) == list(range(1, 21))
    run_id = cell(runs, "sgd", 0.1)["run_id"].iloc[0]
    expected = sorted((m.step, m.value) for m in lab.client.get_metric_history(run_id, "loss"))
    got = histories[(histories["run_id"] == run_id) & (histories["key"] == "loss")]
    assert list(zip(got["step"], got["value"], strict=True)) == expected


def test_histories_from_the_table_and_from_mlflow_agree(lab: Lab, runs, histories, monkeypatch):
    per_run = load_histories(runs, keys=("loss", "w", "b"), source="runs")
    pd.testing.assert_frame_equal(per_run, histories)
    # A frame whose table this process has not read (e.g. unpickled) downloads it again.
    monkeypatch.setattr(load_module, "_TABLES", {})
    again = load_histories(runs, keys=("loss", "w", "b"), source="table")
    pd.testing.assert_frame_equal(again, histories)
    # Run ids alone: read from the table this process holds.
    ids = list(runs["run_id"][:3])
    from_ids = load_histories(ids, keys="loss", tracking_uri=lab.uri, source="table")
    assert set(from_ids["run_id"]) == set(ids) and set(from_ids["key"]) == {"loss"}
    pd.testing.assert_frame_equal(
        from_ids, load_histories(ids, keys="loss", tracking_uri=lab.uri, source="runs")
    )


def test_run_config_rebuilds_each_runs_own_data(runs: pd.DataFrame):
    for _, row in runs.iterrows():
        cfg = run_config(row)
        assert cfg.method.name == row["method"] and cfg.seed == row["seed"]
        _, _, optimal = least_squares_fit(make_run_data(cfg))
        assert optimal == pytest.approx(row["optimal_loss"], rel=1e-9)


def test_a_failed_run_loads_without_results(store, lab: Lab, runs):
    # A run that failed in training: its config params, no metrics, no outcome.
    source = cell(runs, "sgd", 0.1)["run_id"].iloc[0]
    params = lab.client.get_run(source).data.params
    experiment_id = store.client.create_experiment("gdexp")
    run_id = store.client.create_run(experiment_id, run_name="sgd lr=0.1 seed=0").info.run_id
    store.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    store.client.set_terminated(run_id, "FAILED")

    (row,) = load_runs(tracking_uri=store.uri).itertuples()
    assert row.status == "FAILED" and row.outcome is None
    assert np.isnan(row.final_loss) and pd.isna(row.diverged_at_epoch)  # unknown, not inf
    failed = load_runs(tracking_uri=store.uri)
    (summary,) = summary_table(failed, theory_table(failed)).itertuples()
    assert (summary.runs, summary.failed, summary.theory_agrees) == (1, 1, 0)
    assert all(getattr(summary, outcome) == 0 for outcome in OUTCOMES)


def test_a_sweep_without_a_table_loads_from_its_runs(store, lab: Lab):
    # A sweep as gdexp logged one before sweeps kept a table: a parent and one child with
    # gdexp's params, metrics and loss history (copied from a lab run), no results.parquet.
    source = lab.children(lab.main)[0]
    client = store.client
    experiment_id = client.create_experiment("gdexp")
    parent = client.create_run(experiment_id, tags={"gdexp.kind": "sweep"}, run_name="older")
    child = client.create_run(
        experiment_id,
        tags={"mlflow.parentRunId": parent.info.run_id, "outcome": source.data.tags["outcome"]},
        run_name=source.info.run_name,
    ).info.run_id
    history = lab.client.get_metric_history(source.info.run_id, "loss")
    client.log_batch(
        child,
        metrics=[Metric(k, v, 0, 0) for k, v in source.data.metrics.items() if k != "loss"]
        + [Metric("loss", m.value, m.timestamp, m.step) for m in history],
        params=[Param(k, v) for k, v in source.data.params.items()],
    )
    client.set_terminated(child, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")

    runs = load_runs(sweep="latest", tracking_uri=store.uri)
    assert runs.attrs["source"] == "runs" and list(runs["run_id"]) == [child]
    assert runs["outcome"].item() == source.data.tags["outcome"]
    loss = load_histories(runs)
    assert list(zip(loss["step"], loss["value"], strict=True)) == [
        (m.step, m.value) for m in sorted(history, key=lambda m: m.step)
    ]
    with pytest.raises(AnalysisError, match=r"results\.parquet"):
        load_runs(sweep="latest", tracking_uri=store.uri, source="table")


# --- one grid, read from its table and from its runs ------------------------------------------

# Step losses logged (not in the table: they come from MLflow beside it); step size 1 blows up,
# so the table holds non-finite points that MLflow never got.
GRID = ("-m", "method=bgd,sgd", "step_size=0.01,0.1,1", "seed=0,1", "epochs=5")
N_GRID = 12


@dataclass
class Grid:
    folder: Path
    uri: str
    client: MlflowClient
    parent: Run


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Grid:
    folder = tmp_path_factory.mktemp("grid")
    result = run_module(folder, "gdexp", *GRID)
    assert result.returncode == 0, result.stderr
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("gdexp").experiment_id
    (parent,) = client.search_runs([experiment_id], "tags.`gdexp.kind` = 'sweep'")
    return Grid(folder, uri, client, parent)


def grid_table(grid: Grid, folder: Path) -> pa.Table:
    path = grid.client.download_artifacts(grid.parent.info.run_id, TABLE_ARTIFACT, str(folder))
    return pq.read_table(path)


def test_a_grid_loads_the_same_from_its_table_and_from_its_runs(grid: Grid, tmp_path: Path):
    from_table = load_runs(sweep="latest", tracking_uri=grid.uri, source="table")
    from_runs = load_runs(sweep="latest", tracking_uri=grid.uri, source="runs")
    pd.testing.assert_frame_equal(from_table, from_runs, check_exact=True)
    assert len(from_table) == N_GRID and from_table.attrs["source"] == "table"
    assert np.isposinf(from_table["final_loss"]).sum() >= 2  # the rule for what MLflow lacks

    # The table keeps what MLflow never logged (SGD at 1 turns w and b NaN in its first epoch);
    # loading leaves it out.
    keys = ("loss", "w", "b")
    table = grid_table(grid, tmp_path)
    assert any(not np.isfinite(v) for k in keys for row in table.column(k).to_pylist() for v in row)
    pd.testing.assert_frame_equal(
        load_histories(from_table, keys=keys),  # auto: the frame's table
        load_histories(from_runs, keys=keys),  # auto: the frame's runs, get_metric_history
        check_exact=True,
    )
    # step_loss is not in the table: it comes from MLflow, beside the table's loss.
    mixed = load_histories(from_table, keys=("step_loss", "loss"))
    assert set(mixed["key"]) == {"step_loss", "loss"}
    first = mixed[mixed["run_id"] == from_table["run_id"].iloc[0]]
    assert list(first["key"].drop_duplicates()) == ["step_loss", "loss"]  # in `keys` order
    pd.testing.assert_frame_equal(
        mixed, load_histories(from_runs, keys=("step_loss", "loss"), source="runs")
    )
    pd.testing.assert_frame_equal(
        summary_table(from_table), summary_table(from_runs), check_exact=True
    )


def test_a_grids_report_is_the_same_from_its_table_and_from_its_runs(grid: Grid):
    reports = {}
    for source in ("table", "runs"):
        out = grid.folder / f"report-{source}"
        result = run_module(
            grid.folder, "gdexp.analysis", "--source", source, "--no-mlflow", "--out", str(out)
        )
        assert result.returncode == 0, result.stderr
        reports[source] = out
    for name in sorted(REPORT_FILES):  # the numbers, the words and the figures, byte for byte
        table, runs = (reports[s] / name for s in ("table", "runs"))
        assert table.read_bytes() == runs.read_bytes(), name


def test_a_table_that_names_its_runs_gives_the_same_frame(grid: Grid, tmp_path: Path):
    # The sweep's table carries its runs' names, parents and start times (load._INFO_COLUMNS):
    # it is read without searching the runs, into the same frame as the runs give.
    table = grid_table(grid, tmp_path / "table")
    children = {
        r.info.run_id: r
        for r in grid.client.search_runs(
            [grid.parent.info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{grid.parent.info.run_id}'",
        )
    }
    for row in table.to_pylist():
        info = children[row["run_id"]].info
        assert (row["run_name"], row["start_time"]) == (info.run_name, info.start_time)
        assert row["parent_run_id"] == grid.parent.info.run_id
    from_table = load_runs(sweep="latest", tracking_uri=grid.uri, source="table")
    assert load_module._TABLES[(grid.uri, grid.parent.info.run_id)].has_info
    from_runs = load_runs(sweep="latest", tracking_uri=grid.uri, source="runs")
    pd.testing.assert_frame_equal(from_table, from_runs, check_exact=True)


# --- MLflow's public API only -----------------------------------------------------------------

ANALYSIS_FOLDER = Path(load_module.__file__).parent
# What load.py did before it read sweeps from their tables: each must be caught.
PRIVATE_READS = (
    'getattr(getattr(client, "_tracking_client", None), "store", None)',
    "client._tracking_client.store.get_metric_history_bulk(run_ids, 'loss')",
    "from sqlalchemy import column, table",
    "from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore",
    "client.get_metric_history_bulk(run_ids, 'loss')",
    "import sqlalchemy.orm",
)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_mlflow_uses(source: str) -> list[str]:
    """What `source` does beyond MLflow's public API: SQLAlchemy or MLflow's store and server
    modules imported, any private name imported from MLflow or reached as an attribute (or
    through getattr), and any method called on a `client` that MlflowClient does not offer."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            modules += [alias.name for alias in node.names if isinstance(node, ast.Import)]
            for module in modules:
                if module.split(".")[0] == "sqlalchemy" or module.startswith(
                    ("mlflow.store", "mlflow.server")
                ):
                    found.append(f"import {module}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlflow"):
                found += [f"import {a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute):
            if _private(node.attr):
                found.append(f".{node.attr}")
            elif (
                isinstance(node.value, ast.Name)
                and node.value.id == "client"
                and not hasattr(MlflowClient, node.attr)
            ):
                found.append(f"client.{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and _private(str(node.args[1].value))
        ):
            found.append(f"{node.func.id}(..., {node.args[1].value!r})")
    return found


def test_loading_touches_no_private_mlflow_api():
    files = sorted(ANALYSIS_FOLDER.glob("*.py"))
    assert {"load.py", "report.py"} <= {f.name for f in files}
    for path in files:
        assert private_mlflow_uses(path.read_text()) == [], path.name
    for excerpt in PRIVATE_READS:  # the check catches what the SQL reading did
        assert private_mlflow_uses(excerpt), excerpt


# --- errors -----------------------------------------------------------------------------------


def test_a_misspelled_experiment_names_the_ones_that_exist(lab: Lab):
    with pytest.raises(ExperimentNotFound) as error:
        load_runs("gdexpp", tracking_uri=lab.uri)
    assert "'gdexpp'" in str(error.value) and "'gdexp'" in str(error.value)


def test_an_unknown_sweep_names_the_sweeps_that_exist(lab: Lab):
    with pytest.raises(SweepNotFound) as error:
        load_runs(sweep="sweep 99-99-99", tracking_uri=lab.uri)
    assert lab.main.info.run_name in str(error.value)
    assert lab.earlier.info.run_name in str(error.value)


def _empty_sweep_store(client: MlflowClient) -> tuple[str, str]:
    """A sweep with one child, and a later sweep parent with none: (empty name, other name)."""
    experiment_id = client.create_experiment("gdexp")
    kind = {"gdexp.kind": "sweep"}
    full = client.create_run(experiment_id, 1_000, kind, run_name="sweep 10-00-00 (1 runs)")
    client.create_run(experiment_id, 1_001, {"mlflow.parentRunId": full.info.run_id})
    client.create_run(experiment_id, 2_000, kind, run_name="sweep 11-00-00 (0 runs)")
    return "sweep 11-00-00 (0 runs)", "sweep 10-00-00 (1 runs)"


def test_an_empty_sweep_is_a_clear_error(store):
    empty, other = _empty_sweep_store(store.client)
    with pytest.raises(NoRuns) as error:
        load_runs(sweep="latest", tracking_uri=store.uri)
    assert empty in str(error.value) and other in str(error.value)


def test_the_cli_reports_errors_in_one_line(gdexp_cli, store, lab: Lab):
    def check(result: subprocess.CompletedProcess, *words: str) -> None:
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr  # no traceback, no logging noise
        assert lines[0].startswith("gdexp.analysis: error:")
        assert all(word in lines[0] for word in words), lines[0]

    module = "gdexp.analysis"
    check(gdexp_cli("--experiment", "gdexpp", "--tracking-uri", lab.uri, module=module), "'gdexp'")
    empty, other = _empty_sweep_store(store.client)
    check(gdexp_cli(module=module), empty, "no runs", other)  # the default: the latest sweep


def test_main_returns_1_with_the_message(lab: Lab, tmp_path: Path, capsys):
    assert main(["--sweep", "nope", "--tracking-uri", lab.uri]) == 1
    assert capsys.readouterr().err.startswith("gdexp.analysis: error: No sweep 'nope'")
    nowhere = tmp_path / "nowhere" / "mlflow.db"
    assert main(["--tracking-uri", f"sqlite:///{nowhere}"]) == 1
    assert "No MLflow store at" in capsys.readouterr().err
    assert not nowhere.exists()  # MLflow would have created an empty store
    with pytest.raises(StoreNotFound):
        load_runs(tracking_uri=f"sqlite:///{nowhere}")


# --- figures: what a reader sees -------------------------------------------------------------


def renderer(fig: Figure):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def texts(fig: Figure) -> list[Text]:
    """Every text drawn: titles, axis and tick labels, offset texts, legend texts."""
    found: list[Text] = []
    if fig._suptitle is not None:
        found.append(fig._suptitle)
    for ax in fig.axes:
        found += [ax.title, ax._left_title, ax._right_title]
        for axis, along in ((ax.xaxis, 0), (ax.yaxis, 1)):
            lo, hi = sorted(axis.get_view_interval())
            pad = 1e-9 * (abs(lo) + abs(hi))
            shown = [
                label  # tick labels outside the view are not drawn
                for label in axis.get_ticklabels(which="both")
                if lo - pad <= label.get_position()[along] <= hi + pad
            ]
            found += [axis.label, axis.get_offset_text(), *shown]
    for legend in legends(fig):
        found += [*legend.get_texts(), legend.get_title()]
    return [t for t in found if t.get_visible() and t.get_text().strip()]


def legends(fig: Figure) -> list:
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]


def in_box(points: np.ndarray, box, tol: float = 1.0) -> np.ndarray:
    """Which display points are finite and inside `box` (with `tol` pixels to spare)."""
    x, y = points[:, 0], points[:, 1]
    with np.errstate(invalid="ignore"):
        return (
            np.isfinite(points).all(axis=1)
            & (x >= box.x0 - tol)
            & (x <= box.x1 + tol)
            & (y >= box.y0 - tol)
            & (y <= box.y1 + tol)
        )


def inside(points: np.ndarray, box) -> bool:
    return bool(in_box(points, box).any())


def shows_data(artist, render) -> bool:
    """Whether `artist` puts at least one point of its data inside its panel."""
    return bool(draws(artist, render))


def has_line(style) -> bool:
    return style.get_linestyle() not in ("None", "none", "", " ") and style.get_linewidth() > 0


def has_marker(style) -> bool:
    return style.get_marker() not in (None, "None", "none", "", " ") and style.get_markersize() > 0


def marked_indices(line: Line2D, n: int) -> np.ndarray:
    """The indices of the points a line draws its marker at (its markevery)."""
    every = line.get_markevery()
    if every is None:
        return np.arange(n)
    if isinstance(every, int):
        return np.arange(0, n, every)
    if isinstance(every, slice):
        return np.arange(n)[every]
    return np.asarray(every, dtype=int)


def draws(artist, render) -> set[str]:
    """What a reader sees of `artist` in its panel: "line" (a segment, a band or a contour with a
    point in view) and/or "marker" (a marker in view); empty when it is hidden, transparent, or
    its data lie outside the panel or are a lone point of a line without markers."""
    alpha = artist.get_alpha()
    if artist.axes is None or not artist.get_visible() or (alpha is not None and alpha == 0):
        return set()
    box = artist.axes.get_window_extent(render)
    if isinstance(artist, Line2D):
        points = artist.get_transform().transform(artist.get_xydata())
        seen = in_box(points, box)
        finite = np.isfinite(points).all(axis=1)
        kinds = set()
        segments = finite[1:] & finite[:-1] & (seen[1:] | seen[:-1])
        if has_line(artist) and segments.any():
            kinds.add("line")
        if has_marker(artist) and seen[marked_indices(artist, len(points))].any():
            kinds.add("marker")
        return kinds
    if isinstance(artist, PathCollection):  # scatter: the points are its offsets
        points = artist.get_offset_transform().transform(artist.get_offsets())
        sizes = artist.get_sizes()
        return {"marker"} if len(sizes) and sizes.max() > 0 and inside(points, box) else set()
    paths = [p.vertices for p in artist.get_paths() if len(p.vertices)]
    if paths and inside(artist.get_transform().transform(np.concatenate(paths)), box):
        return {"line"}  # a band or a contour: drawn as an area or a stroke
    return set()


def visible_mark(handle) -> bool:
    return handle.get_visible() and (has_line(handle) or has_marker(handle))


def check_readable(fig: Figure) -> dict[str, list]:
    """A reader's checks of a figure; returns its legend entries -> drawn artists.

    Every legend entry has a visible mark and stands for artists that show data in their panel,
    and what its mark shows is drawn: its line by some artist as a line (or band), its marker by
    some artist as a marker in view; legends lie outside every panel; no two texts overlap, and
    no text lies on a panel.
    """
    render = renderer(fig)
    groups = legend_groups(fig)
    entries = {}
    for legend in legends(fig):
        box = legend.get_window_extent(render)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(render)), "a legend lies on a panel"
        for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True):
            label = text.get_text()
            assert visible_mark(handle), f"legend entry {label!r} has no visible mark"
            seen = {id(a): draws(a, render) for a in groups.get(label, [])}
            drawn = [a for a in groups.get(label, []) if seen[id(a)]]
            assert drawn, f"legend entry {label!r} stands for no data in view"
            kinds = set().union(*seen.values())
            if has_line(handle):
                assert "line" in kinds, f"legend entry {label!r} shows a line none draws"
            if has_marker(handle):
                assert "marker" in kinds, f"legend entry {label!r} shows a marker none draws"
            entries[label] = drawn
    boxes = [(t, t.get_window_extent(render).shrunk(0.98, 0.9)) for t in texts(fig)]
    for i, (text, box) in enumerate(boxes):
        for other, other_box in boxes[i + 1 :]:
            assert not box.overlaps(other_box), (text.get_text(), other.get_text())
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(render).shrunk(0.99, 0.99)), (
                f"text {text.get_text()!r} lies on a panel"
            )
    return entries


def gids(artist) -> list[str]:
    return (artist.get_gid() or "").split(figures.GID_SEPARATOR)


def step_lines(ax) -> dict[float, Line2D]:
    return {
        float(gids(line)[0].removeprefix("step size ")): line
        for line in ax.get_lines()
        if gids(line)[0].startswith("step size ")
    }


def test_loss_curves_show_median_and_band_per_step_size(runs, histories):
    fig = loss_curves(runs, histories)
    assert [ax.get_title() for ax in fig.axes] == [
        "Batch Gradient Descent (8 runs)",
        "Stochastic Gradient Descent (8 runs)",
    ]
    loss = histories[histories["key"] == "loss"].merge(runs, on="run_id")
    for ax, method in zip(fig.axes, ("bgd", "sgd"), strict=True):
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "loss"
        assert ax.get_yscale() == "log"  # 0.17 to 1e14 and beyond: decades
        lines = step_lines(ax)
        assert sorted(lines) == STEP_SIZES
        top = ax.get_ylim()[1]
        for step_size, line in lines.items():
            table = cell(loss, method, step_size).pivot(
                index="step", columns="run_id", values="value"
            )
            # The median up to where it leaves the panel (if it does: then it ends on the frame).
            median = table.median(axis=1)
            n = int(np.argmax(median > top)) if (median > top).any() else len(median)
            np.testing.assert_array_equal(line.get_xdata()[:n], table.index[:n])
            np.testing.assert_allclose(line.get_ydata()[:n], median[:n])
            (band,) = [c for c in ax.collections if gids(c) == gids(line)]
            edges = band.get_paths()[0].vertices[:, 1]
            assert edges.max() == pytest.approx(min(table.max().max(), top))
            assert edges.min() == pytest.approx(min(table.min().min(), top))
        # Step size 1 overflowed in both methods: its line ends on the top of the frame, with a
        # ▲ there, at the epoch after its last finite loss (or where it crossed the top before).
        blown = lines[1.0]
        assert blown.get_ydata()[-1] == top
        (mark,) = [
            c for c in ax.collections if gids(c) == ["step size 1", figures.LEFT_FRAME_LABEL]
        ]
        last = cell(loss, method, 1.0).groupby("run_id")["step"].max()
        np.testing.assert_array_equal(mark.get_offsets(), [[blown.get_xdata()[-1], top]])
        assert blown.get_xdata()[-1] <= last.max() + 1
        # The panel's range is the runs that did not diverge, with room above.
        calm = cell(loss, method, 0.01)["value"]
        assert ax.get_ylim()[0] < calm.min() and ax.get_ylim()[1] > 100 * calm.max()


def test_loss_curves_read_at_a_glance(runs, histories):
    entries = check_readable(loss_curves(runs, histories))
    # Four step sizes: a legend entry each, each with its lines in both panels.
    for step_size in STEP_SIZES:
        drawn = entries[f"step size {step_size:g}"]
        assert {a.axes.get_title().split(" (")[0] for a in drawn} == {
            "Batch Gradient Descent",
            "Stochastic Gradient Descent",
        }
    assert figures.LEAST_SQUARES_LABEL in entries and figures.LEFT_FRAME_LABEL in entries
    # Step size 1 overflowed in every seed: its line ends on the frame (▲), no × is needed.
    assert figures.OVERFLOW_LABEL not in entries


def many_step_sizes() -> tuple[pd.DataFrame, pd.DataFrame, list[float]]:
    """13 step sizes x 2 seeds of two methods, loss curves made up: some fall, some rise, the
    largest overflow at once (their history is their initial loss alone)."""
    steps = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    rows, history = [], []
    for method in ("sgd", "minibatch"):
        for i, step in enumerate(steps):
            for seed in (0, 1):
                run_id = f"{method}-{step}-{seed}"
                overflow = step >= 0.2
                outcome = "diverged" if overflow or step == 0.1 else "converging"
                rows.append((run_id, method, step, seed, outcome, overflow))
                rate = 0.8 + 0.03 * i if step < 0.1 else 3.0
                values = [600.0] if overflow else 600.0 * rate ** np.arange(20) + 0.2
                history += [
                    (run_id, "loss", k, v * (1 + 0.01 * seed)) for k, v in enumerate(values)
                ]
    runs = pd.DataFrame(rows, columns=["run_id", "method", "step_size", "seed", "outcome", "over"])
    runs = runs.assign(
        optimal_loss=0.2,
        final_loss=np.where(runs["over"], np.inf, 1.0),
        diverged_at_epoch=pd.array([1 if o else None for o in runs["over"]], dtype="Int64"),
    ).drop(columns="over")
    return runs, pd.DataFrame(history, columns=["run_id", "key", "step", "value"]), steps


def colour_distance(a, b) -> float:
    return float(np.linalg.norm(np.array(a)[:3] - np.array(b)[:3]))


def test_many_step_sizes_get_a_colour_bar_with_a_labelled_block_each():
    runs, history, steps = many_step_sizes()
    fig = loss_curves(runs, history)
    entries = check_readable(fig)
    assert not [label for label in entries if label.startswith("step size")]  # no 13-entry legend
    (bar_ax,) = [ax for ax in fig.axes if hasattr(ax, "_colorbar")]
    bar = bar_ax._colorbar
    assert bar_ax.get_ylabel() == "step size"
    # A tick per step size, labelled with it, at the middle of a block of its own colour.
    ticks = bar.get_ticks()
    assert [t.get_text() for t in bar_ax.get_yticklabels()] == [f"{s:g}" for s in steps]
    blocks = [bar.cmap(bar.norm(t)) for t in ticks]
    assert len({tuple(b) for b in blocks}) == len(steps)
    # Neighbouring step sizes differ in colour at a glance (viridis's 13 shades: 0.07 apart).
    assert min(colour_distance(a, b) for a, b in pairwise(blocks)) > 0.15
    render = renderer(fig)
    for ax in fig.axes:
        if ax is bar_ax:
            continue
        lines = step_lines(ax)
        assert sorted(lines) == steps
        for block, (_, line) in zip(blocks, sorted(lines.items()), strict=True):
            # The block labelled with a step size has its line's colour, and every line shows in
            # the panel (those that overflowed at once run from their first loss to the frame).
            np.testing.assert_allclose(np.array(line.get_color()), np.array(block), atol=1e-9)
            assert shows_data(line, render)
            assert len(line.get_xdata()) >= 2


def test_few_step_sizes_get_a_legend_entry_each_in_distinct_colours(runs, histories):
    fig = loss_curves(runs, histories)
    assert not [ax for ax in fig.axes if hasattr(ax, "_colorbar")]
    (legend,) = fig.legends
    colours = {
        text.get_text(): handle.get_color()
        for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True)
        if text.get_text().startswith("step size")
    }
    assert list(colours) == [f"step size {s:g}" for s in STEP_SIZES]
    for ax in fig.axes:
        for step, line in step_lines(ax).items():
            assert line.get_color() == colours[f"step size {step:g}"]
    shades = list(colours.values())
    assert min(colour_distance(a, b) for a, b in pairwise(shades)) > 0.3


def outside_points(fig: Figure) -> list[str]:
    """Every finite point of a line, band or marker drawn in a panel that lies outside the panel's
    x/y limits (in data coordinates, or in axes fractions for what is drawn in those)."""
    found = []
    for ax in fig.axes:
        if hasattr(ax, "_colorbar"):
            continue
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        data, fraction = ax.transData, ax.transAxes
        for artist in [*ax.get_lines(), *ax.collections]:
            if isinstance(artist, PathCollection):
                points, transform = artist.get_offsets(), artist.get_offset_transform()
            elif isinstance(artist, Line2D):
                points, transform = artist.get_xydata(), artist.get_transform()
            else:
                points = np.concatenate([p.vertices for p in artist.get_paths()])
                transform = artist.get_transform()
            points = np.asarray(points, dtype=float)
            points = points[np.isfinite(points).all(axis=1)]
            if transform == data:
                x, y = points[:, 0], points[:, 1]
            else:  # axhline, × rows: x or y in axes fractions; check in display coordinates
                display = transform.transform(points)
                x, y = data.inverted().transform(display).T
                box = fraction.transform([[0, 0], [1, 1]])
                rows = (display >= box[0] - 1e-6) & (display <= box[1] + 1e-6)
                if not rows.all():
                    found.append(f"{artist.get_gid()!r}: {points[~rows.all(axis=1)]}")
                continue
            bad = (x < x0) | (x > x1) | (y < y0) | (y > y1)
            if bad.any():
                found.append(f"{artist.get_gid()!r}: {points[bad][:3]}")
    return found


@pytest.mark.parametrize("data", ["lab", "made up, 13 step sizes"])
def test_loss_curves_end_diverging_curves_on_the_frame(data, runs, histories):
    if data == "lab":
        runs_, history = runs, histories
    else:
        runs_, history, _ = many_step_sizes()
    fig = loss_curves(runs_, history)
    assert outside_points(fig) == []  # every finite point drawn lies inside its panel
    entries = check_readable(fig)
    assert figures.LEFT_FRAME_LABEL in entries
    loss = history[history["key"] == "loss"].merge(runs_[["run_id", "method", "step_size"]])
    left = 0
    for ax in fig.axes:
        if hasattr(ax, "_colorbar"):
            continue
        method = {"Batch": "bgd", "Stochastic": "sgd", "Mini-batch": "minibatch"}[
            ax.get_title().split(" ")[0]
        ]
        top = ax.get_ylim()[1]
        for step, line in step_lines(ax).items():
            of_cell = cell(loss, method, step)
            median = of_cell.groupby("step")["value"].median()
            blew_up = cell(runs_, method, step)
            blew_up = np.isposinf(blew_up["final_loss"]) | blew_up["diverged_at_epoch"].notna()
            leaves = (median > top).any() or blew_up.all()
            marks = [
                c
                for c in ax.collections
                if gids(c) == [f"step size {step:g}", figures.LEFT_FRAME_LABEL]
            ]
            if not leaves:
                assert marks == [] and line.get_ydata().max() <= top
                continue
            # It ends on the frame, where a ▲ of its colour sits, at or before the epoch
            # after its last finite loss.
            (mark,) = marks
            end = (line.get_xdata()[-1], line.get_ydata()[-1])
            assert end[1] == top
            np.testing.assert_array_equal(mark.get_offsets(), [end])
            assert mark.get_paths()[0].vertices[:, 1].max() > 0  # points up
            assert mark.get_clip_on() is False  # the whole ▲, not its lower half
            np.testing.assert_allclose(mark.get_facecolor()[0], line.get_color())
            assert median.index.min() <= end[0] <= of_cell["step"].max() + 1
            left += 1
    assert left >= (2 if data == "lab" else 8)


def figure_cases(runs, histories, theory_frame):
    """Every figure function on the lab's sweep, and on it at the single step size 0.1 (the
    tutorial's sweep: a median is one point per method)."""
    tutorial = runs[runs["step_size"] == 0.1]
    for name, chosen in (("sweep", runs), ("tutorial", tutorial)):
        theory_of = theory_frame[theory_frame["run_id"].isin(chosen["run_id"])]
        yield f"{name}: loss_curves", lambda c=chosen: loss_curves(c, histories)
        yield f"{name}: step_size_map", lambda c=chosen, t=theory_of: step_size_map(c, t)
        yield (
            f"{name}: step_size_map, no curve",
            lambda c=chosen, t=theory_of: step_size_map(c, t, theory_curve=False),
        )
        yield (
            f"{name}: parameter_path",
            lambda c=chosen, t=theory_of: parameter_path(c, histories, theory=t),
        )
    blown = cell(runs, "sgd", 1.0)["run_id"].iloc[0]  # a path that is its start alone
    yield "blown: parameter_path", lambda: parameter_path(runs, histories, [blown])
    made_up, history, _ = many_step_sizes()
    yield "13 step sizes: loss_curves", lambda: loss_curves(made_up, history)


def test_every_legend_entry_of_every_figure_is_drawn(runs, histories, theory_frame):
    # Each legend entry's mark (line, marker) is drawn by visible artists with data in view.
    for name, make in figure_cases(runs, histories, theory_frame):
        try:
            check_readable(make())
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from error


def test_a_median_at_a_single_step_size_is_drawn(runs, theory_frame):
    tutorial = runs[runs["step_size"] == 0.1]
    fig = step_size_map(tutorial, theory_frame[theory_frame["run_id"].isin(tutorial["run_id"])])
    render = renderer(fig)
    groups = legend_groups(fig)
    for short in ("BGD", "SGD"):
        (median,) = groups[f"{short}: median over seeds"]
        assert draws(median, render) == {"marker"}  # a bar: a line through one point is nothing


def test_theory_is_drawn_beneath_the_measurements(runs, histories, theory_frame):
    # Where SGD's runs agree with theory (0.05, 0.1) the prediction must not hide the median.
    fig = step_size_map(runs, theory_frame)
    groups = legend_groups(fig)
    theory_labels = [
        label
        for label in groups
        if label.startswith(("theory", "BGD stable", "every SGD step"))
        or label == figures.LEAST_SQUARES_LABEL
    ]
    measured_labels = [*figures.OUTCOME_WORDS.values(), figures.OVERFLOWED_RUNS_LABEL]
    measured_labels += [label for label in groups if label.endswith("median over seeds")]
    theory_artists = [a for label in theory_labels for a in groups[label]]
    measured = [a for label in measured_labels for a in groups.get(label, [])]
    assert len(theory_labels) >= 4 and measured
    assert max(a.get_zorder() for a in theory_artists) < min(a.get_zorder() for a in measured)
    for artist in groups[THEORY_SGD_LABEL]:  # faint, and dashed where it is a line
        assert artist.get_alpha() is not None and artist.get_alpha() < 1
        assert not has_line(artist) or artist.get_linestyle() == "--"
        assert not has_line(artist) or artist.get_linewidth() <= 1.0
    for artist in theory_artists:
        assert not has_line(artist) or artist.get_linestyle() in ("--", ":")

    # Loss curves: the optimum beneath the runs' medians.
    fig = loss_curves(runs, histories)
    groups = legend_groups(fig)
    optimum = max(a.get_zorder() for a in groups[figures.LEAST_SQUARES_LABEL])
    assert optimum < min(a.get_zorder() for a in groups[figures.MEDIAN_LABEL] if has_line(a))

    # Parameter paths: the fit and theory's fixed point, where a path ends, beneath the path.
    groups = legend_groups(parameter_path(runs, histories, theory=theory_frame))
    path = min(a.get_zorder() for a in groups[figures.PATH_LABEL])
    for label in (figures.FIT_LABEL, figures.FIXED_POINT_LABEL, figures.CONTOUR_LABEL):
        assert max(a.get_zorder() for a in groups[label]) < path


def test_loss_curves_panels_follow_method_order_and_only_present_methods():
    names = ("minibatch", "bgd", "sgd")
    fake_runs = pd.DataFrame(
        {
            "run_id": list(names),
            "method": list(names),
            "step_size": [0.1, 0.1, 0.1],
            "optimal_loss": [0.2, 0.2, 0.2],
            "final_loss": [0.5, 0.5, 0.5],
            "outcome": ["converging"] * 3,
            "diverged_at_epoch": pd.array([None] * 3, dtype="Int64"),
        }
    )
    fake_history = pd.DataFrame(
        [(r, "loss", s, 10.0 / (s + 1)) for r in names for s in range(5)],
        columns=["run_id", "key", "step", "value"],
    )
    titles = [ax.get_title() for ax in loss_curves(fake_runs, fake_history).axes]
    assert titles == [
        "Batch Gradient Descent (1 run)",
        "Stochastic Gradient Descent (1 run)",
        "Mini-batch Gradient Descent (1 run)",
    ]
    two = loss_curves(fake_runs[fake_runs["method"] != "bgd"], fake_history)
    assert [ax.get_title() for ax in two.axes] == titles[1:]
    assert loss_curves(fake_runs, fake_history).axes[0].get_yscale() == "linear"  # 2 to 10


def test_figures_take_the_median_over_seeds(runs, histories, theory_frame):
    # A third seed at SGD 0.1 with a tiny loss: the median of three differs from their mean.
    base = cell(runs, "sgd", 0.1).iloc[[0]]
    extra = base.assign(run_id="extra", seed=2, final_loss=1.0, outcome="converged")
    runs3 = pd.concat([runs, extra], ignore_index=True)
    losses = histories[histories["run_id"] == base["run_id"].item()].assign(run_id="extra")
    losses = losses.assign(value=np.where(losses["key"] == "loss", 1.0, losses["value"]))
    histories3 = pd.concat([histories, losses], ignore_index=True)
    theory3 = pd.concat(
        [
            theory_frame,
            theory_frame[theory_frame["run_id"] == base["run_id"].item()].assign(
                run_id="extra", seed=2
            ),
        ],
        ignore_index=True,
    )
    three = runs3.loc[(runs3["method"] == "sgd") & (runs3["step_size"] == 0.1), "final_loss"]
    assert len(three) == 3 and three.median() != three.mean()

    (ax,) = step_size_map(runs3, theory3, theory_curve=False).axes
    (median,) = [line for line in ax.get_lines() if line.get_gid() == "SGD: median over seeds"]
    assert median.get_ydata()[STEP_SIZES.index(0.1)] == pytest.approx(three.median())

    sgd_panel = loss_curves(runs3, histories3).axes[1]
    assert "(9 runs)" in sgd_panel.get_title()
    line = step_lines(sgd_panel)[0.1]
    table = histories3[
        histories3["run_id"].isin(runs3.loc[three.index, "run_id"]) & (histories3["key"] == "loss")
    ].pivot(index="step", columns="run_id", values="value")
    np.testing.assert_allclose(line.get_ydata(), table.median(axis=1))
    assert not np.allclose(line.get_ydata()[1:], table.mean(axis=1)[1:])


def reference_x() -> np.ndarray:
    return make_run_data(run_config_of_defaults()).x.double().numpy()


def run_config_of_defaults():
    from omegaconf import OmegaConf

    from gdexp.config import MethodConfig, RunConfig

    return OmegaConf.structured(RunConfig(method=MethodConfig(name="sgd", batch_size=1)))


def test_step_size_map_draws_runs_medians_thresholds_and_theory(runs, theory_frame):
    fig = step_size_map(runs, theory_frame)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "step size" and ax.get_ylabel() == "final loss"
    groups = legend_groups(fig)

    # Thresholds, computed here from the data's x alone.
    x = reference_x()
    hessian = 2 / len(x) * np.array([[np.sum(x * x), np.sum(x)], [np.sum(x), len(x)]])
    expected = {
        "BGD stable below": 2 / np.linalg.eigvalsh(hessian)[-1],
        "every SGD step contracts below": np.min(1 / (x**2 + 1)),
    }
    for words, value in expected.items():
        (label,) = [label for label in groups if label.startswith(words)]
        (line,) = groups[label]
        np.testing.assert_allclose(line.get_xdata(), [value, value], rtol=1e-9)
        assert f"{value:.3g}" in label

    for method, short in (("bgd", "BGD"), ("sgd", "SGD")):
        (median,) = groups[f"{short}: median over seeds"]
        expected_median = runs[runs["method"] == method].groupby("step_size")["final_loss"]
        expected_median = expected_median.median()
        np.testing.assert_array_equal(median.get_xdata(), STEP_SIZES)
        np.testing.assert_allclose(
            median.get_ydata(),
            np.where(np.isfinite(expected_median), expected_median, np.nan),
        )

    # Each run with a finite final loss is a point whose marker is its outcome tag.
    for outcome, words in figures.OUTCOME_WORDS.items():
        tagged = runs[(runs["outcome"] == outcome) & np.isfinite(runs["final_loss"])]
        drawn = groups.get(words, [])
        points = sorted(tuple(p) for c in drawn for p in np.asarray(c.get_offsets()))
        assert points == sorted(zip(tagged["step_size"], tagged["final_loss"], strict=True))
        marker, filled = figures.OUTCOME_MARKERS[outcome]
        style = MarkerStyle(marker)
        shape = style.get_path().transformed(style.get_transform()).vertices
        for collection in drawn:
            np.testing.assert_allclose(collection.get_paths()[0].vertices, shape)
            hollow = len(collection.get_facecolors()) == 0 or collection.get_facecolors()[0][3] == 0
            assert hollow != filled
    # Step size 1 blew up for both: a × at the top per run, a row per method.
    rows = []
    for marks in groups[figures.OVERFLOWED_RUNS_LABEL]:
        offsets = marks.get_offsets()
        np.testing.assert_allclose(offsets[:, 0], [1.0, 1.0])
        rows.append(offsets[0, 1])
    assert len(rows) == 2 and len(set(rows)) == 2 and max(rows) <= DIVERGED_TOP

    # Theory's SGD fixed-point loss at the swept step sizes where its epoch map is stable.
    stars = [a for a in groups[THEORY_SGD_LABEL] if a.get_marker() == "*"]
    (sgd_line,) = stars
    stable = sorted(
        theory_frame.loc[
            (theory_frame["method"] == "sgd") & theory_frame["stable"], "step_size"
        ].unique()
    )
    np.testing.assert_array_equal(sgd_line.get_xdata(), stable)
    for step_size, drawn in zip(stable, sgd_line.get_ydata(), strict=True):
        cfgs = [
            run_config(row)
            for _, row in runs[
                (runs["method"] == "sgd") & (runs["step_size"] == step_size)
            ].iterrows()
        ]
        predicted = [p.epoch_map.fixed_point_loss for p in theory.predict_many(cfgs)]
        assert drawn == pytest.approx(np.median(predicted), rel=1e-9)


def test_step_size_map_reads_at_a_glance(runs, theory_frame):
    entries = check_readable(step_size_map(runs, theory_frame))
    present = set(runs.loc[np.isfinite(runs["final_loss"]), "outcome"])
    assert {figures.OUTCOME_WORDS[o] for o in present} <= set(entries)
    assert figures.OVERFLOWED_RUNS_LABEL in entries and THEORY_SGD_LABEL in entries


def test_sgd_theory_curve_is_theory_at_every_step_size(runs):
    curve = sgd_theory_curve(runs, [0.01, 0.05, 0.1, 0.5])
    sgd = runs[runs["method"] == "sgd"].drop_duplicates("seed")
    for step_size, drawn in zip(curve["step_size"], curve["fixed_point_loss"], strict=True):
        predictions = theory.predict_many(
            [run_config({**row, "step_size": step_size}) for _, row in sgd.iterrows()]
        )
        if all(p.epoch_map.stable for p in predictions):
            expected = np.median([p.epoch_map.fixed_point_loss for p in predictions])
            assert drawn == pytest.approx(expected, rel=1e-9)
        else:
            assert np.isnan(drawn)
    assert np.isnan(curve["fixed_point_loss"].iloc[-1])  # 0.5: unstable


def test_parameter_path_follows_the_logged_iterates(runs, histories, theory_frame):
    fig = parameter_path(runs, histories, theory=theory_frame)
    check_readable(fig)
    assert len(fig.axes) == 2
    for ax, method in zip(fig.axes, ("bgd", "sgd"), strict=True):
        # Default pick: the largest step size whose runs did not diverge, lowest seed.
        row = cell(runs, method, 0.1).sort_values("seed").iloc[0]
        assert ax.get_title().startswith(
            {"bgd": "Batch Gradient Descent", "sgd": "Stochastic Gradient Descent"}[method]
        )
        assert f"step size 0.1, seed 0: {row['outcome']}" in ax.get_title()
        assert ax.get_xlabel() == "w" and ax.get_ylabel() == "b"
        of_run = histories[histories["run_id"] == row["run_id"]]
        (path,) = [line for line in ax.get_lines() if line.get_gid() == figures.PATH_LABEL]
        expected_w = [row["init_w"], *of_run.loc[of_run["key"] == "w", "value"]]
        expected_b = [row["init_b"], *of_run.loc[of_run["key"] == "b", "value"]]
        np.testing.assert_allclose(path.get_xdata(), expected_w)
        np.testing.assert_allclose(path.get_ydata(), expected_b)
        (w_lo, w_hi), (b_lo, b_hi) = ax.get_xlim(), ax.get_ylim()
        assert w_lo <= min(expected_w) and max(expected_w) <= w_hi
        assert b_lo <= min(expected_b) and max(expected_b) <= b_hi
        fit_w, fit_b, _ = least_squares_fit(make_run_data(run_config(row)))
        (fit,) = [line for line in ax.get_lines() if line.get_gid() == figures.FIT_LABEL]
        np.testing.assert_allclose([fit.get_xdata()[0], fit.get_ydata()[0]], [fit_w, fit_b])
        fixed = [line for line in ax.get_lines() if line.get_gid() == figures.FIXED_POINT_LABEL]
        if method == "sgd":  # SGD circles theory's fixed point, far from the fit
            predicted = theory_frame.set_index("run_id").loc[row["run_id"]]
            np.testing.assert_allclose(fixed[0].get_xdata(), [predicted["fixed_point_w"]])
            assert abs(predicted["fixed_point_w"]) > 1e5
        else:
            assert fixed == []
        # BGD's path zig-zags in w: successive steps alternate direction.
        if method == "bgd":
            assert (np.diff(np.sign(np.diff(expected_w))) != 0).sum() > 10


def test_parameter_path_needs_w_and_b_histories(runs, histories):
    blown = cell(runs, "sgd", 1.0)["run_id"].iloc[0]  # no finite (w, b) at all: only its start
    fig = parameter_path(runs, histories, [blown])
    (path,) = [line for line in fig.axes[0].get_lines() if line.get_gid() == figures.PATH_LABEL]
    assert list(path.get_xdata()) == [-10.0]
    with pytest.raises(ValueError, match="keys"):
        parameter_path(runs, histories[histories["key"] == "loss"])


def test_parameter_path_on_symlog_axes(runs, histories):
    row = cell(runs, "sgd", 0.1).iloc[0]
    (ax,) = parameter_path(runs, histories, [row["run_id"]], scale="symlog").axes
    assert ax.get_xscale() == "symlog" and ax.get_yscale() == "symlog"
    (path,) = [line for line in ax.get_lines() if line.get_gid() == figures.PATH_LABEL]
    of_run = histories[(histories["run_id"] == row["run_id"]) & (histories["key"] == "w")]
    np.testing.assert_allclose(path.get_xdata(), [row["init_w"], *of_run["value"]])


def test_the_readability_check_catches_what_it_is_for():
    # The checks above must be able to fail: a legend on a panel, a legend entry without drawn
    # data, a label over the tick labels and a panel over another's labels are each caught.
    def figure(**kwargs) -> tuple[Figure, object]:
        fig = Figure(figsize=(4, 3), **kwargs)
        figures.FigureCanvasAgg(fig)
        return fig, fig.subplots() if kwargs else None

    fig, ax = figure(layout="constrained")
    ax.plot([1, 2], [1, 2], gid="shown")
    ax.legend(handles=[Line2D([], [], label="shown", color="k")], loc="upper left")
    with pytest.raises(AssertionError, match="legend lies on a panel"):
        check_readable(fig)

    fig, ax = figure(layout="constrained")
    ax.plot([1, 2], [1, 2], gid="shown")
    fig.legend(handles=[Line2D([], [], label="ghost", color="k")], loc="outside lower center")
    with pytest.raises(AssertionError, match="'ghost' stands for no data"):
        check_readable(fig)

    # A line through a single point draws nothing; a marker in the legend needs a drawn marker.
    fig, ax = figure(layout="constrained")
    ax.plot([1, 2], [1, 2], color="k")
    ax.plot([1.5], [1.5], gid="alone")
    fig.legend(handles=[Line2D([], [], label="alone", color="k")], loc="outside lower center")
    with pytest.raises(AssertionError, match="'alone' stands for no data"):
        check_readable(fig)
    fig, ax = figure(layout="constrained")
    ax.plot([1, 2], [1, 2], gid="plain")
    fig.legend(
        handles=[Line2D([], [], label="plain", color="k", marker="*")], loc="outside lower center"
    )
    with pytest.raises(AssertionError, match="'plain' shows a marker none draws"):
        check_readable(fig)

    fig, _ = figure()
    ax = fig.add_axes([0.15, 0.25, 0.8, 0.65])
    ax.plot([1, 2], [1, 2])
    ax.set_xticks([1.0, 1.5, 2.0])
    ax.set_xlabel("epoch")
    ax.xaxis.set_label_coords(0.5, -0.06)  # onto the tick label 1.5
    with pytest.raises(AssertionError, match="epoch"):
        check_readable(fig)

    fig, _ = figure()
    for box in ([0.1, 0.1, 0.5, 0.5], [0.35, 0.35, 0.5, 0.5]):
        fig.add_axes(box).plot([1, 2], [1, 2])
    with pytest.raises(AssertionError, match="lies on a panel"):
        check_readable(fig)


# --- report -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(lab: Lab) -> Path:
    """`python -m gdexp.analysis` with its defaults in the lab folder; the report folder."""
    result = run_module(lab.folder, "gdexp.analysis")
    assert result.returncode == 0, result.stderr
    folders = list((lab.folder / "reports").iterdir())
    assert len(folders) == 1
    return folders[0]


def test_report_goes_to_a_folder_named_after_the_latest_sweep(lab: Lab, report: Path):
    assert report.name == re.sub(r"[^\w.-]+", "-", lab.main.info.run_name).strip("-")
    assert {p.name for p in report.iterdir()} == REPORT_FILES
    for name in REPORT_FILES:
        if name.endswith(".png"):
            assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_summary_table_has_a_row_per_method_and_step_size(report: Path, runs):
    table = pd.read_csv(report / "summary.csv")
    assert list(zip(table["method"], table["step_size"], strict=True)) == [
        (m, s) for m in ("bgd", "sgd") for s in STEP_SIZES
    ]
    # Each method's one batch schedule: BGD all 100 points, SGD one, both in data order.
    assert table["batch_size"].tolist() == [100] * 4 + [1] * 4 and not table["shuffle"].any()
    assert (table["runs"] == 2).all() and (table["seeds"] == 2).all()
    rows = table.set_index(["method", "step_size"])
    verdicts = theory_table(runs).set_index("run_id")["verdict"]
    for (method, step_size), row in rows.iterrows():
        runs_here = cell(runs, method, step_size)
        for outcome in OUTCOMES:
            assert row[outcome] == (runs_here["outcome"] == outcome).mean()
        assert row["median_final_loss"] == pytest.approx(runs_here["final_loss"].median())
        assert row["final_w_mean"] == pytest.approx(runs_here["final_w"].mean(), nan_ok=True)
        agreeing = [
            outcome in AGREES[verdicts[run_id]]
            for run_id, outcome in zip(runs_here["run_id"], runs_here["outcome"], strict=True)
        ]
        assert row["theory_agrees"] == sum(agreeing)
    assert rows.loc[("bgd", 1.0), "diverged"] == 1.0
    assert np.isposinf(rows.loc[("bgd", 1.0), "median_final_loss"])
    assert rows.loc[("sgd", 0.1), "theory_verdict"] == "settles high"
    assert rows.loc[("sgd", 0.1), "oscillating"] == 1.0
    assert rows.loc[("sgd", 0.05), "stalled"] == 1.0
    assert rows.loc[("bgd", 1.0), "theory_verdict"] == "diverges"
    assert np.isnan(rows.loc[("bgd", 1.0), "theory_fixed_point_loss"])  # unstable: no level
    assert rows.loc[("sgd", 0.1), "theory_fixed_point_loss"] > 1e10

    markdown = (report / "summary.md").read_text().splitlines()
    assert markdown[0].startswith("| Method | Step size | Runs | Outcomes |")
    assert [line.split(" | ")[:2] for line in markdown[2:]] == [
        [f"| {m}", f"{s:g}"] for m in ("BGD", "SGD") for s in STEP_SIZES
    ]


def test_spectral_radius_is_never_rounded_across_1():
    assert format_radius(0.9998) == "0.9998"
    assert format_radius(0.99998) == "0.99998"
    assert format_radius(0.999999996) == "0.999999996"
    assert format_radius(1.00002) == "1.00002"
    assert format_radius(1.0) == "1"
    assert format_radius(0.29242731) == "0.2924"
    assert format_radius(15.6707) == "15.67"
    assert format_radius(2.67e101) == "2.67e+101"
    assert format_radius(float("inf")) == "∞"


def outcome_words(counts: dict[str, int]) -> str:
    """How the report says a tally: outcomes in OUTCOMES order, empty ones left out."""
    return ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts.get(o))


def test_the_reports_words_agree_with_its_table_and_the_tags(lab: Lab, report: Path, runs):
    text = (report / "report.md").read_text()
    table = (report / "summary.md").read_text().splitlines()[2:]
    verdicts = theory_table(runs).set_index("run_id")["verdict"]
    children = {r.info.run_id: r.data.tags["outcome"] for r in lab.children(lab.main)}
    # The headline's tally is the tags' tally.
    tags = pd.Series(list(children.values())).value_counts().to_dict()
    assert f"{N_MAIN} runs ({outcome_words(tags)}; 0 failed or killed)" in text
    findings = [line for line in text.splitlines() if line.startswith("- **")]
    assert len(findings) == len(table) == 2 * len(STEP_SIZES)
    for finding, row in zip(findings, table, strict=True):
        method, step = row.split(" | ")[0].removeprefix("| "), row.split(" | ")[1]
        assert finding.startswith(f"- **{method}, step size {step}**")
        here = cell(runs, method.lower(), float(step))
        counts = here["outcome"].value_counts().to_dict()
        assert {children[r] for r in here["run_id"]} == set(counts)
        words = outcome_words(counts)
        # The sentence, the table's Outcomes cell and the runs' tags say the same.
        assert f"2 runs: {words};" in finding and f" | {words} | " in row
        agree = all(
            o in AGREES[verdicts[r]] for r, o in zip(here["run_id"], here["outcome"], strict=True)
        )
        assert ("All runs ended as theory says" in finding) == agree
        verdict = verdicts[here["run_id"].iloc[0]]
        assert f"Theory: {verdict} (ρ(M) = " in finding
        # Theory's words are about theory: "stays finite" only where its map is stable.
        assert ("stays finite" in finding) == (verdict == "settles high")
        rho = theory_table(here)["spectral_radius"].median()
        assert f"ρ(M) = {format_radius(rho)}" in finding and f"ρ = {format_radius(rho)}" in row


def test_report_md_embeds_the_figures_and_table(lab: Lab, report: Path):
    text = (report / "report.md").read_text()
    for name in ("loss_curves", "step_size_map", "parameter_path"):
        assert f"]({name}.png)" in text
    assert (report / "summary.md").read_text() in text
    assert lab.main.data.tags["command"] in text
    assert "settles high" in text
    for outcome in OUTCOMES:  # the key to the outcomes
        assert f"*{outcome}*: " in text


def test_report_is_logged_on_the_sweeps_parent_run(lab: Lab, report: Path):
    logged = lab.client.list_artifacts(lab.main.info.run_id, "analysis")
    assert {Path(a.path).name for a in logged} == REPORT_FILES
    for run in (lab.earlier, lab.single):
        assert not lab.client.list_artifacts(run.info.run_id, "analysis")


def test_without_sweeps_the_report_covers_all_runs(gdexp_cli, store, monkeypatch):
    assert gdexp_cli("method=bgd", "step_size=0.05", NO_STEP_LOSS).returncode == 0
    monkeypatch.chdir(store.folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main([]) == 0
    folder = store.folder / "reports" / "all"
    assert {p.name for p in folder.iterdir()} == REPORT_FILES
    table = pd.read_csv(folder / "summary.csv")
    assert list(table["method"]) == ["bgd"] and list(table["runs"]) == [1]
    assert "all runs" in (folder / "report.md").read_text()
    (run,) = store.runs()
    assert not store.client.list_artifacts(run.info.run_id, "analysis")
