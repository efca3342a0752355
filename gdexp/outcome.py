"""How a run ended, judged from its own loss history against the best fit its data allows.

The history is L_0 … L_E: the full-data loss at the start of each epoch (`Trajectory.epoch_loss`)
and after the last one (`Trajectory.final_loss`); L* is the least-squares loss on the run's data,
and L_k − L* the run's *excess* loss at epoch k. The rules, in order:

1. `diverged`: the loss turned inf or NaN.
2. `converged`: at most `tolerance` of the initial excess is left, L_E − L* <= tolerance·(L_0 − L*)
   (or the run sits on the optimum up to float32 rounding, L_E − L* <= 1e-6·L*).
3. Otherwise the *tail* decides: the last quarter of the epoch-to-epoch changes, at least 3 (all
   of them if there are fewer). A change L_k − L_{k−1} counts as a move when it is larger than
   1e-4 of the excess before it and larger than 1e-6 of the loss (float32 rounding):
   - moves down only: `converging`, the loss is still falling;
   - no moves: `stalled`, the loss is flat above the optimum: the run settled there;
   - moves up and down: `oscillating`, no steady trend;
   - moves up only: `diverged`, the loss is still growing at the end.

So SGD at step size 0.05 in data order, flat at ~22 (the optimum is 0.17), is `stalled`; SGD at
0.1 rose to ~1e14 in its first epoch and then sits there: `stalled` in float64, `oscillating` in
float32 (rounding, amplified ~3e7-fold within an epoch, keeps it bouncing by a factor of a few
around that level). `converging` says the loss is still falling, not where it will stop (theory's
verdict, gdexp.theory, says that).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gdexp.data import Dataset, least_squares_fit
from gdexp.train import Trajectory

CONVERGED = "converged"
CONVERGING = "converging"
STALLED = "stalled"
OSCILLATING = "oscillating"
DIVERGED = "diverged"
# Best to worst; the sweep tallies runs over these.
OUTCOMES = (CONVERGED, CONVERGING, STALLED, OSCILLATING, DIVERGED)
# Each outcome in a few words, for reports and legends.
MEANINGS = {
    CONVERGED: "at most the tolerance of the initial excess loss is left",
    CONVERGING: "the loss is still falling at the end",
    STALLED: "the loss is flat at the end, above the optimum",
    OSCILLATING: "the loss goes up and down at the end, with no trend",
    DIVERGED: "the loss went to infinity or is still growing at the end",
}

TAIL_SHARE = 0.25  # the tail: this share of the history's changes ...
TAIL_MIN = 3  # ... but at least this many
MOVE_SHARE = 1e-4  # a move: a change above this share of the excess before it ...
ROUNDING = 1e-6  # ... and above this share of the loss (float32 keeps ~7 digits)
TREND_SHARE = 0.75  # a trend: the net change (log scale) is at least this share of all changes


@dataclass(frozen=True)
class Judgement:
    outcome: str
    reason: str  # the rule that decided, in words with the numbers


def tail_length(n_changes: int) -> int:
    """How many of the last epoch-to-epoch changes the tail rules look at."""
    return min(n_changes, max(TAIL_MIN, math.ceil(TAIL_SHARE * n_changes)))


def judge(losses: Sequence[float], optimal_loss: float, tolerance: float) -> Judgement:
    """The outcome of a loss history L_0 … L_E (see the module docstring for the rules)."""
    loss = np.asarray(losses, dtype=np.float64)
    if loss.size == 0:
        raise ValueError("a loss history needs at least its initial loss")
    if not np.isfinite(loss).all():
        at = int(np.argmin(np.isfinite(loss)))
        return Judgement(DIVERGED, f"the loss turned non-finite at epoch {at}")
    first, last = float(loss[0]), float(loss[-1])
    left, allowed = last - optimal_loss, tolerance * (first - optimal_loss)
    if left <= max(allowed, ROUNDING * abs(optimal_loss)):
        return Judgement(
            CONVERGED,
            f"excess loss {left:.3g} left of {first - optimal_loss:.3g}, "
            f"within the tolerance ({tolerance:g} of it)",
        )
    changes = np.diff(loss)
    n = tail_length(changes.size)
    if n == 0:
        return Judgement(STALLED, "no epoch ran; the loss is above the optimum")
    tail = loss[-n - 1 :]
    before, step = tail[:-1], np.diff(tail)
    threshold = np.maximum(MOVE_SHARE * (before - optimal_loss), ROUNDING * np.abs(before))
    moves = int((np.abs(step) > threshold).sum())
    where = f"over the last {n} epochs"
    excess = f"{left:.4g} above the optimum {optimal_loss:.4g}"
    if 2 * moves < n:
        return Judgement(STALLED, f"the loss was flat {where}, {excess}")
    logs = np.diff(np.log(np.maximum(tail, np.finfo(np.float64).tiny)))
    net, path = float(logs.sum()), float(np.abs(logs).sum())
    if abs(net) >= TREND_SHARE * path:
        if net < 0:
            return Judgement(CONVERGING, f"the loss fell {where}, to {excess}")
        return Judgement(DIVERGED, f"the loss grew {where}, to {last:.4g}")
    return Judgement(
        OSCILLATING,
        f"the loss went up and down {where}, between {float(tail.min()):.4g} and "
        f"{float(tail.max()):.4g}, with no steady trend",
    )


def loss_history(trajectory: Trajectory) -> np.ndarray:
    """L_0 … L_E of a trajectory: each epoch's starting loss, then the final loss (inf for a run
    that turned non-finite)."""
    return np.append(trajectory.epoch_loss, trajectory.final_loss)


@dataclass(frozen=True)
class RunSummary:
    """The figures a run is judged by; what a job returns to the sweeper."""

    outcome: str
    initial_loss: float
    final_loss: float
    optimal_loss: float
    final_w: float
    final_b: float
    diverged_at_epoch: int | None
    run_id: str | None = None
    reason: str = ""  # why `outcome`: the rule that decided, with its numbers


def summarize(trajectory: Trajectory, data: Dataset, tolerance: float) -> RunSummary:
    """The run's outcome (`judge` on its loss history) and final figures."""
    _, _, optimal_loss = least_squares_fit(data)
    judgement = judge(loss_history(trajectory), optimal_loss, tolerance)
    return RunSummary(
        outcome=judgement.outcome,
        initial_loss=trajectory.initial_loss,
        final_loss=trajectory.final_loss,
        optimal_loss=optimal_loss,
        final_w=trajectory.final_w,
        final_b=trajectory.final_b,
        diverged_at_epoch=trajectory.diverged_at_epoch,
        reason=judgement.reason,
    )
