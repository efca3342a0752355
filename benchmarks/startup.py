"""Start-up, side by side in one run: how long gdexp takes to refuse, to help and to run once,
against a bare Hydra app and against the import floor of a run.

python benchmarks/startup.py              # 7 interleaved repetitions
python benchmarks/startup.py --reps 15    # steadier medians on a busy machine
python benchmarks/startup.py --quick      # 2 repetitions, a smoke run

Variants, each a fresh subprocess in a fresh temp folder, as a user would start it:
  bare Hydra app   a 10-line @hydra.main app (written to a temp folder), no config
  refusal          python -m gdexp step_size=-1
  --help           python -m gdexp --help
  single run       python -m gdexp (default run, into a new SQLite store)
  import floor     python -c "import torch, mlflow" + opening a new SQLite store
                   (MlflowClient(...).get_experiment_by_name(...)), what any tracked run pays
Repetitions are interleaved (every variant once per round, in a rotating order) so that a busy
machine slows all of them alike; the table shows medians. Targets: refusal and --help within
0.3 s of the bare Hydra app; the single run within 1.3x the import floor.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BARE_APP = textwrap.dedent(
    """\
    import hydra
    from omegaconf import DictConfig


    @hydra.main(version_base="1.3", config_path=None, config_name=None)
    def main(cfg: DictConfig) -> None:
        print(cfg)


    if __name__ == "__main__":
        main()
    """
)

FLOOR = (
    "import sys, torch, mlflow\n"
    "from mlflow.tracking import MlflowClient\n"
    "MlflowClient(sys.argv[1]).get_experiment_by_name('gdexp')\n"
)


@dataclass
class Variant:
    name: str
    command: Callable[[Path], list[str]]  # the command, given its fresh folder
    ok: Callable[[subprocess.CompletedProcess, Path], bool]  # did it do what it should


def runs_in(folder: Path) -> int:
    """Runs in the folder's mlflow.db, read with sqlite3 (no MLflow import here)."""
    with sqlite3.connect(folder / "mlflow.db") as db:
        return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


def variants(app: Path) -> list[Variant]:
    gdexp = [sys.executable, "-m", "gdexp"]
    return [
        Variant(
            "bare Hydra app", lambda _: [sys.executable, str(app)], lambda p, _: p.returncode == 0
        ),
        Variant(
            "refusal (step_size=-1)",
            lambda _: [*gdexp, "step_size=-1"],
            lambda p, f: p.returncode == 2 and "step_size" in p.stderr
            and not (f / "mlflow.db").exists(),
        ),
        Variant(
            "--help",
            lambda _: [*gdexp, "--help"],
            lambda p, _: p.returncode == 0 and p.stdout.startswith("gdexp"),
        ),
        Variant("single run", lambda _: gdexp, lambda p, f: p.returncode == 0 and runs_in(f) == 1),
        Variant(
            "import floor",
            lambda f: [sys.executable, "-c", FLOOR, f"sqlite:///{f}/mlflow.db"],
            lambda p, f: p.returncode == 0 and (f / "mlflow.db").exists(),
        ),
    ]  # fmt: skip


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HYDRA_"))}
    env["PYTHONPATH"] = str(REPO)  # gdexp from this clone, installed or not
    return env


def measure(variant: Variant, root: Path, env: dict[str, str]) -> float:
    folder = Path(tempfile.mkdtemp(dir=root))
    start = time.perf_counter()
    done = subprocess.run(
        variant.command(folder), cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )
    seconds = time.perf_counter() - start
    if not variant.ok(done, folder):
        raise SystemExit(
            f"{variant.name} did not do its job:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions")
    parser.add_argument("--quick", action="store_true", help="2 repetitions")
    args = parser.parse_args()
    reps = 2 if args.quick else args.reps

    with tempfile.TemporaryDirectory(prefix="gdexp-startup-") as tmp:
        root = Path(tmp)
        app = root / "bare_app.py"
        app.write_text(BARE_APP)
        chosen = variants(app)
        env = environment()
        measure(chosen[0], root, env)  # warm the file cache once, untimed
        times: dict[str, list[float]] = {v.name: [] for v in chosen}
        for rep in range(reps):
            shift = rep % len(chosen)
            for variant in chosen[shift:] + chosen[:shift]:  # a rotating order
                times[variant.name].append(measure(variant, root, env))
            print(f"round {rep + 1}/{reps} done", file=sys.stderr)

    median = {name: statistics.median(values) for name, values in times.items()}
    bare, floor = median["bare Hydra app"], median["import floor"]
    print(f"\nStart-up, medians of {reps} interleaved repetitions (wall seconds)\n")
    print("| variant | median s | min s | max s | − bare Hydra s | × import floor |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, values in times.items():
        print(
            f"| {name} | {median[name]:.2f} | {min(values):.2f} | {max(values):.2f} "
            f"| {median[name] - bare:+.2f} | {median[name] / floor:.2f}× |"
        )
    checks = [
        ("refusal within 0.3 s of bare Hydra", median["refusal (step_size=-1)"] - bare <= 0.3),
        ("--help within 0.3 s of bare Hydra", median["--help"] - bare <= 0.3),
        ("single run within 1.3× the import floor", median["single run"] / floor <= 1.3),
    ]
    print()
    for text, met in checks:
        print(f"{'met   ' if met else 'MISSED'}  {text}")


if __name__ == "__main__":
    main()
