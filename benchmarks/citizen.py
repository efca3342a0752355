"""What installing gdexp costs other Hydra apps: an unrelated app's start-up with gdexp's plugins
on the path and without them, side by side in one run.

python benchmarks/citizen.py [--repeats 15]

Hydra imports every module under `hydra_plugins/` at start-up, for every app. "Without gdexp" is
the same interpreter and the same site-packages with gdexp's editable install hidden: Python is
started with -S (no site initialisation, so no .pth file runs and gdexp's finder is never
installed) and the site-packages folder is put on PYTHONPATH instead. Repetitions alternate
between the two, and medians are reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "tests" / "apps" / "unrelated" / "app.py"


def environment(with_gdexp: bool) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
    if with_gdexp:
        return [sys.executable], env
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    return [sys.executable, "-S"], env


def timed(command: list[str], env: dict[str, str], folder: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def sees_gdexp(with_gdexp: bool, folder: str) -> bool:
    python, env = environment(with_gdexp)
    done = subprocess.run(
        [*python, str(APP), "--hydra-help"], cwd=folder, env=env, capture_output=True, text=True
    )
    return "batched" in done.stdout  # gdexp's launcher, listed among Hydra's launchers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        assert sees_gdexp(True, folder) and not sees_gdexp(False, folder), "setup is wrong"
        times: dict[tuple[str, bool], list[float]] = {}
        for _ in range(args.repeats):
            for what in (("--cfg", "job"), ("--help",)):
                for with_gdexp in (True, False):
                    python, env = environment(with_gdexp)
                    command = [*python, str(APP), *what]
                    times.setdefault((" ".join(what), with_gdexp), []).append(
                        timed(command, env, folder)
                    )
    print("| unrelated Hydra app | with gdexp installed | without | difference |")
    print("| --- | ---: | ---: | ---: |")
    for what in ("--cfg job", "--help"):
        with_it = statistics.median(times[what, True])
        without = statistics.median(times[what, False])
        print(
            f"| `app.py {what}` | {with_it:.3f} s | {without:.3f} s | {with_it - without:+.3f} s |"
        )
    print(f"\nMedians of {args.repeats} alternating runs each; Python {sys.version.split()[0]}.")


if __name__ == "__main__":
    main()
