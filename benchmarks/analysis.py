"""How long `python -m gdexp.analysis` takes on a sweep of 195 and of ~1,000 runs, and on a table
sweep of 140,000 configs.

    python benchmarks/analysis.py [--repeat 3] [--stores DIR] [--baseline PATH] [--quick]
                                  [--source auto|table|runs] [--table-seeds N] [--no-table]

Builds three stores, each in a folder of its own. Two with gdexp itself (the batched launcher,
epoch metrics only): the predefined step_sizes sweep (bgd, sgd, minibatch x 13 step sizes x 5
seeds = 195 runs) and a dense sweep (bgd, sgd, minibatch x 20 step sizes x 17 seeds = 1,020
runs). One table sweep (`tracking.record=table`: one parent run, no child), built directly: the
phase-map grid, mini-batch GD at batch sizes 1, 2, 5, 10, 20, 50, 100 x data order and shuffled x
100 step sizes np.logspace(-3, 0, 100) x seeds 0-99 (`--table-seeds`) x 20 epochs, float32 =
140,000 configs, trained as benchmarks/phase_map.py's compute floor trains it
(gdexp.train.train_arrays, then gdexp.outcome.summarize_many, 100 seeds a chunk), its rows made
by gdexp.table.chunk_rows (pyarrow, in gdexp.table.schema(), config_index in grid order, no run
ids) and written to results.parquet, logged with MlflowClient to a parent run tagged as a table
sweep's (gdexp.kind=sweep, gdexp.record=table, axis.* params, configs_* metrics) in a new SQLite
store. `--stores DIR` keeps the stores in DIR and reuses them on the next call.

Then, side by side on each store:

- end to end: `python -m gdexp.analysis` as a user runs it (start-up, loading, theory, the
  figures, the report, logging it to the sweep's parent run), wall time and CPU time (user +
  system: far less sensitive to other load on the machine), each the median of `--repeat`
  runs; with `--baseline PATH` the same command with PYTHONPATH=PATH (another checkout of
  gdexp, e.g. a `git worktree` of an older commit), and the ratios of the two (a checkout that
  cannot read a table sweep says so);
- the report after imports, in one fresh process, as `python -m gdexp.analysis --no-mlflow`
  makes it: opening the store, `load_runs`, `load_histories` (loss, w, b: a runs sweep's
  figures need them; a table sweep's report reads none), `write_report` (theory, figures or the
  phase map and edge table, summary, text, files). Their sum is the figure with a target:
  at most 5 s for the 1,020-run sweep and for the 140,000-config table sweep;
- where the time goes, each part again alone in the same process (not in that sum): theory
  (`theory_table`), each figure built and saved, the edge table, the summary and report text;
  for a table sweep also `load_histories` of every config (which the report does not need).

`--source` says where the current checkout reads the runs sweeps from (gdexp.analysis.load):
auto, the sweep's table (results.parquet on its parent run) when it has one; table; or runs,
MLflow's runs and metric histories through its public API (a table sweep has no runs: it is
always read from its table). The baseline is run as it is.

The machine is shared and its timings noisy: compare rows of one run of this script, not
numbers from different runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP_SIZES_SWEEP = ["+sweeps=step_sizes"]
DENSE_STEP_SIZES = "0.0001,0.0002,0.0005,0.001,0.002,0.005,0.01,0.02,0.03,0.04,0.05,0.07,0.1,0.12,0.15,0.2,0.3,0.5,0.7,1.0"  # noqa: E501
DENSE_SWEEP = ["method=bgd,sgd,minibatch", f"step_size={DENSE_STEP_SIZES}", "seed=range(0,17)"]
QUICK_SWEEP = ["method=bgd,sgd,minibatch", "step_size=0.01,0.1,1.0", "seed=range(0,4)"]

# The table sweep's grid (as benchmarks/phase_map.py's).
TABLE_BATCH_SIZES = (1, 2, 5, 10, 20, 50, 100)
TABLE_ORDERS = (False, True)  # shuffled each epoch or not
TABLE_STEP_SIZES = 100  # np.logspace(-3, 0, 100)
TABLE_EPOCHS = 20
TABLE_SEEDS_PER_CHUNK = 100
TARGET_SECONDS = 5.0  # the report after imports, for the ~1,000-run and the table sweep

# Runs in a fresh interpreter inside the store's folder; prints one JSON line of timings.
PHASES = r"""
import json, sys, tempfile, time
source = sys.argv[1]
report_marks, detail = {}, {}
start = time.perf_counter()
from gdexp.analysis import figures, load_histories, load_runs, report, theory_table
from gdexp.analysis.load import open_store
imports = time.perf_counter() - start
t = time.perf_counter(); open_store(None); report_marks["open store"] = time.perf_counter() - t
t = time.perf_counter(); runs = load_runs(sweep="latest", source=source)
report_marks["load_runs"] = time.perf_counter() - t
table_sweep = report.is_table_sweep(runs)
t = time.perf_counter()
histories = (
    None if table_sweep else load_histories(runs, keys=("loss", "w", "b"), source=source)
)
report_marks["load_histories"] = time.perf_counter() - t
folder = tempfile.mkdtemp()
t = time.perf_counter(); report.write_report(runs, f"{folder}/report", histories=histories)
report_marks["write_report"] = time.perf_counter() - t

# Each part again, alone.
t = time.perf_counter(); theory = theory_table(runs); detail["theory"] = time.perf_counter() - t
if table_sweep:
    t = time.perf_counter(); found = report.edge_report(runs)
    detail["edge table"] = time.perf_counter() - t
    t = time.perf_counter()
    figures.phase_map(runs, found.table).savefig(f"{folder}/phase_map.png", dpi=120)
    detail["phase_map"] = time.perf_counter() - t
    t = time.perf_counter(); load_histories(runs, keys=("loss", "w", "b"))
    detail["all histories*"] = time.perf_counter() - t
else:
    found = None
    for name, make in (
        ("loss_curves", lambda: figures.loss_curves(runs, histories)),
        ("step_size_map", lambda: figures.step_size_map(runs, theory)),
        ("parameter_path", lambda: figures.parameter_path(runs, histories, theory=theory)),
    ):
        t = time.perf_counter(); make().savefig(f"{folder}/{name}.png", dpi=120)
        detail[name] = time.perf_counter() - t
t = time.perf_counter()
summary = report.summary_table(runs, theory)
unit = "configs" if table_sweep else "runs"
if len(summary) > report.MAX_MARKDOWN_ROWS:
    table = report.schedule_markdown(report.schedule_table(summary), unit)
else:
    table = report.summary_markdown(summary, unit)
report._report_text(runs, summary, theory, table, found)
detail["summary and text"] = time.perf_counter() - t
print(json.dumps({"imports": imports, "report": report_marks, "detail": detail,
                  "rows": len(runs), "table_sweep": table_sweep}))
"""


def gdexp_env(pythonpath: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GDEXP_"))}
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def build_store(folder: Path, overrides: list[str]) -> None:
    """A sweep into folder/mlflow.db, unless the folder already holds one."""
    if (folder / "mlflow.db").exists():
        print(f"  reusing {folder}/mlflow.db")
        return
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "gdexp", "-m", "hydra/launcher=batched",
        "tracking.log_step_loss=false", *overrides,
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=gdexp_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"building the store failed:\n{done.stderr[-3000:]}")
    print(f"  built {folder}/mlflow.db in {time.perf_counter() - start:.1f} s")


def table_sweep_table(n_seeds: int, parent_run_id: str):  # -> pa.Table
    """The table of the table sweep (see the module's docstring), trained here."""
    import numpy as np
    import pyarrow as pa
    import torch
    from omegaconf import OmegaConf

    from gdexp.config import MethodConfig, RunConfig
    from gdexp.data import least_squares_fit, make_run_data
    from gdexp.outcome import summarize_many
    from gdexp.table import chunk_rows
    from gdexp.train import train_arrays

    torch.set_num_threads(1)  # as benchmarks/phase_map.py's compute floor
    base = OmegaConf.structured(RunConfig(method=MethodConfig(name="minibatch")))
    datasets = []
    for seed in range(n_seeds):
        base.seed = seed
        datasets.append(make_run_data(base))
    optimal = np.array([least_squares_fit(d)[2] for d in datasets])
    step_sizes = np.logspace(-3, 0, TABLE_STEP_SIZES)
    parts, start = [], 0
    for batch_size in TABLE_BATCH_SIZES:
        for shuffle in TABLE_ORDERS:
            cfg = OmegaConf.structured(
                RunConfig(
                    method=MethodConfig("minibatch", batch_size, shuffle), epochs=TABLE_EPOCHS
                )
            )
            for first in range(0, n_seeds, TABLE_SEEDS_PER_CHUNK):
                seeds = np.arange(first, min(first + TABLE_SEEDS_PER_CHUNK, n_seeds))
                lr, seed = (a.ravel() for a in np.meshgrid(step_sizes, seeds, indexing="ij"))
                n = lr.size
                batch = train_arrays(
                    datasets[seeds[0] : seeds[-1] + 1], lr,
                    np.full(n, cfg.init.w), np.full(n, cfg.init.b), seed,
                    data_index=seed - seeds[0], epochs=TABLE_EPOCHS, batch_size=batch_size,
                    shuffle=shuffle, dtype="float32", record_steps=False,
                )  # fmt: skip
                summaries = summarize_many(batch, optimal[seed], cfg.convergence_tolerance)
                columns = {
                    "step_size": lr,
                    "seed": seed.astype(np.int64),
                    "init.w": np.full(n, float(cfg.init.w)),
                    "init.b": np.full(n, float(cfg.init.b)),
                    "convergence_tolerance": np.full(n, float(cfg.convergence_tolerance)),
                    **{
                        f"data.{key}": np.full(n, float(cfg.data[key]))
                        for key in ("x_start", "x_step", "slope", "intercept", "noise_std")
                    },
                }
                index = np.arange(start, start + n, dtype=np.int64)
                parts.append(
                    chunk_rows(cfg, columns, batch, summaries, index, parent_run_id, "cpu")
                )
                start += n
    return pa.concat_tables(parts)


def build_table_store(folder: Path, n_seeds: int) -> None:
    """The table sweep into folder/mlflow.db (a new SQLite store), unless it holds one."""
    if (folder / "mlflow.db").exists():
        print(f"  reusing {folder}/mlflow.db")
        return
    import pyarrow.parquet as pq
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from gdexp import names
    from gdexp.outcome import OUTCOMES

    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment_id = client.create_experiment(
        "gdexp", artifact_location=(folder / "mlartifacts").as_uri()
    )
    configs = len(TABLE_BATCH_SIZES) * len(TABLE_ORDERS) * TABLE_STEP_SIZES * n_seeds
    parent = client.create_run(
        experiment_id,
        run_name=f"sweep phase-map ({configs:,} configs)",
        tags={
            names.KIND_TAG: names.SWEEP_KIND,
            names.RECORD_TAG: names.RECORD_TABLE,
            names.COMMAND_TAG: "benchmarks/analysis.py (the phase-map grid, built directly)",
        },
    ).info.run_id
    table = table_sweep_table(n_seeds, parent)
    trained = time.perf_counter() - start
    path = folder / names.TABLE_ARTIFACT
    pq.write_table(table, path)
    outcomes = table.column("outcome").to_pandas().value_counts()
    axes = {
        "method.batch_size": ", ".join(map(str, TABLE_BATCH_SIZES)),
        "method.shuffle": "false, true",
        "step_size": f"{TABLE_STEP_SIZES} values, 0.001 ... 1",
        "seed": f"range(0, {n_seeds})",
    }
    now = int(time.time() * 1000)
    counts = {**{o: int(outcomes.get(o, 0)) for o in OUTCOMES}, "total": table.num_rows}
    client.log_batch(
        parent,
        params=[Param(f"{names.AXIS_PARAM_PREFIX}{k}", v) for k, v in axes.items()],
        metrics=[
            Metric(f"{names.CONFIGS_METRIC_PREFIX}{k}", float(n), now, 0) for k, n in counts.items()
        ],
    )
    client.log_artifact(parent, str(path))
    client.set_terminated(parent, "FINISHED")
    print(
        f"  built {folder}/mlflow.db in {time.perf_counter() - start:.1f} s "
        f"({table.num_rows:,} configs trained in {trained:.1f} s)"
    )


def end_to_end(
    folder: Path, repeat: int, pythonpath: str | None = None, source: str = "auto"
) -> tuple[float, float] | None:
    """Median wall time and median CPU time (user + system) of `python -m gdexp.analysis` in the
    store's folder (None if a baseline checkout fails on it). CPU time hardly depends on what
    else the machine runs; wall time does."""
    walls, cpus = [], []
    for i in range(repeat):
        out = folder / f"report-{'baseline' if pythonpath else 'current'}-{i}"
        command = [sys.executable, "-m", "gdexp.analysis", "--out", str(out)]
        if source != "auto":  # a baseline checkout may not know --source
            command += ["--source", source]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(
            command, cwd=folder, env=gdexp_env(pythonpath), capture_output=True, text=True
        )
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            if pythonpath:
                return None
            raise SystemExit(f"gdexp.analysis failed:\n{done.stderr[-3000:]}")
    return statistics.median(walls), statistics.median(cpus)


def phases(folder: Path, source: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PHASES, source],
        cwd=folder,
        env=gdexp_env(),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"timing the phases failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="end-to-end runs per store (3)")
    parser.add_argument("--stores", type=Path, help="keep the stores here and reuse them")
    parser.add_argument("--baseline", help="PYTHONPATH of a gdexp checkout to compare against")
    parser.add_argument(
        "--quick", action="store_true", help="36 runs instead of 1,020; a 10-seed table sweep"
    )
    parser.add_argument(
        "--source", choices=("auto", "table", "runs"), default="auto", help="(auto)"
    )
    parser.add_argument(
        "--table-seeds", type=int, help="seeds of the table sweep (100: 140,000 configs)"
    )
    parser.add_argument("--no-table", action="store_true", help="leave out the table sweep")
    args = parser.parse_args()
    table_seeds = args.table_seeds or (10 if args.quick else 100)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.stores or Path(tmp)
        dense = ("quick", QUICK_SWEEP) if args.quick else ("dense", DENSE_SWEEP)
        stores = {
            "step_sizes": root / "step_sizes",
            dense[0]: root / dense[0],
        }
        print("Stores:")
        build_store(stores["step_sizes"], STEP_SIZES_SWEEP)
        build_store(stores[dense[0]], dense[1])
        if not args.no_table:
            name = f"table-{table_seeds}"
            stores[name] = root / name
            build_table_store(stores[name], table_seeds)

        print(f"\nEnd to end, `python -m gdexp.analysis`, median of {args.repeat}:")
        header = f"  {'store':<11} {'rows':>7} {'current s':>10} {'(CPU s)':>8}"
        if args.baseline:
            header += f" {'baseline s':>11} {'(CPU s)':>8} {'speed-up':>9} {'(CPU)':>6}"
        print(header)
        rows = []
        for name, folder in stores.items():
            marks = phases(folder, args.source)
            current, current_cpu = end_to_end(folder, args.repeat, source=args.source)
            line = f"  {name:<11} {marks['rows']:>7,} {current:>10.2f} {current_cpu:>8.2f}"
            if args.baseline:
                found = end_to_end(folder, args.repeat, args.baseline)
                if found is None:
                    line += f" {'fails':>11}"
                else:
                    baseline, baseline_cpu = found
                    line += (
                        f" {baseline:>11.2f} {baseline_cpu:>8.2f} {baseline / current:>8.1f}x"
                        f" {baseline_cpu / current_cpu:>5.1f}x"
                    )
            print(line)
            rows.append((name, marks))

        print(
            "\nThe report after imports, as `python -m gdexp.analysis --no-mlflow` makes it "
            "(one fresh process per store, seconds):"
        )
        print("  " + f"{'phase':<22}" + "".join(f"{name:>12}" for name, _ in rows))
        print("  " + f"{'(imports)':<22}" + "".join(f"{m['imports']:>12.2f}" for _, m in rows))
        for key in rows[0][1]["report"]:
            print("  " + f"{key:<22}" + "".join(f"{m['report'][key]:>12.2f}" for _, m in rows))
        after = [sum(m["report"].values()) for _, m in rows]
        print("  " + f"{'after imports':<22}" + "".join(f"{t:>12.2f}" for t in after))
        print(
            "  " + f"{'/ 5 s target':<22}" + "".join(f"{t / TARGET_SECONDS:>11.2f}x" for t in after)
        )
        print(
            "  (target: at most 5 s for the ~1,000-run sweep and the table sweep; "
            f"load average {os.getloadavg()[0]:.1f} now)"
        )

        print("\nWhere the time goes, each part again alone (seconds; not in the sum above):")
        keys = list(dict.fromkeys(k for _, m in rows for k in m["detail"]))
        print("  " + f"{'part':<22}" + "".join(f"{name:>12}" for name, _ in rows))
        for key in keys:
            cells = "".join(
                f"{m['detail'][key]:>12.2f}" if key in m["detail"] else f"{'':>12}" for _, m in rows
            )
            print("  " + f"{key:<22}" + cells)
        print("  * every config's loss, w and b in long form: the table sweep's report needs none")


if __name__ == "__main__":
    main()
