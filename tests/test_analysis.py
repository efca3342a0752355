"""gdexp.analysis on real runs: loading, figures, the report and its CLI, and its errors.

One module-scoped lab folder holds a single run, a small earlier sweep and the main sweep
(bgd, sgd x step size 0.01, 0.1, 1 x seed 0, 1: converging, converged, settling high, and
blowing up to infinity all occur), run once as real `python -m gdexp` subprocesses.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import clean_env
from mlflow.entities import Param, Run
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from gdexp import theory
from gdexp.analysis import (
    ExperimentNotFound,
    NoRuns,
    StoreNotFound,
    SweepNotFound,
    load_histories,
    load_runs,
    loss_curves,
    parameter_path,
    run_config,
    step_size_map,
    theory_table,
)
from gdexp.analysis import load as load_module
from gdexp.analysis.figures import DIVERGED_TOP, THEORY_SGD_LABEL
from gdexp.analysis.report import main, summary_table
from gdexp.config import RunConfig
from gdexp.data import make_run_data
from gdexp.data import least_squares_fit

pytestmark = pytest.mark.slow

NO_STEP_LOSS = "tracking.log_step_loss=false"
MAIN_SWEEP = ("-m", "method=bgd,sgd", "step_size=0.01,0.1,1", "seed=0,1", NO_STEP_LOSS)
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
    assert len(children) == 12
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

    assert sorted(runs["step_size"].unique()) == [0.01, 0.1, 1.0]
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
    blew_up = cell(runs, "bgd", 1.0)
    assert len(blew_up) == 2
    assert np.isposinf(blew_up["final_loss"]).all()
    assert blew_up["diverged_at_epoch"].notna().all()
    # SGD at 0.1 is labelled diverged, but its loss stayed finite: it is not inf.
    settled = cell(runs, "sgd", 0.1)
    assert (settled["outcome"] == "diverged").all()
    assert np.isfinite(settled["final_loss"]).all() and (settled["final_loss"] > 1e6).all()
    assert settled["diverged_at_epoch"].isna().all()
    fine = runs[runs["outcome"] != "diverged"]
    assert len(fine) == 6 and (fine["final_loss"] < fine["initial_loss"]).all()


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
    assert len(everything) == 12 + 2 + 1
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
    assert len(finite) == 8
    for run_id in finite["run_id"]:
        of_run = histories[histories["run_id"] == run_id]
        assert list(of_run.loc[of_run["key"] == "loss", "step"]) == list(range(20))
        assert list(of_run.loc[of_run["key"] == "w", "step"]) == list(range(1, 21))
        assert list(of_run.loc[of_run["key"] == "b", "step"]) == list(range(1, 21))
    run_id = cell(runs, "sgd", 0.1)["run_id"].iloc[0]
    expected = sorted((m.step, m.value) for m in lab.client.get_metric_history(run_id, "loss"))
    got = histories[(histories["run_id"] == run_id) & (histories["key"] == "loss")]
    assert list(zip(got["step"], got["value"], strict=True)) == expected


def test_bulk_and_per_run_loading_agree(lab: Lab, runs, histories, monkeypatch):
    per_run = load_histories(runs, keys=("loss", "w", "b"), bulk=False)
    pd.testing.assert_frame_equal(per_run, histories)
    monkeypatch.setattr(load_module, "_BULK_CHUNK", 5)  # 12 runs: bulk queries of 5, 5 and 2
    pd.testing.assert_frame_equal(load_histories(runs, keys=("loss", "w", "b")), histories)
    ids = list(runs["run_id"][:3])
    from_ids = load_histories(ids, keys="loss", tracking_uri=lab.uri)
    assert set(from_ids["run_id"]) == set(ids) and set(from_ids["key"]) == {"loss"}


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
    (summary,) = summary_table(load_runs(tracking_uri=store.uri)).itertuples()
    assert (summary.runs, summary.failed, summary.converged, summary.diverged) == (1, 1, 0, 0)


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


# --- figures ----------------------------------------------------------------------------------


def step_lines(ax) -> list:
    return [line for line in ax.get_lines() if line.get_label().startswith("step size")]


def test_loss_curves_show_median_and_band_per_step_size(runs, histories):
    fig = loss_curves(runs, histories)
    assert [ax.get_title() for ax in fig.axes] == [
        "Batch Gradient Descent",
        "Stochastic Gradient Descent",
    ]
    loss = histories[histories["key"] == "loss"].merge(runs, on="run_id")
    for ax, method in zip(fig.axes, ("bgd", "sgd"), strict=True):
        assert ax.get_xlabel() == "Epoch" and ax.get_ylabel() == "Cost/Total loss"
        assert ax.get_yscale() == "log"
        lines, bands = step_lines(ax), ax.collections
        assert [line.get_label().split(" (")[0] for line in lines] == [
            "step size 0.01",
            "step size 0.1",
            "step size 1",
        ]
        assert len(bands) == 3
        for line, band, step_size in zip(lines, bands, (0.01, 0.1, 1.0), strict=True):
            table = cell(loss, method, step_size).pivot(
                index="step", columns="run_id", values="value"
            )
            np.testing.assert_array_equal(line.get_xdata(), table.index)
            np.testing.assert_allclose(line.get_ydata(), table.median(axis=1))
            edges = band.get_paths()[0].vertices[:, 1]
            assert edges.max() == pytest.approx(table.max().max())
            assert edges.min() == pytest.approx(table.min().min())


def test_loss_curves_panels_follow_method_order_and_only_present_methods():
    names = ("minibatch", "bgd", "sgd")
    fake_runs = pd.DataFrame(
        {
            "run_id": list(names),
            "method": list(names),
            "step_size": [0.1, 0.1, 0.1],
            "optimal_loss": [0.2, 0.2, 0.2],
        }
    )
    fake_history = pd.DataFrame(
        [(r, "loss", s, 10.0 / (s + 1)) for r in names for s in range(5)],
        columns=["run_id", "key", "step", "value"],
    )
    titles = [ax.get_title() for ax in loss_curves(fake_runs, fake_history).axes]
    assert titles == [
        "Batch Gradient Descent",
        "Stochastic Gradient Descent",
        "Mini-batch Gradient Descent",
    ]
    two = loss_curves(fake_runs[fake_runs["method"] != "bgd"], fake_history)
    assert [ax.get_title() for ax in two.axes] == titles[1:]


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
    (median,) = [line for line in ax.get_lines() if line.get_label() == "SGD median over seeds"]
    assert median.get_ydata()[1] == pytest.approx(three.median())

    sgd_panel = loss_curves(runs3, histories3).axes[1]
    line = step_lines(sgd_panel)[1]
    assert "3 runs" in line.get_label()
    table = histories3[
        histories3["run_id"].isin(runs3.loc[three.index, "run_id"]) & (histories3["key"] == "loss")
    ].pivot(index="step", columns="run_id", values="value")
    np.testing.assert_allclose(line.get_ydata(), table.median(axis=1))
    assert not np.allclose(line.get_ydata()[1:], table.mean(axis=1)[1:])


def reference_x() -> np.ndarray:
    return -5.0 + 0.1 * np.arange(100)  # the default data: x_start + x_step * [0 .. 99]


def test_step_size_map_draws_runs_medians_thresholds_and_theory(runs, theory_frame):
    fig = step_size_map(runs, theory_frame)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "Step size" and "loss" in ax.get_ylabel()
    lines = {line.get_label(): line for line in ax.get_lines()}

    # Thresholds, computed here from the data's x alone.
    x = reference_x()
    hessian = 2 / len(x) * np.array([[np.sum(x * x), np.sum(x)], [np.sum(x), len(x)]])
    expected = {
        "BGD threshold": 2 / np.linalg.eigvalsh(hessian)[-1],
        "SGD threshold": np.min(1 / (x**2 + 1)),
    }
    for words, value in expected.items():
        (label,) = [label for label in lines if label.startswith(words)]
        np.testing.assert_allclose(lines[label].get_xdata(), [value, value], rtol=1e-9)
        assert f"{value:.3g}" in label

    for method, short in (("bgd", "BGD"), ("sgd", "SGD")):
        median = lines[f"{short} median over seeds"]
        expected_median = runs[runs["method"] == method].groupby("step_size")["final_loss"]
        expected_median = expected_median.median()
        np.testing.assert_array_equal(median.get_xdata(), [0.01, 0.1, 1.0])
        np.testing.assert_allclose(
            median.get_ydata(),
            np.where(np.isfinite(expected_median), expected_median, np.nan),
        )

    collections = {c.get_label(): c for c in ax.collections}
    for short in ("BGD", "SGD"):  # step size 1 blew up for both: an x at the top, per run
        marks = collections[f"{short} runs diverged to ∞ (at top)"]
        offsets = marks.get_offsets()
        np.testing.assert_allclose(offsets[:, 0], [1.0, 1.0])
        assert (offsets[:, 1] <= DIVERGED_TOP).all() and (offsets[:, 1] > 0.5).all()
    grew = collections["SGD runs diverged (loss grew, stayed finite)"].get_offsets()
    settled = cell(runs, "sgd", 0.1)
    assert sorted(map(tuple, np.asarray(grew))) == sorted(
        zip(settled["step_size"], settled["final_loss"], strict=True)
    )

    # Theory's SGD fixed-point loss at the swept step sizes where its epoch map is stable.
    sgd_line = lines[THEORY_SGD_LABEL]
    np.testing.assert_array_equal(sgd_line.get_xdata(), [0.01, 0.1])
    for step_size, drawn in zip([0.01, 0.1], sgd_line.get_ydata(), strict=True):
        predicted = [
            theory.predict(
                OmegaConf.merge(
                    OmegaConf.structured(RunConfig),
                    {"method": {"name": "sgd", "batch_size": 1}, "step_size": step_size, "seed": s},
                )
            ).epoch_map.fixed_point_loss
            for s in (0, 1)
        ]
        assert drawn == pytest.approx(np.median(predicted), rel=1e-9)


def test_parameter_path_follows_the_logged_iterates(runs, histories, theory_frame):
    fig = parameter_path(runs, histories, theory=theory_frame)
    assert len(fig.axes) == 2
    for ax, method in zip(fig.axes, ("bgd", "sgd"), strict=True):
        # Default pick: the largest step size whose loss stayed finite, lowest seed.
        row = cell(runs, method, 0.1).sort_values("seed").iloc[0]
        assert ax.get_title().startswith(
            {"bgd": "Batch Gradient Descent", "sgd": "Stochastic Gradient Descent"}[method]
        )
        assert "step size 0.1, seed 0" in ax.get_title()
        assert ax.get_xlabel() == "w" and ax.get_ylabel() == "b"
        of_run = histories[histories["run_id"] == row["run_id"]]
        (path,) = [line for line in ax.get_lines() if line.get_label().startswith("(w, b)")]
        expected_w = [row["init_w"], *of_run.loc[of_run["key"] == "w", "value"]]
        expected_b = [row["init_b"], *of_run.loc[of_run["key"] == "b", "value"]]
        np.testing.assert_allclose(path.get_xdata(), expected_w)
        np.testing.assert_allclose(path.get_ydata(), expected_b)
        assert len(ax.collections) >= 1  # the loss contours
        (w_lo, w_hi), (b_lo, b_hi) = ax.get_xlim(), ax.get_ylim()
        assert w_lo <= min(expected_w) and max(expected_w) <= w_hi
        assert b_lo <= min(expected_b) and max(expected_b) <= b_hi
        fixed = [line for line in ax.get_lines() if "fixed point" in line.get_label()]
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
    (path,) = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("(w, b)")]
    assert list(path.get_xdata()) == [-10.0]
    with pytest.raises(ValueError, match="keys"):
        parameter_path(runs, histories[histories["key"] == "loss"])


def test_parameter_path_on_symlog_axes(runs, histories):
    row = cell(runs, "sgd", 0.1).iloc[0]
    (ax,) = parameter_path(runs, histories, [row["run_id"]], scale="symlog").axes
    assert ax.get_xscale() == "symlog" and ax.get_yscale() == "symlog"
    (path,) = [line for line in ax.get_lines() if line.get_label().startswith("(w, b)")]
    of_run = histories[(histories["run_id"] == row["run_id"]) & (histories["key"] == "w")]
    np.testing.assert_allclose(path.get_xdata(), [row["init_w"], *of_run["value"]])


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
        (m, s) for m in ("bgd", "sgd") for s in (0.01, 0.1, 1.0)
    ]
    assert (table["runs"] == 2).all() and (table["seeds"] == 2).all()
    rows = table.set_index(["method", "step_size"])
    for (method, step_size), row in rows.iterrows():
        runs_here = cell(runs, method, step_size)
        for outcome in ("converged", "converging", "diverged"):
            assert row[outcome] == (runs_here["outcome"] == outcome).mean()
        assert row["median_final_loss"] == pytest.approx(runs_here["final_loss"].median())
        assert row["final_w_mean"] == pytest.approx(runs_here["final_w"].mean(), nan_ok=True)
    assert rows.loc[("bgd", 1.0), "diverged"] == 1.0
    assert np.isposinf(rows.loc[("bgd", 1.0), "median_final_loss"])
    assert rows.loc[("sgd", 0.1), "theory_verdict"] == "settles high"
    assert rows.loc[("bgd", 1.0), "theory_verdict"] == "diverges"
    assert np.isnan(rows.loc[("bgd", 1.0), "theory_fixed_point_loss"])  # unstable: no level
    assert rows.loc[("sgd", 0.1), "theory_fixed_point_loss"] > 1e10

    markdown = (report / "summary.md").read_text().splitlines()
    assert markdown[0].startswith("| Method | Step size |")
    assert [line.split(" | ")[:2] for line in markdown[2:]] == [
        [f"| {m}", s] for m in ("BGD", "SGD") for s in ("0.01", "0.1", "1")
    ]


def test_report_md_embeds_the_figures_and_table(lab: Lab, report: Path):
    text = (report / "report.md").read_text()
    for name in ("loss_curves", "step_size_map", "parameter_path"):
        assert f"]({name}.png)" in text
    assert (report / "summary.md").read_text() in text
    assert lab.main.data.tags["command"] in text
    assert "settles high" in text


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
