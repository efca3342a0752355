"""Progress of a long sweep on the terminal: runs done / total, rate, time left."""

import logging
import time

log = logging.getLogger(__name__)


class Progress:
    """`runs done / total, rate, time left` on the log, at most every `every` seconds."""

    def __init__(self, total: int, every: float, what: str = "runs") -> None:
        self.total, self.every, self.what = total, every, what
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        left = (self.total - done) / rate if rate > 0 else float("inf")
        log.info(
            "Progress: %d/%d %s (%.0f%%), %.1f %s/s, %s left",
            done, self.total, self.what, 100 * done / self.total, rate, self.what,
            duration(left),
        )  # fmt: skip


def duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
    )
