"""Every sweep carries its table: `results.parquet` on the parent, a typed row per config."""

from __future__ import annotations

import math
import signal
import tempfile
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from test_survive import start_sweep, wait_for

from gdexp import names, table


def sweep_tables(store) -> dict[str, tuple[object, pd.DataFrame]]:
    """Each sweep's parent run id: (parent, its table as pandas reads it)."""
    found = {}
    for run in store.runs():
        if run.data.tags.get(names.KIND_TAG) != names.SWEEP_KIND:
            continue
        path = store.client.download_artifacts(
            run.info.run_id, names.TABLE_ARTIFACT, tempfile.mkdtemp()
        )
        found[run.info.run_id] = (run, pd.read_parquet(path))
    return found


def test_the_schema_is_typed_and_a_row_round_trips(tmp_path):
    row = {
        "run_id": "abc", "run_name": "sgd lr=0.1 seed=3", "parent_run_id": "p",
        "start_time": 1_764_000_000_000, "status": "FINISHED", "config_index": None,
        "method": "sgd", "batch_size": 1, "shuffle": False, "step_size": 0.1, "seed": 3,
        "epochs": 3, "dtype": "float32",
        "device": "cpu", "convergence_tolerance": 1e-3, "n_points": 100, "x_start": -5.0,
        "x_step": 0.1, "slope": -5.0, "intercept": 0.0, "noise_std": 0.4, "init_w": -10.0,
        "init_b": -20.0, "initial_loss": 600.0, "final_loss": math.inf, "final_w": 1e20,
        "final_b": -1e20, "optimal_loss": 0.17, "outcome": "diverged", "diverged_at_epoch": 2,
        "loss": [600.0, 1e30, math.inf], "w": [1.0, math.nan], "b": [2.0, 3.0],
    }  # fmt: skip
    assert list(row) == list(table.COLUMNS)
    path = table.write_rows(tmp_path, [row])
    assert path.parent == tmp_path / table.ROWS_FOLDER and path.suffix == ".parquet"
    read = table.read_parts([tmp_path])
    assert read.schema == table.schema()
    types = {field.name: str(field.type) for field in read.schema}
    assert types["seed"] == "int64" and types["step_size"] == "double"
    assert types["shuffle"] == "bool" and types["loss"] == "list<item: double>"
    [back] = read.to_pylist()
    assert back["final_loss"] == math.inf and back["loss"][2] == math.inf  # data, kept
    assert math.isnan(back["w"][1])
    assert {k: v for k, v in back.items() if k != "w"} == {k: v for k, v in row.items() if k != "w"}
    frame = read.to_pandas()
    assert isinstance(frame.loss[0], np.ndarray) and frame.loss[0][1] == 1e30


@pytest.mark.parametrize("launcher", ["basic", "batched"])
def test_a_sweeps_table_holds_each_run_as_mlflow_does(gdexp_cli, store, launcher):
    done = gdexp_cli(
        "-m", f"hydra/launcher={launcher}", "method=bgd,sgd,minibatch", "step_size=0.05,1",
        "seed=0,1", "epochs=6",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [(_, frame)] = sweep_tables(store).values()
    children = [r for r in store.runs() if r.data.tags.get(names.PARENT_TAG)]
    assert len(frame) == len(children) == 12
    assert list(frame.columns) == list(table.COLUMNS)
    assert frame.dtypes["seed"] == "int64" and frame.dtypes["step_size"] == "float64"
    for run in children:
        [row] = frame[frame.run_id == run.info.run_id].itertuples()
        params, metrics = run.data.params, run.data.metrics
        assert row.method == params["method.name"] and row.seed == int(params["seed"])
        assert row.step_size == float(params["step_size"])
        assert row.batch_size == {"bgd": 100, "sgd": 1, "minibatch": 10}[row.method]
        assert row.outcome == run.data.tags[names.OUTCOME_TAG]
        assert row.final_loss == metrics.get("final_loss", math.inf)
        history = store.client.get_metric_history(run.info.run_id, "loss")
        logged = [p.value for p in sorted(history, key=lambda p: p.step)]
        finite = [v for v in row.loss if math.isfinite(v)]
        assert logged == finite  # MLflow holds the finite ones; the table keeps them all
        assert (
            len(row.w)
            == len(row.b)
            == len(store.client.get_metric_history(run.info.run_id, "w"))
            + sum(not math.isfinite(v) for v in row.w)
        )


def test_a_resumed_sweeps_table_has_every_config_once(store):
    grid = ("method=sgd", "seed=range(0,4)", "epochs=150", "hydra.verbose=gdexp.epochs")
    first = start_sweep(store.folder, *grid)
    wait_for(first, "epoch 100", count=2)  # the second run is in flight
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    assert first.returncode == 130
    [(_, partial)] = sweep_tables(store).values()
    assert list(partial.status).count("FINISHED") == 1 and "KILLED" in set(partial.status)
    time.sleep(1.1)  # a new sweep folder: Hydra names them by the second
    resumed = start_sweep(store.folder, *grid)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    [(_, frame)] = sweep_tables(store).values()
    assert sorted(frame.seed) == [0, 1, 2, 3] and set(frame.status) == {"FINISHED"}
    # The reused run's row comes from the first attempt's table, the same numbers.
    reused = partial[partial.status == "FINISHED"].iloc[0]
    again = frame[frame.run_id == reused.run_id].iloc[0]
    assert again.final_loss == reused.final_loss and list(again.loss) == list(reused.loss)


# Columns that differ between two runs of different seeds (identity, data, what they did).
RESULTS_OF_THE_RUN = (
    *("run_id", "run_name", "start_time", "seed", "initial_loss", "final_loss"),
    *("final_w", "final_b", "optimal_loss", "outcome", "loss", "w", "b"),
)


def test_a_run_that_left_no_row_is_read_back_from_the_store(store, tmp_path):
    # Its process died before writing its row: the sweep reads it through MLflow's API, to the
    # same row the run would have written.
    from omegaconf import OmegaConf

    from gdexp.config import MethodConfig, RunConfig
    from gdexp.run import run_experiment
    from gdexp.store import Destination, Tracker
    from gdexp.sweep import Sweep

    tracker = Tracker(store.uri, "gdexp")
    sweep = Sweep.open(tracker, tmp_path / "sweep", grid={"seed": "0,1"}, sweeper="gdexp",
                       config_hashes=["a", "b"])  # fmt: skip
    cfgs = []
    for seed, rows in ((0, True), (1, False)):
        method = MethodConfig(name="sgd", batch_size=1)
        cfg = OmegaConf.structured(RunConfig(method=method, seed=seed, epochs=4))
        folder = sweep.folder if rows else None
        run_experiment(cfg, destination=Destination(tracker, sweep.parent_run_id, folder))
        cfgs.append(cfg)
    sweep.close()
    [(_, frame)] = sweep_tables(store).values()
    assert sorted(frame.seed) == [0, 1]
    written, read_back = (frame[frame.seed == s].iloc[0] for s in (0, 1))
    for column in table.COLUMNS:
        if column in RESULTS_OF_THE_RUN:
            continue
        same = written[column] == read_back[column]
        assert same or (pd.isna(written[column]) and pd.isna(read_back[column])), column
    assert isinstance(read_back.loss, np.ndarray) and len(read_back.loss) == 4
    assert pa.types.is_list(table.schema().field("loss").type)
