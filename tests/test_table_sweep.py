"""Table sweeps (`tracking.record=table`) end to end, as real commands on a real store: one
parent run and no child, its table equal to the runs record of the same grid, the edge table
and phase map beside it, BGD's edge where theory puts it, an interrupted sweep resumed to the
same table as an uninterrupted one, and one-line refusals."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import GdexpCli, Store, clean_env
from test_batched import GRID  # 72 configs: every outcome, in float32 and float64

from gdexp import names, table
from gdexp.theory import bgd_threshold

CONFIG_KEY = ["method", "batch_size", "step_size", "seed", "dtype", "noise_std"]
SAME = [*table.CONFIG_COLUMNS, *table.RESULT_COLUMNS, *table.HISTORY_COLUMNS]


def parents(store: Store) -> list:
    return [r for r in store.runs() if r.data.tags.get(names.KIND_TAG) == names.SWEEP_KIND]


def table_of(store: Store, run_id: str) -> pd.DataFrame:
    path = store.client.download_artifacts(run_id, names.TABLE_ARTIFACT, str(store.folder))
    return pq.read_table(path).to_pandas()


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame, columns=SAME) -> None:
    a = a.sort_values(CONFIG_KEY).reset_index(drop=True)
    b = b.sort_values(CONFIG_KEY).reset_index(drop=True)
    assert len(a) == len(b)
    for column in columns:
        for x, y in zip(a[column], b[column], strict=True):
            if isinstance(x, np.ndarray | list):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=column)
            elif isinstance(x, float) and math.isnan(x):
                assert isinstance(y, float) and math.isnan(y), column
            else:
                assert x == y or (pd.isna(x) and pd.isna(y)), (column, x, y)


def test_a_table_sweep_is_one_run_whose_table_equals_the_runs_record(
    store: Store, gdexp_cli: GdexpCli
):
    runs = gdexp_cli("-m", "hydra/launcher=batched", *GRID)
    assert runs.returncode == 0, runs.stderr[-3000:]
    tabled = gdexp_cli("-m", "hydra/launcher=batched", "tracking.record=table", *GRID)
    assert tabled.returncode == 0, tabled.stderr[-3000:]
    sweep_of_runs, sweep_of_table = sorted(parents(store), key=lambda r: r.info.start_time)
    # The table sweep: no child, its record on the parent.
    children = [r for r in store.runs() if r.data.tags.get(names.PARENT_TAG)]
    assert {r.data.tags[names.PARENT_TAG] for r in children} == {sweep_of_runs.info.run_id}
    tags, params, metrics = (sweep_of_table.data.tags, sweep_of_table.data.params,
                             sweep_of_table.data.metrics)  # fmt: skip
    assert sweep_of_table.info.status == "FINISHED"
    assert tags[names.RECORD_TAG] == names.RECORD_TABLE
    assert params["axis.step_size"] == "0.001, 0.1, 1.5" and params["axis.seed"] == "0, 1"
    assert params["axis.groups"] == "method=bgd, method=sgd, method=minibatch"
    ours = table_of(store, sweep_of_table.info.run_id)
    theirs = table_of(store, sweep_of_runs.info.run_id)
    assert ours["config_index"].tolist() == list(range(72))
    assert ours["run_id"].isna().all() and set(ours["status"]) == {"FINISHED"}
    assert set(ours["parent_run_id"]) == {sweep_of_table.info.run_id}
    assert_same_rows(ours, theirs)
    counted = ours["outcome"].value_counts().to_dict()
    assert {k: int(v) for k, v in metrics.items() if k.startswith("configs_")} == {
        **{f"configs_{o}": counted.get(o, 0) for o in
           ("converged", "converging", "stalled", "oscillating", "diverged")},
        "configs_total": 72, "configs_finished": 72,
    }  # fmt: skip
    assert counted.get("diverged", 0) > 0 and counted.get("converged", 0) > 0
    # The analysis is the same read from either record: the same frame, the same report numbers.
    from gdexp.analysis import load_runs, summary_table

    frames = [
        load_runs(sweep=parent.info.run_id, tracking_uri=store.uri)
        for parent in (sweep_of_runs, sweep_of_table)
    ]
    identity = ["run_id", "run_name", "parent_run_id", "start_time", "config_index"]
    by_runs, by_table = (
        f.drop(columns=identity).sort_values(CONFIG_KEY).reset_index(drop=True) for f in frames
    )
    pd.testing.assert_frame_equal(by_runs, by_table)
    pd.testing.assert_frame_equal(summary_table(frames[0]), summary_table(frames[1]))
    # The edge table and the phase map beside it, and in the closing lines.
    artifacts = {a.path for a in store.client.list_artifacts(sweep_of_table.info.run_id)}
    assert {names.TABLE_ARTIFACT, names.EDGES_ARTIFACT, names.PHASE_MAP_ARTIFACT} <= artifacts
    output = tabled.stdout + tabled.stderr
    assert "Step-size edges" in output and sweep_of_table.info.run_id in output
    assert "Traceback" not in output


def test_bgds_measured_edge_is_where_theory_puts_it(store: Store, gdexp_cli: GdexpCli):
    steps = "0.115,0.119,0.1199,0.12,0.1201,0.1205,0.121,0.125"
    done = gdexp_cli(
        "-m", "tracking.record=table", "method=bgd", f"step_size={steps}", "seed=0,1,2",
        "dtype=float64",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    [parent] = parents(store)
    path = store.client.download_artifacts(
        parent.info.run_id, names.EDGES_ARTIFACT, str(store.folder)
    )
    edges = pd.read_csv(path)
    row = edges[(edges["order"] == "data order") & (edges["event"] == "diverged")].iloc[0]
    edge = bgd_threshold(np.arange(-5, 5, 0.1, dtype=np.float32).astype(np.float64))
    assert round(edge, 3) == 0.12
    assert row["measured_lower"] < edge <= row["measured_upper"], (row.to_dict(), edge)
    # The first step size of the grid at or above 2/λmax: every seed diverges there, none below.
    assert row["measured_step_size"] == min(s for s in map(float, steps.split(",")) if s >= edge)
    assert abs(row["theory_step_size"] - edge) < 1e-6


RESUMABLE = [
    "hydra/launcher=batched", "hydra.launcher.table_chunk=20", "tracking.record=table",
    "method=sgd", "epochs=40", "step_size=0.001,0.003,0.01,0.03,0.05,0.07,0.1,0.2",
    "seed=range(0,40)",
]  # fmt: skip  # 320 configs in 16 chunks of about a third of a second each


def test_an_interrupted_table_sweep_keeps_its_chunks_and_resumes_to_the_same_table(
    store: Store, gdexp_cli: GdexpCli, tmp_path: Path
):
    sweep = subprocess.Popen(
        [sys.executable, "-m", "gdexp", "-m", *RESUMABLE],
        cwd=store.folder, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    output = []
    for line in sweep.stdout:
        output.append(line)
        if "Progress: 40/" in line:  # two chunks kept
            sweep.send_signal(signal.SIGINT)
            break
    rest, _ = sweep.communicate(timeout=120)
    text = "".join(output) + rest
    assert sweep.returncode == 130, text[-3000:]
    [parent] = parents(store)
    assert parent.info.status == "KILLED"
    partial = table_of(store, parent.info.run_id)
    assert 40 <= len(partial) < 320 and len(partial) % 20 == 0, len(partial)
    assert partial["config_index"].tolist() == list(range(len(partial)))
    assert "Sweep interrupted (SIGINT)" in text and f"{len(partial)} of 320 configs" in text
    assert text.count("Sweep interrupted") == 1 and "Traceback" not in text
    time.sleep(1.1)  # a new sweep folder (Hydra names them by the second)
    resumed = gdexp_cli("-m", *RESUMABLE)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming: {len(partial)} configs already done" in resumed.stdout + resumed.stderr
    [again] = parents(store)
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    whole = table_of(store, parent.info.run_id)
    # The same grid, never interrupted, in a store of its own.
    fresh = Store(tmp_path / "fresh", f"sqlite:///{tmp_path}/fresh/mlflow.db")
    fresh.folder.mkdir()
    done = gdexp_cli("-m", *RESUMABLE, cwd=fresh.folder)
    assert done.returncode == 0, done.stderr[-3000:]
    [uninterrupted] = parents(fresh)
    expected = table_of(fresh, uninterrupted.info.run_id)
    columns = [c for c in table.COLUMNS if c != "parent_run_id"]
    assert whole["config_index"].tolist() == list(range(320))
    assert_same_rows(whole, expected, columns)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["tracking.record=table"], "a single run is recorded as a run"),
        (["-m", "hydra/sweeper=basic", "tracking.record=table", "seed=0,1"],
         "needs gdexp's grid sweeper"),
        (["-m", "hydra/sweeper=optuna", "tracking.record=table", "step_size=interval(0.01,1)"],
         "hydra/sweeper=optuna hands out configs one by one"),
        (["-m", "hydra/launcher=joblib", "tracking.record=table", "seed=0,1"],
         "hydra/launcher=joblib runs one config per job"),
        (["-m", "tracking.record=table", "tracking.enabled=false", "seed=0,1"],
         "it needs tracking.enabled=true"),
        (["-m", "tracking.record=table", "tracking.experiment=a,b"], "cannot be swept"),
        (["-m", "tracking.record=table", "seed=0,1", "step_size=0.1,-1"],
         "step_size=-1.0 is invalid"),
    ],
)  # fmt: skip
def test_what_a_table_sweep_cannot_do_is_refused_in_one_line(
    store: Store, gdexp_cli: GdexpCli, args: list[str], says: str
):
    refused = gdexp_cli(*args)
    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], refused.stderr
    assert not any(p.name in ("multirun", "outputs") for p in store.folder.iterdir())
    assert store.runs() == []
