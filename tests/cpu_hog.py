"""A CPU hog: one busy process per core, beside whatever is being tested.

Interrupts must land however busy the machine is; a loaded machine stretches every window in
which a signal can arrive at an awkward moment. As a fixture (`with cpu_hog():`), or around a
whole command:

    python tests/cpu_hog.py pytest tests/test_interrupts.py tests/test_survive.py
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

BUSY = "while True: pass"


@contextlib.contextmanager
def cpu_hog(processes: int | None = None) -> Iterator[list[subprocess.Popen]]:
    """`processes` busy loops (one per core by default), at normal priority, stopped on exit."""
    count = processes or os.cpu_count() or 1
    hogs = [
        subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        yield hogs
    finally:
        for hog in hogs:
            hog.send_signal(signal.SIGKILL)
        for hog in hogs:
            hog.wait()


if __name__ == "__main__":
    with cpu_hog():
        sys.exit(subprocess.call(sys.argv[1:]))
