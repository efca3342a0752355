"""What Hydra's per-job folders cost a dense batched sweep, side by side in one run.

python benchmarks/job_folders.py               # 1,000 BGD configs, 3 repeats: about 4 minutes
python benchmarks/job_folders.py --quick       # 40 configs, a smoke run

`python -m gdexp -m hydra/launcher=batched <grid>` with `hydra.launcher.job_folders=false` (the
default) and `=true` (each job's folder with `.hydra/config.yaml, hydra.yaml, overrides.yaml`, as
Hydra's run_job writes them), alternating, each from a fresh SQLite store in its own temp
folder; the runs and job folders each made are counted before a time is reported. Times are
wall-clock seconds of the whole command, Python's start-up included, as a user's would be;
medians are reported, and their ratio.

Also measured, in this process: the time to make every job's `hydra_cfg` (its `hydra` node, as
Hydra's launchers return it), which the batched launchers make only when it is read.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]


def grid(quick: bool) -> tuple[list[str], int]:
    steps, seeds = (10, 4) if quick else (100, 10)
    step_sizes = ",".join(f"{s:.6g}" for s in np.geomspace(1e-4, 1, steps))
    overrides = [
        "method=bgd",
        f"step_size={step_sizes}",
        "seed=" + ",".join(map(str, range(seeds))),
        "epochs=20",
        "tracking.log_step_loss=false",
    ]
    return overrides, steps * seeds


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GDEXP_"))}
    env["HYDRA_FULL_ERROR"] = "1"
    return env


def timed_sweep(overrides: list[str], runs: int, job_folders: bool) -> tuple[float, float]:
    """The command's wall-clock seconds, and its CPU seconds (user + system: steadier than
    wall time on a shared machine)."""
    with tempfile.TemporaryDirectory() as folder:
        args = [
            sys.executable, "-m", "gdexp", "-m", "hydra/launcher=batched", *overrides,
            f"hydra.launcher.job_folders={str(job_folders).lower()}", "hydra.sweep.dir=sweep",
        ]  # fmt: skip
        start, used = time.perf_counter(), cpu_seconds()
        done = subprocess.run(args, cwd=folder, env=environment(), capture_output=True, text=True)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - used
        if done.returncode != 0:
            sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
        client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
        experiment = client.get_experiment_by_name("gdexp")
        logged = client.search_runs([experiment.experiment_id], max_results=50_000)
        children = sum(1 for r in logged if "mlflow.parentRunId" in r.data.tags)
        folders = len(list((Path(folder) / "sweep").glob("*/.hydra/hydra.yaml")))
        if children != runs or folders != (runs if job_folders else 0):
            sys.exit(f"job_folders={job_folders}: {children} runs, {folders} job folders")
        return seconds, cpu


def cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


def hydra_cfg_seconds(overrides: list[str]) -> tuple[float, int]:
    """Every job's hydra_cfg made at once, as the launcher would make it eagerly."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    from gdexp.__main__ import CONFIG_DIR
    from hydra_plugins.gdexp_plugins._batched_core import JobHydraConfigs
    from hydra_plugins.gdexp_plugins._job_configs import grid_jobs

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(
            "config", [*overrides, "hydra/launcher=batched"], run_mode=RunMode.MULTIRUN
        )
        jobs = grid_jobs(OverridesParser.create().parse_overrides(overrides))
        configs = JobHydraConfigs(loader, master)
        configs.make(jobs[0], 0)  # the one composition per set of group choices
        start = time.perf_counter()
        for num, job in enumerate(jobs):
            configs.make(job, num)
        return time.perf_counter() - start, len(jobs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="40 configs: a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    overrides, runs = grid(args.quick)
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for repeat in range(args.repeats):
        for job_folders in (False, True):
            print(
                f"  {runs} BGD configs, job_folders={str(job_folders).lower()}, "
                f"repeat {repeat + 1}/{args.repeats} ...",
                file=sys.stderr,
                flush=True,
            )
            times[job_folders].append(timed_sweep(overrides, runs, job_folders))
    wall = {flag: statistics.median(t for t, _ in times[flag]) for flag in (False, True)}
    cpu = {flag: statistics.median(c for _, c in times[flag]) for flag in (False, True)}
    made, jobs = hydra_cfg_seconds(overrides)
    print(
        f"| {runs} BGD configs, `hydra/launcher=batched` | wall s | CPU s | all repeats "
        "(wall / CPU) |"
    )
    print("| --- | ---: | ---: | --- |")
    for flag in (False, True):
        every = ", ".join(f"{t:.1f} / {c:.1f}" for t, c in times[flag])
        print(
            f"| `hydra.launcher.job_folders={str(flag).lower()}` | {wall[flag]:.1f} "
            f"| {cpu[flag]:.1f} | {every} |"
        )
    print()
    for what, median in (("wall", wall), ("CPU", cpu)):
        extra = median[True] - median[False]
        print(
            f"- job folders, {what} time: {median[True] / median[False]:.2f}× the sweep's "
            f"without them (+{extra:.1f} s, +{100 * extra / median[False]:.0f}%, "
            f"{1000 * extra / runs:.1f} ms a job)"
        )
    without = wall[False]
    print(
        f"- every job's hydra_cfg made up front (in process): {made:.2f} s for {jobs} jobs "
        f"({1000 * made / jobs:.1f} ms a job, {100 * made / without:.0f}% of the sweep without "
        "job folders); the launchers make it when it is first read"
    )
    print(f"\nMedians of {args.repeats} alternating runs each; Python {sys.version.split()[0]}.")


if __name__ == "__main__":
    main()
