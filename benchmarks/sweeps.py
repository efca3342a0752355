"""Sweep speed, side by side in one run: the newcomer baseline, gdexp per job, gdexp batched,
and the floors (the compute alone; MLflow run creation + one batch per run alone).

python benchmarks/sweeps.py            # both grids, about 5 minutes on 2 cores
python benchmarks/sweeps.py --quick    # tiny grids, a smoke run

Every variant starts from a fresh SQLite store in its own temp folder, and every count of runs
is checked before a time is reported. Times are wall-clock seconds; commands run as
subprocesses include Python's start-up, as a user's would.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Grid:
    name: str
    methods: list[str]
    step_sizes: list[float]
    seeds: list[int]
    epochs: int
    log_step_loss: bool

    @property
    def size(self) -> int:
        return len(self.methods) * len(self.step_sizes) * len(self.seeds)

    def overrides(self) -> list[str]:
        return [
            f"method={','.join(self.methods)}",
            "step_size=" + ",".join(f"{s:.6g}" for s in self.step_sizes),
            "seed=" + ",".join(map(str, self.seeds)),
            f"epochs={self.epochs}",
            f"tracking.log_step_loss={str(self.log_step_loss).lower()}",
        ]

    def slice(self, n_step_sizes: int) -> Grid:
        return Grid(
            f"{self.name} (slice)", self.methods, self.step_sizes[:n_step_sizes], self.seeds,
            self.epochs, self.log_step_loss,
        )  # fmt: skip


@dataclass
class Row:
    grid: str
    variant: str
    runs: int
    seconds: float
    extrapolated_to: int | None = None  # measured on a slice, per-run time scaled to this many

    @property
    def per_run_ms(self) -> float:
        return 1000 * self.seconds / self.runs

    @property
    def full_seconds(self) -> float:
        return self.per_run_ms / 1000 * (self.extrapolated_to or self.runs)


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GDEXP_"))}
    env["HYDRA_FULL_ERROR"] = "1"
    return env


def count_runs(folder: Path, experiment: str) -> int:
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=50_000) if found else []
    return sum(1 for r in runs if r.data.tags.get("gdexp.kind") != "sweep")


def timed_command(args: list[str], expected_runs: int, experiment: str) -> float:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        done = subprocess.run(args, cwd=folder, env=environment(), capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
        runs = count_runs(Path(folder), experiment)
        if runs != expected_runs:
            sys.exit(f"{' '.join(args)} logged {runs} runs, expected {expected_runs}")
        return seconds


def newcomer(grid: Grid) -> float:
    args = [
        sys.executable, str(REPO / "benchmarks" / "newcomer.py"),
        "--methods", ",".join(grid.methods),
        "--step-sizes", ",".join(f"{s:.6g}" for s in grid.step_sizes),
        "--seeds", ",".join(map(str, grid.seeds)), "--epochs", str(grid.epochs),
    ] + ([] if grid.log_step_loss else ["--no-step-loss"])  # fmt: skip
    return timed_command(args, grid.size, "newcomer")


def gdexp(grid: Grid, *extra: str) -> float:
    return timed_command(
        [sys.executable, "-m", "gdexp", "-m", *grid.overrides(), *extra], grid.size, "gdexp"
    )


def configs(grid: Grid) -> list:
    from gdexp.config import MethodConfig, RunConfig

    batch = {"bgd": None, "sgd": 1, "minibatch": 10}
    return [
        OmegaConf.structured(
            RunConfig(
                method=MethodConfig(name=m, batch_size=batch[m]),
                step_size=s, seed=seed, epochs=grid.epochs,
            )
        )
        for m in grid.methods for s in grid.step_sizes for seed in grid.seeds
    ]  # fmt: skip


def floor_startup() -> float:
    """What every gdexp command pays before its first run: Python, torch, MLflow and Hydra
    start, one config composed, one untracked epoch."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "gdexp", "epochs=1", "tracking.enabled=false"],
            cwd=folder, env=environment(), capture_output=True, check=True,
        )  # fmt: skip
        return time.perf_counter() - start


def floor_compute(grid: Grid) -> float:
    """The grid's training alone, batched, in this process (data made beforehand)."""
    from gdexp.data import make_run_data
    from gdexp.train import TrainSettings, train_many

    cfgs = configs(grid)
    groups: dict[tuple, list] = {}
    for cfg in cfgs:
        settings = TrainSettings.of(cfg)
        groups.setdefault(settings.signature, []).append((settings, make_run_data(cfg)))
    train_many(*zip(*next(iter(groups.values())), strict=True))  # warm-up: torch's first calls
    start = time.perf_counter()
    for members in groups.values():
        settings, data = zip(*members, strict=True)
        train_many(settings, data)
    return time.perf_counter() - start


def floor_mlflow(grid: Grid, write_ahead_log: bool = False) -> float:
    """MLflow alone, through its public client on a new SQLite store: per run, create it, log
    the same params, metrics and tags in as few `log_batch` calls as MLflow's limits allow, end
    it. `write_ahead_log`: the store in WAL journal mode, as gdexp sets it; else MLflow's
    default (rollback journal)."""
    from mlflow.entities import Param, RunTag

    from gdexp import record
    from gdexp.data import make_run_data
    from gdexp.outcome import summarize
    from gdexp.store import use_write_ahead_log
    from gdexp.train import train

    payloads = []
    for method in grid.methods:  # one payload per method, reused across its runs
        cfg = next(c for c in configs(grid) if c.method.name == method)
        data = make_run_data(cfg)
        trajectory = train(cfg, data)
        summary = summarize(trajectory, data, cfg.convergence_tolerance)
        cfg.tracking.log_step_loss = grid.log_step_loss
        params, config_metrics = record.config_record(cfg)
        metrics, tags = record.result_record(cfg, trajectory, summary)
        payloads.append((
            [Param(k, str(v)) for k, v in params.items()],
            config_metrics + metrics,
            [RunTag(k, v) for k, v in {**record.run_tags(cfg, []), **tags}.items()],
        ))  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        if write_ahead_log:
            use_write_ahead_log(Path(folder) / "mlflow.db")
        client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
        experiment = client.create_experiment("floor")
        start = time.perf_counter()
        for i in range(grid.size):
            params, metrics, tags = payloads[i % len(payloads)]
            run_id = client.create_run(experiment, run_name=f"run {i}").info.run_id
            for first in range(0, max(len(metrics), 1), 1000):  # MLflow: 1,000 metrics a batch
                client.log_batch(
                    run_id,
                    metrics=metrics[first : first + 1000],
                    params=params if first == 0 else [],
                    tags=tags if first == 0 else [],
                )
            client.set_terminated(run_id, "FINISHED")
        return time.perf_counter() - start


def measure(
    reference: Grid, dense: Grid, basic_slice: int, newcomer_slice: int, only: str | None = None
) -> list[Row]:
    rows: list[Row] = []

    def add(grid: Grid, variant: str, run: Callable[[], float], runs: int, full: int | None = None):
        print(f"  {grid.name}: {variant} ...", file=sys.stderr, flush=True)
        rows.append(Row(grid.name, variant, runs, run(), full))

    for grid in (reference, dense):
        if only is not None and grid.name != only:
            continue
        sliced_newcomer = grid.slice(newcomer_slice) if grid is dense else grid
        sliced_basic = grid.slice(basic_slice) if grid is dense else grid
        add(grid, "newcomer: log_metric per value", lambda g=sliced_newcomer: newcomer(g),
            sliced_newcomer.size, grid.size if grid is dense else None)  # fmt: skip
        add(grid, "gdexp, basic launcher", lambda g=sliced_basic: gdexp(g), sliced_basic.size,
            grid.size if grid is dense else None)  # fmt: skip
        add(grid, "gdexp, batched", lambda g=grid: gdexp(g, "hydra/launcher=batched"), grid.size)
        add(grid, "floor: compute only", lambda g=grid: floor_compute(g), grid.size)
        add(grid, "floor: MLflow only", lambda g=grid: floor_mlflow(g), grid.size)
        add(grid, "floor: MLflow only, WAL store", lambda g=grid: floor_mlflow(g, True), grid.size)
        add(grid, "floor: gdexp start-up (1 untracked run)", floor_startup, grid.size)
    return rows


def marginal(reference: Grid, rows: list[Row]) -> str:
    """Per run past each command's one-time start-up (Python, imports, a new store, Hydra): the
    wall time that the reference grid's second half adds, per run, for the newcomer's script and
    gdexp's basic and batched launchers alike. (wall on N runs − wall on N/2 runs) / (N/2): the
    N/2 grid is the reference grid with half its step sizes, the same kinds of runs."""

    def seconds(variant: str) -> float:
        return next(r for r in rows if r.grid == reference.name and r.variant == variant).seconds

    half = reference.slice(len(reference.step_sizes) // 2)
    variants = {
        "newcomer: log_metric per value": lambda g: newcomer(g),
        "gdexp, basic launcher": lambda g: gdexp(g),
        "gdexp, batched": lambda g: gdexp(g, "hydra/launcher=batched"),
    }
    per_run = {}
    for variant, run in variants.items():
        print(f"  {reference.name}: {variant} on {half.size} runs ...", file=sys.stderr, flush=True)
        fewer = run(half)
        per_run[variant] = (seconds(variant) - fewer) / (reference.size - half.size)
        per_run[variant, "walls"] = (fewer, seconds(variant))
    newcomer_ms = 1000 * per_run["newcomer: log_metric per value"]
    parts = []
    for variant in variants:
        fewer, full = per_run[variant, "walls"]
        parts.append(f"{variant} {1000 * per_run[variant]:.0f} ms ({fewer:.1f} → {full:.1f} s)")
    ratios = ", ".join(
        f"{variant.removeprefix('gdexp, ')} {newcomer_ms / (1000 * per_run[variant]):.1f}×"
        for variant in list(variants)[1:]
    )
    return (
        f"reference grid, per run past one-time start-up ({half.size} → {reference.size} runs): "
        + "; ".join(parts)
        + f". The newcomer's per-run cost over gdexp's: {ratios}"
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| grid | variant | runs | wall s | per run ms | vs newcomer | vs MLflow floor |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        same = [r for r in rows if r.grid == row.grid]
        baseline = next(r for r in same if r.variant.startswith("newcomer"))
        floor = next(r for r in same if r.variant == "floor: MLflow only")
        runs = f"{row.runs}" + (f" of {row.extrapolated_to}" if row.extrapolated_to else "")
        lines.append(
            f"| {row.grid} | {row.variant} | {runs} | {row.seconds:.2f} | {row.per_run_ms:.1f} "
            f"| {baseline.full_seconds / row.full_seconds:.1f}× faster "
            f"| {row.full_seconds / floor.full_seconds:.2f}× |"
        )
    return "\n".join(lines)


def verdicts(rows: list[Row], reference: Grid, dense: Grid) -> list[str]:
    def get(grid: Grid, variant: str) -> Row:
        return next(r for r in rows if r.grid == grid.name and r.variant == variant)

    newcomer_ref = get(reference, "newcomer: log_metric per value").full_seconds
    best_ref = min(
        get(reference, v).full_seconds for v in ("gdexp, basic launcher", "gdexp, batched")
    )
    startup = get(reference, "floor: gdexp start-up (1 untracked run)").seconds
    dense_ratio = get(dense, "gdexp, batched").seconds / get(dense, "floor: MLflow only").seconds
    dense_wal = (
        get(dense, "gdexp, batched").seconds / get(dense, "floor: MLflow only, WAL store").seconds
    )
    compute = get(dense, "floor: compute only").seconds
    return [
        f"reference grid ({reference.size} runs): gdexp {newcomer_ref / best_ref:.1f}× faster "
        f"than the newcomer baseline end to end, start-up included (gdexp's alone, untracked: "
        f"{startup:.1f} s)",
        f"dense grid ({dense.size} configs): gdexp batched end to end = {dense_ratio:.2f}× "
        f"MLflow's floor on its default store (target ≤ 1.25×), {dense_wal:.2f}× the floor on "
        "a WAL store as gdexp makes it",
        f"batched compute, {dense.size} configs × {dense.epochs} epochs: {compute:.2f} s "
        f"(target < 1 s for 1,000 SGD configs × 20 epochs × 100 samples)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny grids: a smoke run")
    parser.add_argument("--only", choices=("reference", "dense"), help="one grid only")
    args = parser.parse_args()
    if args.quick:
        reference = Grid("reference", ["bgd", "sgd"], [0.01, 0.1], [0], 5, True)
        dense = Grid(
            "dense", ["sgd"], [float(s) for s in np.geomspace(1e-4, 1, 10)], [0, 1], 5, False
        )
        rows = measure(reference, dense, basic_slice=2, newcomer_slice=2, only=args.only)
    else:
        reference = Grid("reference", ["bgd", "sgd"], [0.001, 0.01, 0.05, 0.1], [0, 1], 20, True)
        dense = Grid(
            "dense",
            ["sgd"],
            [float(s) for s in np.geomspace(1e-4, 1, 100)],
            list(range(10)),
            20,
            False,
        )
        rows = measure(reference, dense, basic_slice=10, newcomer_slice=2, only=args.only)
    print(table(rows))
    print()
    print("Per-run times of rows marked 'N of M' were measured on N runs and scaled to M.")
    if args.only is None:
        lines = verdicts(rows, reference, dense)
        lines.insert(1, marginal(reference, rows))
    else:
        lines = [marginal(reference, rows)] if args.only == "reference" else []
    for line in lines:
        print("-", line)


if __name__ == "__main__":
    main()
