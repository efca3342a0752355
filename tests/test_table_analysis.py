"""gdexp.analysis on table sweeps (`tracking.record=table`: one parent run, no child runs, every
config a row of the parent's results.parquet without a run id): loading every config typed,
their histories by config index, theory, the report (phase map, edge table, a bounded summary),
an interrupted sweep's partial table, and one real table sweep end to end.

The lab: a real SQLite store in a temp folder holding two table sweeps made through
MlflowClient, with the tags, params, metrics and artifacts a table sweep's parent carries. Their
240 configs (mini-batch GD at batch sizes 1, 10, 100, in data order and shuffled, 8 step sizes,
5 seeds, 10 epochs) are trained for real (gdexp.train.train_arrays, gdexp.outcome.summarize_many)
and written row by row with gdexp.table.run_row, in an order other than their config index. The
second sweep was interrupted: its parent is KILLED and its table holds the first 100 configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from gdexp import names, table
from gdexp.analysis import AnalysisError, NoRuns, load_histories, load_runs, report, tables
from gdexp.analysis import edges as edge_module
from gdexp.analysis.figures import phase_map
from gdexp.analysis.load import CONFIG_HISTORY_COLUMNS, RUN_COLUMNS
from gdexp.config import MethodConfig, RunConfig
from gdexp.data import least_squares_fit, make_run_data
from gdexp.outcome import OUTCOMES, summarize_many
from gdexp.theory import predict_settings
from gdexp.train import train_arrays

BATCH_SIZES = (1, 10, 100)
ORDERS = (False, True)
STEP_SIZES = tuple(float(s) for s in np.geomspace(0.01, 0.3, 8))
SEEDS = tuple(range(5))
EPOCHS = 10
N_CONFIGS = len(BATCH_SIZES) * len(ORDERS) * len(STEP_SIZES) * len(SEEDS)  # 240
N_PARTIAL = 100  # configs the interrupted sweep finished
COMPLETE, INTERRUPTED = "sweep complete (240 configs)", "sweep interrupted (240 configs)"


def train_grid() -> list[dict]:
    """Every config's table row (gdexp.table.run_row), in grid order, config_index set."""
    datasets, optimal = {}, {}
    for seed in SEEDS:
        data = make_run_data(OmegaConf.structured(RunConfig(seed=seed)))
        datasets[seed], optimal[seed] = data, least_squares_fit(data)[2]
    rows = []
    for batch_size in BATCH_SIZES:
        for shuffle in ORDERS:
            step, seed = (a.ravel() for a in np.meshgrid(STEP_SIZES, SEEDS, indexing="ij"))
            batch = train_arrays(
                [datasets[s] for s in SEEDS], step,
                np.full(step.size, -10.0), np.full(step.size, -20.0), seed,
                data_index=seed, epochs=EPOCHS, batch_size=batch_size, shuffle=shuffle,
                dtype="float32", record_steps=False,
            )  # fmt: skip
            summaries = summarize_many(batch, [optimal[s] for s in seed], 1e-3)
            for c in range(len(batch)):
                cfg = OmegaConf.structured(
                    RunConfig(
                        method=MethodConfig("minibatch", batch_size, shuffle),
                        step_size=float(step[c]),
                        seed=int(seed[c]),
                        epochs=EPOCHS,
                    )
                )
                row = table.run_row(cfg, batch.trajectory(c), summaries.summary(c), None)
                rows.append({**row, "config_index": len(rows)})
    return rows


@dataclass
class Lab:
    folder: Path
    uri: str
    client: MlflowClient
    complete: str  # parent run ids
    interrupted: str
    rows: list[dict]  # the complete sweep's table rows, by config index

    def table(self, parent: str) -> pd.DataFrame:
        path = self.client.download_artifacts(parent, names.TABLE_ARTIFACT, str(self.folder))
        return pq.read_table(path).to_pandas()


def log_table_sweep(
    client: MlflowClient, experiment_id: str, folder: Path, name: str, rows: list[dict], status: str
) -> str:
    """A table sweep's parent run as gdexp makes one: tags, axis params, outcome counts, and its
    table (rows in a shuffled order), edges and phase map at the root of its artifacts."""
    parent = client.create_run(
        experiment_id,
        run_name=name,
        tags={
            names.KIND_TAG: names.SWEEP_KIND,
            names.RECORD_TAG: names.RECORD_TABLE,
            names.COMMAND_TAG: "python -m gdexp -m tracking.record=table ...",
        },
    ).info.run_id
    rows = [{**row, "parent_run_id": parent} for row in rows]
    order = np.random.default_rng(0).permutation(len(rows))
    here = folder / parent
    here.mkdir()
    table.write_table([rows[i] for i in order], here / names.TABLE_ARTIFACT)
    results = pd.DataFrame(rows)
    edges = edge_module.measured_edges(results)
    (here / names.EDGES_ARTIFACT).write_text(edge_module.edge_table_csv(edges))
    phase_map(results, edges).savefig(here / names.PHASE_MAP_ARTIFACT, dpi=50)
    counts = results["outcome"].value_counts()
    client.log_batch(
        parent,
        params=[
            Param("axis.method.batch_size", "1, 10, 100"),
            Param("axis.method.shuffle", "false, true"),
            Param("axis.step_size", "8 values, 0.01 ... 0.3"),
            Param("axis.seed", "range(0, 5)"),
        ],
        metrics=[Metric(f"configs_{o}", float(counts.get(o, 0)), 0, 0) for o in OUTCOMES]
        + [Metric("configs_total", float(N_CONFIGS), 0, 0)],
    )
    for artifact in (names.TABLE_ARTIFACT, names.EDGES_ARTIFACT, names.PHASE_MAP_ARTIFACT):
        client.log_artifact(parent, str(here / artifact))
    client.set_terminated(parent, status)
    return parent


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    folder = tmp_path_factory.mktemp("tables")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(
        "gdexp", artifact_location=(folder / "mlartifacts").as_uri()
    )
    rows = train_grid()
    interrupted = log_table_sweep(
        client, experiment_id, folder, INTERRUPTED, rows[:N_PARTIAL], "KILLED"
    )
    complete = log_table_sweep(client, experiment_id, folder, COMPLETE, rows, "FINISHED")
    return Lab(folder, uri, client, complete, interrupted, rows)


@pytest.fixture(scope="module")
def configs(lab: Lab) -> pd.DataFrame:
    return load_runs(sweep=COMPLETE, tracking_uri=lab.uri)


def by_index(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("config_index").sort_index()


# --- loading ----------------------------------------------------------------------------------


def test_the_lab_is_what_the_tests_need(lab: Lab):
    outcomes = {row["outcome"] for row in lab.rows}
    assert {"converged", "diverged"} <= outcomes and len(outcomes) >= 3
    assert any(math.isinf(row["final_loss"]) for row in lab.rows)  # blew up: inf, NaN lists
    assert any(not np.isfinite(row["w"]).all() for row in lab.rows)
    written = lab.table(lab.complete)["config_index"].tolist()
    assert sorted(written) == list(range(N_CONFIGS)) and written != sorted(written)


def test_a_table_sweep_loads_one_typed_row_per_config(lab: Lab, configs: pd.DataFrame):
    assert len(configs) == N_CONFIGS
    assert list(configs.columns) == list(RUN_COLUMNS)
    assert configs.dtypes.astype(str).to_dict() == RUN_COLUMNS
    assert str(configs["config_index"].dtype) == "Int64"
    assert sorted(configs["config_index"]) == list(range(N_CONFIGS))
    # No run id is made up: a table sweep's configs have none, nor a name or a start time.
    assert configs["run_id"].map(lambda v: v is None).all()
    assert configs["run_name"].map(lambda v: v is None).all()
    assert configs["start_time"].isna().all()
    assert (configs["parent_run_id"] == lab.complete).all()
    assert (configs["status"] == "FINISHED").all()
    assert configs.attrs["source"] == "table"
    sweep = configs.attrs["sweep"]
    assert (sweep["run_id"], sweep["record"], sweep["status"]) == (
        lab.complete,
        names.RECORD_TABLE,
        "FINISHED",
    )
    assert sweep["axes"]["step_size"] == "8 values, 0.01 ... 0.3"
    # Sorted as every load_runs frame: method, step size, seed, ..., then the config index.
    key = configs[["step_size", "seed"]].to_records(index=False).tolist()
    assert key == sorted(key)


def test_every_value_is_the_tables(lab: Lab, configs: pd.DataFrame):
    table_rows = pd.DataFrame(lab.rows).set_index("config_index").sort_index()
    loaded = by_index(configs)
    for column in (*table.CONFIG_COLUMNS, "status", "outcome"):
        assert loaded[column].tolist() == table_rows[column].tolist(), column
    for column in ("initial_loss", "final_w", "final_b", "optimal_loss", "final_loss"):
        wrote = table_rows[column].to_numpy(dtype=np.float64)
        got = loaded[column].to_numpy(dtype=np.float64)
        finite = np.isfinite(wrote)
        np.testing.assert_array_equal(got[finite], wrote[finite], err_msg=column)
        if column == "final_loss":  # a config that blew up ended at +inf
            assert np.isposinf(got[~finite]).all() and (~finite).any()
        else:  # as MLflow would hold it: what is not finite is unknown
            assert np.isnan(got[~finite]).all(), column
    diverged = table_rows["diverged_at_epoch"]
    assert loaded["diverged_at_epoch"].isna().tolist() == diverged.isna().tolist()
    known = diverged.notna()
    assert loaded["diverged_at_epoch"][known].astype(int).tolist() == diverged[known].tolist()


def test_histories_of_table_configs_are_keyed_by_config_index(lab: Lab, configs: pd.DataFrame):
    histories = load_histories(configs, keys=("loss", "w", "b"))
    assert list(histories.columns) == list(CONFIG_HISTORY_COLUMNS)
    assert histories.dtypes.astype(str).tolist() == ["int64", "object", "int64", "float64"]
    # Ordered as the frame's configs, then key, then step.
    assert list(histories["config_index"].drop_duplicates()) == list(configs["config_index"])
    first_step = {"loss": 0, "w": 1, "b": 1}
    for row in lab.rows:
        of_config = histories[histories["config_index"] == row["config_index"]]
        kept = [k for k in ("loss", "w", "b") if np.isfinite(np.asarray(row[k], float)).any()]
        assert list(of_config["key"].drop_duplicates()) == kept
        for key in ("loss", "w", "b"):
            values = np.asarray(row[key], dtype=np.float64)
            steps = np.arange(len(values)) + first_step[key]
            finite = np.isfinite(values)  # non-finite points left out, as MLflow leaves them
            got = of_config[of_config["key"] == key]
            assert got["step"].tolist() == steps[finite].tolist()
            np.testing.assert_array_equal(got["value"].to_numpy(), values[finite])
    # Some of the frame, keys in the order asked for.
    some = configs.iloc[::37]
    part = load_histories(some, keys=("w", "loss"))
    assert list(part["config_index"].drop_duplicates()) == list(some["config_index"])
    first = part[part["config_index"] == some["config_index"].iloc[0]]
    assert list(first["key"].drop_duplicates()) == ["w", "loss"]


def test_what_a_table_sweep_does_not_have_is_a_clear_error(lab: Lab, configs: pd.DataFrame):
    with pytest.raises(AnalysisError, match="table sweep"):
        load_runs(sweep=COMPLETE, tracking_uri=lab.uri, source="runs")
    with pytest.raises(AnalysisError, match="no MLflow runs"):
        load_histories(configs, source="runs")
    with pytest.raises(AnalysisError, match="step_loss"):
        load_histories(configs, keys=("loss", "step_loss"))
    # Its configs are no runs of the experiment.
    with pytest.raises(NoRuns, match="holds no runs"):
        load_runs(tracking_uri=lab.uri)
    # source="table" reads the same frame as "auto".
    pd.testing.assert_frame_equal(
        load_runs(sweep=COMPLETE, tracking_uri=lab.uri, source="table"), configs
    )


def test_an_interrupted_table_sweep_loads_what_its_table_holds(lab: Lab):
    partial = load_runs(sweep=INTERRUPTED, tracking_uri=lab.uri)
    assert partial.attrs["sweep"]["status"] == "KILLED"
    assert sorted(partial["config_index"]) == list(range(N_PARTIAL))
    assert (partial["parent_run_id"] == lab.interrupted).all()
    histories = load_histories(partial, keys=("loss",))
    assert set(histories["config_index"]) == set(range(N_PARTIAL))
    # Its configs are the complete sweep's first ones, value for value.
    complete = by_index(load_runs(sweep=COMPLETE, tracking_uri=lab.uri)).loc[: N_PARTIAL - 1]
    same = [c for c in RUN_COLUMNS if c not in ("parent_run_id", "config_index")]
    ours, theirs = by_index(partial)[same], complete[same]
    ours.attrs, theirs.attrs = {}, {}
    pd.testing.assert_frame_equal(ours, theirs)


def test_theory_per_config_is_gdexp_theorys(configs: pd.DataFrame):
    theory = tables.theory_table(configs)
    assert len(theory) == len(configs)
    assert theory["config_index"].tolist() == configs["config_index"].tolist()
    predictions = predict_settings(tables._settings(configs))
    assert set(theory["verdict"]) >= {"converges", "diverges"}
    for row, p in zip(theory.itertuples(), predictions, strict=True):
        assert (row.verdict, row.stable, row.batch_size) == (
            p.verdict,
            p.epoch_map.stable,
            p.batch_size,
        )
        for name in ("spectral_radius", "transient_gain", "fixed_point_loss", "fixed_point_w"):
            np.testing.assert_equal(getattr(row, name), getattr(p.epoch_map, name))
        assert (row.bgd_threshold, row.sgd_threshold) == (p.bgd_threshold, p.sgd_threshold)


# --- the report -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written(lab: Lab, configs: pd.DataFrame, tmp_path_factory) -> report.Report:
    return report.write_report(configs, tmp_path_factory.mktemp("report"), dpi=60)


def test_a_table_sweeps_report_has_the_phase_map_and_the_edge_table(
    written: report.Report, configs: pd.DataFrame
):
    names_written = {p.name for p in written.folder.iterdir()}
    assert names_written == {
        "report.md",
        "summary.csv",
        "summary.md",
        names.EDGES_ARTIFACT,
        names.PHASE_MAP_ARTIFACT,
    }
    assert {p.name for p in written.files} == names_written
    assert (written.folder / names.PHASE_MAP_ARTIFACT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The edge table: measured on every config, theory on the 5 seeds' data.
    theory = edge_module.theory_edges(
        (100, -5.0, 0.1, -5.0, 0.0, 0.4), list(SEEDS), list(BATCH_SIZES)
    )
    expected = edge_module.edge_table_csv(edge_module.edge_table(configs, theory))
    assert written.edges_csv.read_text() == expected
    edges = pd.read_csv(written.edges_csv)
    assert len(edges) == len(BATCH_SIZES) * len(ORDERS) * len(edge_module.EVENTS)
    text = written.report.read_text()
    assert f"]({names.PHASE_MAP_ARTIFACT})" in text
    assert "computed on the data of all 5 seeds" in text
    for row in edges.itertuples():  # a Markdown row per edge-table row
        assert f"| {row.batch_size} | {row.order} | {row.event} | " in text
    assert "loss_curves.png" not in text


def test_a_table_sweeps_summary_counts_every_config(written: report.Report, configs):
    summary = pd.read_csv(written.summary_csv)
    keys = ["batch_size", "shuffle", "step_size"]
    assert len(summary) == len(BATCH_SIZES) * len(ORDERS) * len(STEP_SIZES)
    assert (summary["runs"] == len(SEEDS)).all() and summary["runs"].sum() == N_CONFIGS
    theory = tables.theory_table(configs)
    agrees = [
        outcome in report.AGREES[verdict]
        for outcome, verdict in zip(configs["outcome"], theory["verdict"], strict=True)
    ]
    counted = configs.assign(agrees=agrees).groupby(keys)
    merged = summary.set_index(keys)
    for key, cell in counted:
        row = merged.loc[key]
        for outcome in OUTCOMES:
            assert row[outcome] == (cell["outcome"] == outcome).mean()
        assert row["theory_agrees"] == cell["agrees"].sum()
    # Up to MAX_MARKDOWN_ROWS rows, summary.md has them all, each naming its batch schedule,
    # and report.md a sentence per row.
    markdown = written.summary_md.read_text().splitlines()
    assert markdown[0].startswith("| Method | Step size | Configs | Outcomes |")
    assert [line.split(" | ")[:2] for line in markdown[2:]] == [
        [f"| Mini-batch, batch {b}, {'shuffled' if s else 'data order'}", f"{step:g}"]
        for b, s, step in summary[["batch_size", "shuffle", "step_size"]].itertuples(index=False)
    ]
    text = written.report.read_text()
    findings = [line for line in text.splitlines() if line.startswith("- **")]
    assert len(findings) == len(summary)
    assert findings[0].startswith(
        "- **Mini-batch, batch 1, data order, step size 0.01**: 5 configs"
    )
    # The headline adds up every config.
    tally = configs["outcome"].value_counts()
    words = ", ".join(f"{tally[o]:,} {o}" for o in OUTCOMES if o in tally)
    assert f"{N_CONFIGS:,} configs ({words}; 0 failed or killed)" in text
    assert f"{sum(agrees):,} of {N_CONFIGS:,} ended as theory says" in text


def test_a_dense_summary_is_compact_in_markdown(configs, tmp_path: Path, monkeypatch):
    # Past MAX_MARKDOWN_ROWS the Markdown has a row per batch schedule; the CSV has them all.
    monkeypatch.setattr(report, "MAX_MARKDOWN_ROWS", 20)
    done = report.write_report(configs, tmp_path, dpi=40)
    markdown = done.summary_md.read_text().splitlines()
    assert markdown[0].startswith("| Method | Batch size | Order | Step sizes | Configs |")
    schedules = [line.split(" | ")[1:3] for line in markdown[2:]]
    assert schedules == [[str(b), o] for b in BATCH_SIZES for o in ("data order", "shuffled")]
    assert len(pd.read_csv(done.summary_csv)) == len(BATCH_SIZES) * len(ORDERS) * len(STEP_SIZES)
    text = done.report.read_text()
    assert done.summary_md.read_text() in text
    findings = [line for line in text.splitlines() if line.startswith("- **")]
    assert len(findings) == len(schedules)  # a sentence per schedule, not per row
    for line, (batch, order) in zip(findings, schedules, strict=True):
        assert line.startswith(f"- **Mini-batch, batch {batch}, {order}**: 40 configs")


def test_an_interrupted_sweeps_report_says_what_it_covers(lab: Lab, tmp_path: Path):
    partial = load_runs(sweep=INTERRUPTED, tracking_uri=lab.uri)
    text = report.write_report(partial, tmp_path, dpi=40).report.read_text()
    assert f"did not finish (KILLED): its table holds the {N_PARTIAL} configs" in text
    assert f": {N_PARTIAL} configs (" in text


def test_the_command_reports_a_table_sweep_and_logs_it(lab: Lab, tmp_path: Path, capsys):
    out = tmp_path / "report"
    args = ["--tracking-uri", lab.uri, "--sweep", COMPLETE, "--out", str(out)]
    assert report.main(args) == 0
    assert f"Report of {N_CONFIGS} configs" in capsys.readouterr().out
    logged = {Path(a.path).name for a in lab.client.list_artifacts(lab.complete, "analysis")}
    assert logged == {p.name for p in out.iterdir()}
    assert {names.EDGES_ARTIFACT, names.PHASE_MAP_ARTIFACT} <= logged


# --- a real table sweep -----------------------------------------------------------------------

REAL_GRID = (
    "-m",
    "tracking.record=table",
    "method=minibatch",
    "method.batch_size=1,10",
    "method.shuffle=false,true",
    "step_size=0.01,0.03,0.1,0.3",
    "seed=0,1,2",
    "epochs=8",
)  # 48 configs


def test_a_real_table_sweep_loads_and_reports(store, gdexp_cli):
    done = gdexp_cli(*REAL_GRID)
    assert done.returncode == 0, done.stderr[-3000:]
    (parent,) = [r for r in store.runs() if r.data.tags.get(names.KIND_TAG) == names.SWEEP_KIND]
    assert parent.data.tags[names.RECORD_TAG] == names.RECORD_TABLE
    frame = load_runs(sweep="latest", tracking_uri=store.uri)
    path = store.client.download_artifacts(
        parent.info.run_id, names.TABLE_ARTIFACT, str(store.folder)
    )
    written = pq.read_table(path).to_pandas().set_index("config_index").sort_index()
    assert sorted(frame["config_index"]) == list(range(48)) == list(written.index)
    loaded = by_index(frame)
    for column in (*table.CONFIG_COLUMNS, "outcome", "initial_loss", "optimal_loss"):
        assert loaded[column].tolist() == written[column].tolist(), column
    loss = load_histories(frame)
    assert set(loss["config_index"]) == set(range(48))
    reported = gdexp_cli("--no-mlflow", "--out", "report", module="gdexp.analysis")
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert "Report of 48 configs" in reported.stdout
    folder = store.folder / "report"
    assert {names.EDGES_ARTIFACT, names.PHASE_MAP_ARTIFACT} <= {p.name for p in folder.iterdir()}
    assert "## Where each batch schedule stops converging" in (folder / "report.md").read_text()


def test_arrow_helpers_keep_null_lists_and_uneven_lengths():
    # The history layout the loader uses on a table: NaN past a shorter list and for a null one.
    from gdexp.analysis.load import _padded_lists

    lists = pa.chunked_array(
        [pa.array([[1.0, 2.0, 3.0], None], pa.list_(pa.float64())), pa.array([[4.0]])]
    )
    np.testing.assert_array_equal(
        _padded_lists(lists),
        np.array([[1.0, 2.0, 3.0], [np.nan] * 3, [4.0, np.nan, np.nan]]),
    )
