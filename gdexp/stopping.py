"""Stopping on request: SIGINT and SIGTERM only set a flag; gdexp stops at its own safe points.

A KeyboardInterrupt raised wherever the main thread happens to be can land inside library code
that swallows it or is left half-built (SQLAlchemy's garbage-collector hooks, `__del__`
methods), and the sweep then runs on. So the handler raises nothing: it records the request,
and gdexp asks `check()` where stopping is safe (between runs, epochs, chunks and store calls,
and while the launching process waits for workers or cluster tasks), which raises
`StopRequested` there, in gdexp's own frames.

A sweep's jobs may run in other processes (joblib workers, submitit tasks) that never see the
signal: the process that runs the sweep leaves a marker file in the sweep's folder, and jobs
check for it too (`follow`). A second signal stops at once, saying what may be left RUNNING.

Only the standard library here: Hydra plugins import it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from gdexp.names import STOP_MARKER

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report a Ctrl-C

# What a second signal may leave behind, and what mends it (gdexp.sweep.close_abandoned_sweeps).
SECOND_SIGNAL_SWEEP = (
    "Stopped at once (second signal): the sweep and its runs in flight may be left RUNNING in "
    "MLflow; the next sweep in this experiment marks them KILLED, and the same command runs "
    "them again.\n"
)
SECOND_SIGNAL_RUN = (
    "Stopped at once (second signal): the run may be left RUNNING in MLflow, its record "
    "incomplete; run the command again for a whole one.\n"
)


class StopRequested(KeyboardInterrupt):
    """Raised by gdexp at a safe point once a stop was asked for. A KeyboardInterrupt, so that
    whatever cleans up after Ctrl-C (closing a run KILLED, closing a sweep) cleans up after it."""


_requested: str | None = None  # the first signal's name
_command = False  # this process is the command (`python -m gdexp`), not a worker or task
_announce: list[Path] = []  # sweep folders this process runs: marked when a stop is asked for
_followed: list[Path] = []  # sweep folders whose marker stops this process's jobs


def install(command: bool = False) -> None:
    """Handle SIGINT and SIGTERM by setting the flag (main thread only: Python allows no other).
    Replaces handlers libraries set (submitit ignores SIGTERM in its tasks; a cancelled task
    must stop). `command`: this process is the command a user started, not a worker of it."""
    global _command
    _command = _command or command
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _requested
    if _requested is not None:
        # Nothing may be left to run: no clean-up, no atexit, no flushing of half-written state.
        os.write(2, (SECOND_SIGNAL_SWEEP if _announce else SECOND_SIGNAL_RUN).encode())
        os._exit(INTERRUPTED_EXIT_CODE)
    _requested = signal.Signals(signum).name
    for folder in _announce:
        _mark(folder)


def _mark(folder: Path) -> None:
    with contextlib.suppress(OSError):  # a folder gone or read-only: this process still stops
        os.close(os.open(folder / STOP_MARKER, os.O_WRONLY | os.O_CREAT, 0o644))


def announce(folder: Path) -> None:
    """This process runs the sweep in `folder`: a stop asked of it is passed on to the sweep's
    jobs in other processes. A marker left by an earlier, interrupted attempt is removed."""
    with contextlib.suppress(FileNotFoundError):
        (folder / STOP_MARKER).unlink()
    if folder not in _announce:
        _announce.append(folder)
    if _requested is not None:
        _mark(folder)


def forget(folder: Path) -> None:
    """The sweep in `folder` has closed."""
    with contextlib.suppress(ValueError):
        _announce.remove(folder)


def is_command() -> bool:
    """Whether this process is the command a user started: the one that closes a stopped
    sweep and exits 130 (a worker's stopped job is a failure it hands back)."""
    return _command


def follow(folder: Path) -> None:
    """This process runs jobs of the sweep in `folder`: they stop when it is asked to."""
    if folder not in _followed:
        _followed.append(folder)


def requested() -> str | None:
    """The signal that asked this process, or the sweep it works for, to stop; else None."""
    if _requested is None and any((folder / STOP_MARKER).exists() for folder in _followed):
        return "the sweep's stop"
    return _requested


def check() -> None:
    """A safe point: raise StopRequested if a stop was asked for."""
    if requested() is not None:
        raise StopRequested(requested())


def check_epoch(epoch: int, *_: object) -> None:
    """`check` as a training callback (called after each epoch)."""
    check()


def reset() -> None:
    """Forget every request and folder (tests that drive several sweeps in one process)."""
    global _requested
    _requested = None
    _announce.clear()
    _followed.clear()
