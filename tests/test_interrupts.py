"""Interrupts that always land: seeded series of SIGINTs and SIGTERMs at random moments of
running sweeps, on every local launcher and the Optuna sweeper, beside a CPU hog on every core.

Each interrupt must end the command with exit code 130 and one message, leave no run RUNNING,
and close the sweep's parent KILLED with a tally equal to its children's statuses; after the
series, the same command completes the sweep (the hog has stopped by then: it is there for the
signals). `GDEXP_INTERRUPTS` sets how many signals a
series sends, SIGINT and SIGTERM alternately: 1 in CI, 20 by hand:

    GDEXP_INTERRUPTS=20 GDEXP_SLURM_INTERRUPTS=4 python tests/cpu_hog.py \
        pytest -s tests/test_interrupts.py

(the hog is then around the whole run as well).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Store, clean_env
from cpu_hog import cpu_hog

from gdexp import names

pytestmark = pytest.mark.slow

# Signals per series, SIGINT and SIGTERM alternately: 1 in CI, 20 by hand.
INTERRUPTS = int(os.environ.get("GDEXP_INTERRUPTS", "1"))
SEED = 20261204
PLAN_LINES = ("Sweep of ", "Tracked sweep (")  # the parent run exists: the sweep is running


@dataclass
class Command:
    """`python -m gdexp -m ...` in the background, its output read as it comes."""

    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, folder: Path, args: tuple[str, ...], env: dict[str, str]) -> Command:
        process = subprocess.Popen(
            [sys.executable, "-m", "gdexp", "-m", *args],
            cwd=folder, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        command = cls(process)
        threading.Thread(target=command._read, daemon=True).start()
        return command

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_plan(self, timeout: float = 180) -> bool:
        """Until the sweep has its parent run; False if the command ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in self.output for text in PLAN_LINES):
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.05)
        self.process.kill()
        raise AssertionError(f"no sweep plan after {timeout} s:\n{self.output[-3000:]}")

    def wait(self, timeout: float = 300) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"still running {timeout} s after the signal:\n{self.output[-3000:]}"
            ) from None
        time.sleep(0.1)  # the reader thread takes the last lines
        return code


def sweep_of(store: Store, folder_name: str) -> tuple[object, list]:
    """The parent run of the sweep made in multirun/<folder_name>, and its children."""
    runs = store.runs()
    [parent] = [
        r for r in runs
        if r.data.tags.get(names.KIND_TAG) == names.SWEEP_KIND
        and r.data.tags.get(names.SWEEP_DIR_TAG, "").endswith(f"/{folder_name}")
    ]  # fmt: skip
    kids = [r for r in runs if r.data.tags.get(names.PARENT_TAG) == parent.info.run_id]
    return parent, kids


def check_interrupted(store: Store, folder_name: str, command: Command, code: int) -> Counter:
    """The command stopped as it should; returns its children's statuses."""
    output = command.output
    assert code == 130, f"exit {code}:\n{output[-4000:]}"
    assert "Traceback" not in output and "Exception ignored" not in output, output[-4000:]
    said = output.count("Sweep interrupted (") + output.count("Interrupted (")
    assert said == 1, f"the stop said {said} times:\n{output[-4000:]}"
    parent, kids = sweep_of(store, folder_name)
    statuses = Counter(k.info.status for k in kids)
    assert statuses["RUNNING"] == 0, statuses
    assert parent.info.status == "KILLED", (parent.info.status, output[-3000:])
    tags = parent.data.tags
    finished = sum(int(v) for k, v in tags.items() if k.startswith(names.RUNS_TAG_PREFIX))
    tally = {"FINISHED": finished, "KILLED": int(tags[names.KILLED_RUNS_TAG]),
             "FAILED": int(tags[names.FAILED_RUNS_TAG])}  # fmt: skip
    assert tally == {s: statuses.get(s, 0) for s in tally}, (tally, statuses)
    assert set(statuses) <= set(tally), statuses
    return statuses


# Each series: a sweep that runs for several seconds past its plan line on a busy machine, and
# the window (seconds after the plan line) that the signals fall in.
SERIES = {
    "basic": (("method=sgd", "seed=range(0,8)", "epochs=60"), 8.0),
    "batched": (
        ("hydra/launcher=batched", "method=bgd,sgd", "seed=range(0,24)", "epochs=100"),
        5.0,
    ),
    "joblib": (
        (
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "method=sgd",
            "seed=range(0,8)",
            "epochs=60",
        ),
        10.0,
    ),
    "submitit_local": (
        ("hydra/launcher=submitit_local", "method=sgd", "seed=range(0,4)", "epochs=100"),
        12.0,
    ),
    "optuna": (
        (
            "hydra/sweeper=optuna",
            "+sweeps=best_step_size",
            "method=sgd",
            "epochs=60",
            "hydra.sweeper.n_trials=12",
        ),
        10.0,
    ),
}


@pytest.mark.parametrize("series", list(SERIES))
def test_a_series_of_interrupts_always_lands(series: str, store: Store):
    args, window = SERIES[series]
    rng = random.Random(f"{SEED}-{series}")
    pair = [signal.SIGINT, signal.SIGTERM]
    rng.shuffle(pair)  # which comes first: in CI, where a series sends one, half each
    signals = [pair[i % 2] for i in range(INTERRUPTS)]
    env = clean_env()
    landed: Counter = Counter()
    with cpu_hog():
        for number, signum in enumerate(signals):
            delay = rng.uniform(0, window)
            while True:  # a sweep that ended before its signal is tried again, sooner
                name = f"interrupted-{number}"
                folder = (f"hydra.sweep.dir=multirun/{name}", "tracking.resume=false")
                command = Command.start(store.folder, (*args, *folder), env)
                assert command.wait_for_plan(), command.output[-3000:]
                time.sleep(delay)
                if command.process.poll() is None:
                    break
                assert command.process.returncode == 0, command.output[-3000:]
                number, delay = number + 1000, delay / 2
            command.process.send_signal(signum)
            statuses = check_interrupted(store, name, command, command.wait())
            landed[signal.Signals(signum).name] += 1
            landed["runs killed in flight"] += statuses["KILLED"]
    # The same command once more, without the signal (nor the hog: what it shows is that the
    # interrupted attempts left a sweep that completes): the sweep completes.
    final = Command.start(store.folder, (*args, "hydra.sweep.dir=multirun/final"), env)
    code = final.wait(timeout=600)
    assert code == 0, final.output[-4000:]
    parent, _ = sweep_of(store, "final") if series == "optuna" else latest_parent(store)
    assert parent.info.status == "FINISHED"
    assert int(parent.data.tags[names.KILLED_RUNS_TAG]) == 0
    assert int(parent.data.tags[names.FAILED_RUNS_TAG]) == 0
    print(f"{series}: {dict(landed)}")  # the counts, for the record (pytest -s)
    assert landed["SIGINT"] + landed["SIGTERM"] == INTERRUPTS


def latest_parent(store: Store) -> tuple[object, list]:
    """The grid sweep the final command resumed (its latest attempt's parent)."""
    runs = store.runs()
    parents = [r for r in runs if r.data.tags.get(names.KIND_TAG) == names.SWEEP_KIND]
    parent = max(parents, key=lambda r: r.info.end_time or 0)
    kids = [r for r in runs if r.data.tags.get(names.PARENT_TAG) == parent.info.run_id]
    n_runs = int(parent.data.tags[names.N_RUNS_TAG])
    finished = {k.data.tags[names.CONFIG_HASH_TAG] for k in kids if k.info.status == "FINISHED"}
    assert len(finished) == n_runs, (len(finished), n_runs)
    return parent, kids


def test_a_single_run_stops_between_epochs_and_ends_killed(store: Store):
    single = subprocess.Popen(
        [sys.executable, "-m", "gdexp", "method=sgd", "epochs=100000"],
        cwd=store.folder, env=clean_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    reading = Command(single)
    threading.Thread(target=reading._read, daemon=True).start()
    deadline = time.monotonic() + 120
    while "epoch   2 " not in reading.output and time.monotonic() < deadline:
        time.sleep(0.05)
    single.send_signal(signal.SIGTERM)
    code = reading.wait(timeout=60)
    output = reading.output
    assert code == 130 and "Traceback" not in output, output[-3000:]
    assert output.count("Interrupted (SIGTERM): stopped at a safe point") == 1, output[-3000:]
    [run] = store.runs()
    assert run.info.status == "KILLED"
    assert run.data.params["epochs"] == "100000"  # the run still says what it was


def test_a_second_signal_stops_at_once_and_the_next_command_repairs(store: Store):
    args = ("method=sgd", "seed=range(0,4)", "epochs=100000", "tracking.log_step_loss=false")
    command = Command.start(store.folder, args, clean_env())
    assert command.wait_for_plan()
    deadline = time.monotonic() + 120
    while not [r for r in store.runs() if r.data.tags.get(names.PARENT_TAG)]:
        assert time.monotonic() < deadline, command.output[-3000:]
        time.sleep(0.2)
    # Two signals back to back: the second comes before the first's safe point (an epoch of
    # SGD is ~10 ms, but the flag is read only between them) or during the clean-up.
    command.process.send_signal(signal.SIGINT)
    command.process.send_signal(signal.SIGINT)
    code = command.wait(timeout=60)
    output = command.output
    assert code == 130 and "Traceback" not in output, output[-3000:]
    stopped = output.count("Stopped at once (second signal)")
    interrupted = output.count("Sweep interrupted (SIGINT)")
    # Either the second signal cut the clean-up short (and said so), or the first had finished it.
    assert (stopped, interrupted) in ((1, 0), (0, 1)), output[-3000:]
    if stopped:
        assert "the next sweep in this experiment marks them KILLED" in output
        assert any(r.info.status == "RUNNING" for r in store.runs())
    # The next sweep in the experiment (shorter runs) closes what the stopped one left.
    again = Command.start(store.folder, ("method=sgd", "seed=0", "epochs=5"), clean_env())
    assert again.wait(timeout=300) == 0, again.output[-3000:]
    assert [r.info.run_name for r in store.runs() if r.info.status == "RUNNING"] == []


SLURM_INTERRUPTS = int(os.environ.get("GDEXP_SLURM_INTERRUPTS", "1"))  # per launcher
SLURM_GRID = ("method=sgd", "seed=0,1", "epochs=1500", "tracking.log_step_loss=false")


@pytest.mark.parametrize("launcher", ["slurm", "slurm_batched"])
def test_interrupts_on_the_cluster_leave_no_task_and_no_run_running(
    launcher: str, slurm_cluster, store: Store
):
    args = (
        *SLURM_GRID, f"hydra/launcher={launcher}", "hydra.launcher.mem_gb=1",
        f"hydra.launcher.partition={slurm_cluster.partition}",
        *(("hydra.launcher.runs_per_task=1",) if launcher == "slurm_batched" else ()),
    )  # fmt: skip
    env = clean_env(SLURM_CONF=slurm_cluster.env["SLURM_CONF"])
    rng = random.Random(f"{SEED}-{launcher}")
    signals = [(signal.SIGINT, signal.SIGTERM)[i % 2] for i in range(SLURM_INTERRUPTS)]
    with cpu_hog():
        for number, signum in enumerate(signals):
            name = f"interrupted-{number}"
            folder = (f"hydra.sweep.dir=multirun/{name}", "tracking.resume=false")
            command = Command.start(store.folder, (*args, *folder), env)
            assert command.wait_for_plan(), command.output[-3000:]
            deadline = time.monotonic() + 180
            while not [r for r in store.runs() if r.info.status == "RUNNING"
                       and r.data.tags.get(names.PARENT_TAG)]:  # fmt: skip
                assert time.monotonic() < deadline and command.process.poll() is None, (
                    command.output[-3000:]
                )
                time.sleep(0.3)
            time.sleep(rng.uniform(0, 5))  # a task is training
            command.process.send_signal(signum)
            check_interrupted(store, name, command, command.wait(timeout=180))
            assert slurm_cluster.wait_until_empty(30) == [], "a task outlived the command"
    final = Command.start(store.folder, (*args, "hydra.sweep.dir=multirun/final"), env)
    code = final.wait(timeout=600)
    assert code == 0, final.output[-4000:]
    parent, _ = latest_parent(store)
    assert parent.info.status == "FINISHED"
    assert slurm_cluster.squeue() == []
