"""The floors of a dense phase map (issue 17), side by side in one run: the compute floor (the
grid's arithmetic as plain tensors) and the import floor (what any gdexp process pays to start).

    python benchmarks/phase_map.py              # 100 seeds: 140,000 configs
    python benchmarks/phase_map.py --seeds 714  # 999,600 configs, about 10^6
    python benchmarks/phase_map.py --reps 3     # medians of 3 interleaved repetitions
    python benchmarks/phase_map.py --threads 0  # torch's own thread count (default: 1)

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

--threads sets torch's threads in the compute floor: 1 by default, since a dense grid is many
independent chunks (cores are better used by processes over chunks), and on a machine whose cores
are busy with other work one thread is several times faster than two: a thread that loses its core
stalls every step of the other (measured here, load ~5 on 2 cores: 5.7 s on one thread, 18.2 s
on two). --threads 0 leaves torch's own count, which train_arrays uses for steps of 1e5 numbers
or more.

Each variant reports its wall time (the compute floor's without its imports: that is the import
floor's), configs/s and its process's peak RSS (ru_maxrss from wait4). The targets: a phase map
end to end within 1.5x (compute floor + import floor); peak RSS <= 2 GB at 10^6 configs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
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


def measured(command: list[str]) -> tuple[float, float, str]:
    """A fresh process: its wall time, peak RSS in MB and stdout."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"{command} failed with {child.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100, help="seeds 0 ... N-1 (default 100)")
    parser.add_argument("--chunk", type=int, default=10_000, help="configs a tensor computation")
    parser.add_argument("--reps", type=int, default=1, help="interleaved repetitions (medians)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads in the compute floor (0: torch's)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(compute_floor(args.seeds, args.chunk, args.threads)))
        return

    compute = [
        sys.executable, str(Path(__file__).resolve()), "--child",
        "--seeds", str(args.seeds), "--chunk", str(args.chunk),
        "--threads", str(args.threads),
    ]  # fmt: skip
    imports = [sys.executable, "-c", "import torch, mlflow"]
    size = len(BATCH_SIZES) * len(ORDERS) * STEP_SIZES * args.seeds
    print(
        f"Phase map: {size:,} configs ({args.seeds} seeds x {STEP_SIZES} step sizes x "
        f"{len(BATCH_SIZES)} batch sizes x {len(ORDERS)} orders, {EPOCHS} epochs), "
        f"chunks of <= {args.chunk:,} configs, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the start"
    )
    times: dict[str, list[float]] = {"import floor": [], "compute floor": []}
    rss: dict[str, list[float]] = {"import floor": [], "compute floor": []}
    result: dict = {}
    for rep in range(args.reps):
        order = ["import floor", "compute floor"][:: 1 if rep % 2 == 0 else -1]
        for name in order:
            seconds, peak, out = measured(imports if name == "import floor" else compute)
            if name == "compute floor":
                result = json.loads(out)
                seconds = result["seconds"]  # without its imports: the import floor's
            times[name].append(seconds)
            rss[name].append(peak)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    print(f"  {'':<16}{'time':>9}{'configs/s':>12}{'peak RSS':>11}")
    for name in times:
        rate = f"{size / median(times[name]):>12,.0f}" if name == "compute floor" else f"{'':>12}"
        print(f"  {name:<16}{median(times[name]):>7.2f} s{rate}{median(rss[name]):>8.0f} MB")
    floor = median(times["compute floor"]) + median(times["import floor"])
    print(
        f"  floors together {floor:.2f} s: a phase map end to end has a target of "
        f"1.5x = {1.5 * floor:.1f} s; the compute floor is "
        f"{median(times['compute floor']) / median(times['import floor']):.1f}x the import floor"
    )
    print(f"  torch threads: {result['threads']}; outcomes: {result['outcomes']}")
    if median(rss["compute floor"]) > 2048:
        print("  peak RSS above the 2 GB target")


if __name__ == "__main__":
    main()
