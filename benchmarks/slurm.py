"""The same 200-config grid on a live SLURM cluster, per job (hydra/launcher=slurm) and in
batched chunks (hydra/launcher=slurm_batched), side by side in one run.

python benchmarks/slurm.py [--seeds 10] [--runs-per-task 100]

The cluster is the test suite's one-node cluster (tests/slurm.py: munged, slurmdbd on MariaDB,
slurmctld, slurmd on this machine, all its CPUs), started for the benchmark and stopped after.
Each variant logs to its own SQLite store in a temp folder and is checked to have logged every
run. Reported per variant: array tasks started, wall time of the launching command, and CPU
time as the cluster charges it: the sum over the array's tasks of elapsed time × CPUs allocated
(sacct's CPUTimeRAW), Python start-up included. Also the busy CPU-seconds of the whole machine
while the variant ran (/proc/stat): tasks, daemons and the launching process, and anything else
running, so run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from slurm import running_slurm_cluster  # noqa: E402  (the test suite's cluster)

STEP_SIZES = "0.0001,0.0002,0.0005,0.001,0.002,0.005,0.01,0.02,0.05,0.1"


def busy_cpu_seconds() -> float:
    """CPU-seconds this machine has spent on anything but idling, since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run(cluster, launcher: list[str], grid: list[str], runs: int) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["SLURM_CONF"] = cluster.env["SLURM_CONF"]
        partition = f"hydra.launcher.partition={cluster.partition}"
        command = [sys.executable, "-m", "gdexp", "-m", *grid, *launcher, partition,
                   "hydra.launcher.mem_gb=1"]  # fmt: skip
        cpu, start = busy_cpu_seconds(), time.perf_counter()
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - start, busy_cpu_seconds() - cpu
        if done.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
        experiment = client.get_experiment_by_name("gdexp")
        logged = [
            r
            for r in client.search_runs([experiment.experiment_id], max_results=10_000)
            if r.info.status == "FINISHED" and "mlflow.parentRunId" in r.data.tags
        ]
        if len(logged) != runs:
            sys.exit(f"{' '.join(command)} logged {len(logged)} runs, expected {runs}")
        [array] = re.findall(
            r"as (?:\d+ array tasks of up to \d+ runs \(job (\d+)\)|array job (\d+))",
            done.stdout + done.stderr,
        )
        array = next(a for a in array if a)
        charged = cluster.run("sacct", "-j", array, "-X", "-n", "-P", "--format=JobID,CPUTimeRAW")
        rows = [line.split("|") for line in charged.splitlines() if line.strip()]
        return {
            "tasks": len(rows),
            "wall": wall,
            "charged": sum(int(seconds) for _, seconds in rows),
            "machine": cpu,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=10, help="grid: 2 methods x 10 steps x N")
    parser.add_argument("--runs-per-task", type=int, default=100)
    args = parser.parse_args()
    grid = ["method=bgd,sgd", f"step_size={STEP_SIZES}", f"seed=range(0,{args.seeds})",
            "tracking.log_step_loss=false"]  # fmt: skip
    runs = 2 * 10 * args.seeds
    variants = {
        "per job (hydra/launcher=slurm)": ["hydra/launcher=slurm"],
        f"batched chunks of {args.runs_per_task} (hydra/launcher=slurm_batched)": [
            "hydra/launcher=slurm_batched",
            f"hydra.launcher.runs_per_task={args.runs_per_task}",
        ],
    }
    results = {}
    with running_slurm_cluster() as cluster:
        print(f"cluster up: 1 node, {cluster.cpus} CPUs; grid of {runs} configs", file=sys.stderr)
        for name, launcher in variants.items():
            print(f"  {name} ...", file=sys.stderr, flush=True)
            results[name] = run(cluster, launcher, grid, runs)
    per_job = results[next(iter(variants))]
    print(
        f"| {runs}-config grid on SLURM | array tasks | wall s | CPU s charged "
        "| machine CPU s | charged CPU vs per job |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, got in results.items():
        print(
            f"| {name} | {got['tasks']} | {got['wall']:.1f} | {got['charged']:.0f} "
            f"| {got['machine']:.0f} | {per_job['charged'] / got['charged']:.1f}× less |"
        )


if __name__ == "__main__":
    main()
