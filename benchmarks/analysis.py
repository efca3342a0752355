"""How long `python -m gdexp.analysis` takes on a sweep of 195 and of ~1,000 runs.

    python benchmarks/analysis.py [--repeat 3] [--stores DIR] [--baseline PATH] [--quick]
                                  [--source auto|table|runs]

Builds two stores with gdexp itself (the batched launcher, epoch metrics only), each in a folder
of its own: the predefined step_sizes sweep (bgd, sgd, minibatch x 13 step sizes x 5 seeds = 195
runs) and a dense sweep (bgd, sgd, minibatch x 20 step sizes x 17 seeds = 1,020 runs). `--stores
DIR` keeps them in DIR and reuses them on the next call.

Then, side by side on each store:

- end to end: `python -m gdexp.analysis` as a user runs it (start-up, loading, theory, three
  figures, the report, logging it to the sweep's parent run), wall time and CPU time (user +
  system: far less sensitive to other load on the machine), each the median of `--repeat`
  runs; with `--baseline PATH` the same command with PYTHONPATH=PATH (another checkout of
  gdexp, e.g. a `git worktree` of an older commit), and the ratios of the two;
- where the time goes, in one fresh process: imports, opening the store, loading the runs
  (`load_runs`) and their histories (`load_histories`: loss, w, b), theory (`theory_table`),
  each figure built and saved, the summary table and report text.

`--source` says where the current checkout reads the sweeps from (gdexp.analysis.load): auto,
the sweep's table (results.parquet on its parent run) when it has one; table; or runs, MLflow's
runs and metric histories through its public API. The baseline is run as it is.

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

# Runs in a fresh interpreter inside the store's folder; prints one JSON line of phase timings.
PHASES = r"""
import json, sys, tempfile, time
source = sys.argv[1]
marks = {}
start = time.perf_counter()
from gdexp.analysis import figures, load_histories, load_runs, report, theory_table
from gdexp.analysis.load import open_store
marks["imports"] = time.perf_counter() - start
t = time.perf_counter(); open_store(None); marks["open store"] = time.perf_counter() - t
t = time.perf_counter(); runs = load_runs(sweep="latest", source=source)
marks["load_runs"] = time.perf_counter() - t
t = time.perf_counter(); histories = load_histories(runs, keys=("loss", "w", "b"), source=source)
marks["load_histories"] = time.perf_counter() - t
t = time.perf_counter(); theory = theory_table(runs); marks["theory"] = time.perf_counter() - t
folder = tempfile.mkdtemp()
for name, make in (
    ("loss_curves", lambda: figures.loss_curves(runs, histories)),
    ("step_size_map", lambda: figures.step_size_map(runs, theory)),
    ("parameter_path", lambda: figures.parameter_path(runs, histories, theory=theory)),
):
    t = time.perf_counter(); make().savefig(f"{folder}/{name}.png", dpi=120)
    marks[name] = time.perf_counter() - t
t = time.perf_counter()
summary = report.summary_table(runs, theory)
report._report_text(runs, summary, theory, report.summary_markdown(summary))
marks["summary and text"] = time.perf_counter() - t
marks["runs"] = len(runs)
print(json.dumps(marks))
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


def end_to_end(
    folder: Path, repeat: int, pythonpath: str | None = None, source: str = "auto"
) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of `python -m gdexp.analysis` in the
    store's folder. CPU time hardly depends on what else the machine runs; wall time does."""
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
            raise SystemExit(f"gdexp.analysis failed:\n{done.stderr[-3000:]}")
    return statistics.median(walls), statistics.median(cpus)


def phases(folder: Path, source: str) -> dict[str, float]:
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
    parser.add_argument("--quick", action="store_true", help="36 runs instead of 1,020")
    parser.add_argument(
        "--source", choices=("auto", "table", "runs"), default="auto", help="(auto)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.stores or Path(tmp)
        dense = ("quick", QUICK_SWEEP) if args.quick else ("dense", DENSE_SWEEP)
        stores = {
            "step_sizes": (root / "step_sizes", STEP_SIZES_SWEEP),
            dense[0]: (root / dense[0], dense[1]),
        }
        print("Stores (gdexp, batched launcher):")
        for folder, overrides in stores.values():
            build_store(folder, overrides)

        print(f"\nEnd to end, `python -m gdexp.analysis`, median of {args.repeat}:")
        header = f"  {'store':<11} {'runs':>5} {'current s':>10} {'(CPU s)':>8}"
        if args.baseline:
            header += f" {'baseline s':>11} {'(CPU s)':>8} {'speed-up':>9} {'(CPU)':>6}"
        print(header + f" {'loading s':>10} {'theory s':>9} {'figures s':>10}")
        rows = []
        for name, (folder, _) in stores.items():
            marks = phases(folder, args.source)
            current, current_cpu = end_to_end(folder, args.repeat, source=args.source)
            line = f"  {name:<11} {int(marks['runs']):>5} {current:>10.2f} {current_cpu:>8.2f}"
            if args.baseline:
                baseline, baseline_cpu = end_to_end(folder, args.repeat, args.baseline)
                line += (
                    f" {baseline:>11.2f} {baseline_cpu:>8.2f} {baseline / current:>8.1f}x"
                    f" {baseline_cpu / current_cpu:>5.1f}x"
                )
            loading = marks["open store"] + marks["load_runs"] + marks["load_histories"]
            drawing = marks["loss_curves"] + marks["step_size_map"] + marks["parameter_path"]
            print(line + f" {loading:>10.2f} {marks['theory']:>9.2f} {drawing:>10.2f}")
            rows.append((name, marks))

        print("\nWhere the time goes (one fresh process per store, seconds):")
        keys = [k for k in rows[0][1] if k != "runs"]
        print("  " + f"{'phase':<18}" + "".join(f"{name:>12}" for name, _ in rows))
        for key in keys:
            print("  " + f"{key:<18}" + "".join(f"{marks[key]:>12.2f}" for _, marks in rows))
        total = [sum(v for k, v in marks.items() if k != "runs") for _, marks in rows]
        print("  " + f"{'total':<18}" + "".join(f"{t:>12.2f}" for t in total))
        after = [t - marks["imports"] for t, (_, marks) in zip(total, rows, strict=True)]
        print("  " + f"{'after imports':<18}" + "".join(f"{t:>12.2f}" for t in after))


if __name__ == "__main__":
    main()
