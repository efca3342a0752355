"""A dense phase map (`+sweeps=phase_map`, a table sweep) against its floors and against the runs
record, side by side in one run: the table sweep end to end, the compute floor (the grid's
arithmetic as plain tensors), the import floor (what any gdexp process pays to start), and the
runs record (an MLflow run per config) on a subsample, scaled to the grid.

    python benchmarks/phase_map.py              # 100 seeds: 140,000 configs
    python benchmarks/phase_map.py --seeds 714  # 999,600 configs, about 10^6
    python benchmarks/phase_map.py --reps 3     # medians of 3 interleaved repetitions
    python benchmarks/phase_map.py --threads 0  # torch's own thread count (default: 1)
    python benchmarks/phase_map.py --only-floors

The grid: mini-batch GD at batch sizes 1, 2, 5, 10, 20, 50, 100 on the 100-point reference data,
in data order and shuffled each epoch, x 100 log-spaced step sizes 1e-3 ... 1 x seeds 0 ... N-1,
20 epochs, float32: 1,400 configs a seed, in 14 groups of one loop structure each (batch size x
order, the signature run_grid groups by).

  compute floor  a fresh process; after its imports, each seed's data made once (and its
                 least-squares loss), then each group in chunks of at most --chunk configs
                 through gdexp.train.train_arrays (record_steps=False, data shared per seed
                 through data_index) and gdexp.outcome.summarize_many, into preallocated
                 table columns (outcome, final loss, w, b, diverged_at_epoch). No configs, no
                 tracking, no files. Memory is one chunk plus the table, not the grid.
  import floor   python -c "import torch, mlflow", a fresh process
  table sweep    python -m gdexp -m +sweeps=phase_map seed=range(0,N) tracking.resume=false,
                 a fresh process on a store made beforehand: composition, training, the
                 table gathered and logged, the edge table (theory on 10 seeds' data) and the
                 phase map; and when training began (its "Table sweep of" line)
  runs record    the same command with tracking.record=runs hydra/launcher=batched (the fastest
                 runs path) on every 10th step size, for one seed (140 configs) and two (280):
                 the difference is its cost a config past start-up, scaled to the grid

On a GPU the table sweep trains there (the phase map says device=auto); the floors stay on the
CPU.

--threads sets torch's threads in the compute floor: 1 by default, since a dense grid is many
independent chunks (cores are better used by processes over chunks), and on a machine whose cores
are busy with other work one thread is several times faster than two: a thread that loses its core
stalls every step of the other (measured here, load ~5 on 2 cores: 5.7 s on one thread, 18.2 s
on two). --threads 0 leaves torch's own count, which train_arrays uses for steps of 1e5 numbers
or more.

Each variant reports its wall time (the compute floor's without its imports: that is the import
floor's), configs/s and its process's peak RSS (ru_maxrss from wait4). The targets: a phase map
end to end within 1.5x (compute floor + import floor), and at least 300x the configs per second
of the runs record; peak RSS <= 2 GB at 10^6 configs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH_SIZES = (1, 2, 5, 10, 20, 50, 100)
ORDERS = (False, True)  # shuffled each epoch or not
STEP_SIZES = 100  # log-spaced, 1e-3 ... 1
EPOCHS = 20
TOLERANCE = 1e-3  # convergence_tolerance's default


def compute_floor(n_seeds: int, chunk: int, threads: int) -> dict:
    """The phase map's arithmetic in this process; its time, size and outcome tally."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from gdexp.config import RunConfig
    from gdexp.data import least_squares_fit, make_run_data
    from gdexp.outcome import OUTCOMES, summarize_many
    from gdexp.train import train_arrays

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    base = OmegaConf.structured(RunConfig())
    datasets = []
    for seed in range(n_seeds):
        base.seed = seed
        datasets.append(make_run_data(base))
    optimal = np.array([least_squares_fit(d)[2] for d in datasets])
    step_sizes = np.geomspace(1e-3, 1.0, STEP_SIZES)
    # A chunk is whole seeds (their data passed once each) times every step size.
    seeds_per_chunk = max(1, chunk // STEP_SIZES)
    size = len(BATCH_SIZES) * len(ORDERS) * STEP_SIZES * n_seeds
    table = {
        "outcome": np.empty(size, dtype=np.int8),
        "final_loss": np.empty(size),
        "final_w": np.empty(size),
        "final_b": np.empty(size),
        "diverged_at_epoch": np.empty(size, dtype=np.int16),
    }
    row = 0
    for batch_size in BATCH_SIZES:
        for shuffle in ORDERS:
            for first in range(0, n_seeds, seeds_per_chunk):
                seeds = np.arange(first, min(first + seeds_per_chunk, n_seeds))
                lr, seed = (a.ravel() for a in np.meshgrid(step_sizes, seeds, indexing="ij"))
                batch = train_arrays(
                    datasets[seeds[0] : seeds[-1] + 1], lr,
                    np.full(lr.size, -10.0), np.full(lr.size, -20.0), seed,
                    data_index=seed - seeds[0], epochs=EPOCHS, batch_size=batch_size,
                    shuffle=shuffle, dtype="float32", record_steps=False,
                )  # fmt: skip
                summaries = summarize_many(batch, optimal[seed], TOLERANCE)
                rows = slice(row, row + len(batch))
                table["outcome"][rows] = summaries.judgements.outcome_code
                table["final_loss"][rows] = summaries.final_loss
                table["final_w"][rows] = summaries.final_w
                table["final_b"][rows] = summaries.final_b
                table["diverged_at_epoch"][rows] = summaries.diverged_at_epoch
                row += len(batch)
    seconds = time.perf_counter() - start
    counts = np.bincount(table["outcome"], minlength=len(OUTCOMES))
    return {
        "seconds": seconds,
        "configs": size,
        "threads": torch.get_num_threads(),
        "outcomes": dict(zip(OUTCOMES, counts.tolist(), strict=True)),
    }


def measured(
    command: list[str], cwd: str | None = None, mark: str | None = None
) -> tuple[float, float, str, float | None]:
    """A fresh process: its wall time, peak RSS in MB, stdout and stderr, and when (s after its
    start) it first printed a line containing `mark`."""
    start = time.perf_counter()
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd
    )
    lines, marked = [], None
    for line in child.stdout or ():
        lines.append(line)
        if mark is not None and marked is None and mark in line:
            marked = time.perf_counter() - start
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"{command} failed with {child.returncode}:\n{''.join(lines)[-3000:]}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024, "".join(lines), marked


GDEXP = [sys.executable, "-m", "gdexp", "-m", "+sweeps=phase_map", "tracking.resume=false"]
# The runs record's subsample: every 10th step size of the phase map, one seed, then two.
SUBSAMPLE_STEPS = "step_size=" + ",".join(f"{v:.4g}" for v in list(
    __import__("numpy").logspace(-3, 0, STEP_SIZES))[::10])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100, help="seeds 0 ... N-1 (default 100)")
    parser.add_argument("--chunk", type=int, default=10_000, help="configs a tensor computation")
    parser.add_argument("--reps", type=int, default=1, help="interleaved repetitions (medians)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads in the compute floor (0: torch's)"
    )
    parser.add_argument(
        "--only-floors", action="store_true", help="the floors alone (no gdexp command)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(compute_floor(args.seeds, args.chunk, args.threads)))
        return

    scratch = Path(tempfile.mkdtemp(prefix="gdexp-phase-map-"))
    store = f"sqlite:///{scratch}/mlflow.db"
    # The store exists before anything is timed: its creation is a one-off, not a sweep's cost.
    subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.MlflowClient({store!r})"
                    ".search_experiments()"], check=True, capture_output=True)  # fmt: skip
    compute = [
        sys.executable, str(Path(__file__).resolve()), "--child",
        "--seeds", str(args.seeds), "--chunk", str(args.chunk),
        "--threads", str(args.threads),
    ]  # fmt: skip
    imports = [sys.executable, "-c", "import torch, mlflow"]
    table_sweep = [
        *GDEXP, f"seed=range(0,{args.seeds})", f"tracking.uri={store}",
        "hydra/launcher=batched", f"hydra.launcher.table_chunk={args.chunk}",
    ]  # fmt: skip

    def runs_record(seeds: int) -> list[str]:
        return [*GDEXP, "tracking.record=runs", "hydra/launcher=batched", SUBSAMPLE_STEPS,
                f"seed=range(0,{seeds})", f"tracking.uri={store}"]  # fmt: skip

    size = len(BATCH_SIZES) * len(ORDERS) * STEP_SIZES * args.seeds
    sub = len(BATCH_SIZES) * len(ORDERS) * (STEP_SIZES // 10)
    print(
        f"Phase map: {size:,} configs ({args.seeds} seeds x {STEP_SIZES} step sizes x "
        f"{len(BATCH_SIZES)} batch sizes x {len(ORDERS)} orders, {EPOCHS} epochs), "
        f"chunks of <= {args.chunk:,} configs, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the start"
    )
    names = ["import floor", "compute floor"]
    if not args.only_floors:
        names += ["table sweep", f"runs record, {sub}", f"runs record, {2 * sub}"]
    times: dict[str, list[float]] = {name: [] for name in names}
    rss: dict[str, list[float]] = {name: [] for name in names}
    started: list[float] = []
    result: dict = {}
    for rep in range(args.reps):
        for name in names[:: 1 if rep % 2 == 0 else -1]:
            if name == "import floor":
                seconds, peak, out, _ = measured(imports)
            elif name == "compute floor":
                seconds, peak, out, _ = measured(compute)
                result = json.loads(out)
                seconds = result["seconds"]  # without its imports: the import floor's
            elif name == "table sweep":
                seconds, peak, out, at = measured(table_sweep, str(scratch), "Table sweep of")
                started.append(at or math.nan)
            else:
                seeds = 1 if name.endswith(f" {sub}") else 2
                seconds, peak, out, _ = measured(runs_record(seeds), str(scratch))
            times[name].append(seconds)
            rss[name].append(peak)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    print(f"  {'':<24}{'time':>9}{'configs/s':>12}{'peak RSS':>11}")
    counts = {"compute floor": size, "table sweep": size,
              f"runs record, {sub}": sub, f"runs record, {2 * sub}": 2 * sub}  # fmt: skip
    for name in names:
        rate = f"{counts[name] / median(times[name]):>12,.0f}" if name in counts else " " * 12
        print(f"  {name:<24}{median(times[name]):>7.2f} s{rate}{median(rss[name]):>8.0f} MB")
    floor = median(times["compute floor"]) + median(times["import floor"])
    print(f"  floors together {floor:.2f} s (compute + import)")
    print(f"  torch threads in the compute floor: {result['threads']}; outcomes: "
          f"{result['outcomes']}")  # fmt: skip
    if args.only_floors:
        return
    end_to_end = median(times["table sweep"])
    per_run = median(times[f"runs record, {2 * sub}"]) - median(times[f"runs record, {sub}"])
    per_run /= sub
    print(
        f"  table sweep end to end: {end_to_end:.2f} s = {end_to_end / floor:.2f}x the floors "
        f"(target <= 1.5x); training began {median(started):.2f} s after its start, "
        f"{median(started) - median(times['import floor']):.2f} s past the import floor"
    )
    print(
        f"  runs record: {1000 * per_run:.1f} ms a config past start-up (from {sub} to "
        f"{2 * sub} configs), so {size:,} configs would take {size * per_run / 60:.0f} min; "
        f"the table sweep records {per_run * size / end_to_end:,.0f}x the configs per second "
        "(target >= 300x)"
    )
    for name in names:
        if median(rss[name]) > 2048:
            print(f"  {name}: peak RSS above the 2 GB target")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
