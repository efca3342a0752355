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

The rules live in `judge_many`, which judges many histories at once (a grid's table); `judge`
is it for one history, `summarize_many` is `summarize` for a `TrajectoryBatch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from gdexp.data import Dataset, least_squares_fit
from gdexp.train import Trajectory, TrajectoryBatch

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


# The rule that decided a judgement (`Judgements.rule`), in the order the rules are tried.
NON_FINITE, WITHIN_TOLERANCE, NO_EPOCH, FLAT, FELL, GREW, UP_AND_DOWN = range(7)
_RULE_OUTCOME = (DIVERGED, CONVERGED, STALLED, STALLED, CONVERGING, DIVERGED, OSCILLATING)
_RULE_OUTCOME_CODE = np.array([OUTCOMES.index(o) for o in _RULE_OUTCOME], dtype=np.int8)


@dataclass(frozen=True)
class Judgements:
    """The outcomes of many loss histories of one length, with the numbers each reason quotes;
    one entry per history."""

    rule: np.ndarray  # (configs,) int8: which rule decided (NON_FINITE … UP_AND_DOWN)
    non_finite_at: np.ndarray  # (configs,): the first epoch whose loss is inf or NaN, else -1
    initial: np.ndarray  # (configs,): L_0
    final: np.ndarray  # (configs,): L_E
    optimal_loss: np.ndarray  # (configs,): L*
    tolerance: np.ndarray  # (configs,)
    tail: int  # the tail's length in changes (the same for every history of this length)
    tail_min: np.ndarray  # (configs,): the tail's lowest loss
    tail_max: np.ndarray  # (configs,): the tail's highest loss

    def __len__(self) -> int:
        return len(self.rule)

    @property
    def outcome(self) -> np.ndarray:
        """(configs,): each history's outcome word."""
        return np.asarray(_RULE_OUTCOME)[self.rule]

    @property
    def outcome_code(self) -> np.ndarray:
        """(configs,) int8: each outcome as its index in OUTCOMES, a compact table column."""
        return _RULE_OUTCOME_CODE[self.rule]

    def reason(self, c: int) -> str:
        """Why history c got its outcome: the rule that decided, with its numbers."""
        rule = int(self.rule[c])
        first, last, optimal = (
            float(self.initial[c]),
            float(self.final[c]),
            float(self.optimal_loss[c]),
        )
        left = last - optimal
        where = f"over the last {self.tail} epochs"
        excess = f"{left:.4g} above the optimum {optimal:.4g}"
        if rule == NON_FINITE:
            return f"the loss turned non-finite at epoch {int(self.non_finite_at[c])}"
        if rule == WITHIN_TOLERANCE:
            return (
                f"excess loss {left:.3g} left of {first - optimal:.3g}, "
                f"within the tolerance ({float(self.tolerance[c]):g} of it)"
            )
        if rule == NO_EPOCH:
            return "no epoch ran; the loss is above the optimum"
        if rule == FLAT:
            return f"the loss was flat {where}, {excess}"
        if rule == FELL:
            return f"the loss fell {where}, to {excess}"
        if rule == GREW:
            return f"the loss grew {where}, to {last:.4g}"
        return (
            f"the loss went up and down {where}, between {float(self.tail_min[c]):.4g} and "
            f"{float(self.tail_max[c]):.4g}, with no steady trend"
        )

    def judgement(self, c: int) -> Judgement:
        return Judgement(_RULE_OUTCOME[int(self.rule[c])], self.reason(c))


def judge_many(losses: ArrayLike, optimal_loss: ArrayLike, tolerance: ArrayLike) -> Judgements:
    """The outcomes of loss histories L_0 … L_E of one length, one row each (configs × (E + 1)),
    each against its own optimal loss and tolerance (arrays of one per row, or one for all).
    The rules of the module docstring; `judge` is this for one row. A history that stopped
    where it turned non-finite is judged the same padded with inf to the common length."""
    loss = np.asarray(losses, dtype=np.float64)
    if loss.ndim != 2:
        raise ValueError(f"loss histories are configs × epochs, not of shape {loss.shape}")
    configs, length = loss.shape
    if length == 0:
        raise ValueError("a loss history needs at least its initial loss")
    optimal = np.broadcast_to(np.asarray(optimal_loss, dtype=np.float64), (configs,))
    tol = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), (configs,))
    first, last = loss[:, 0], loss[:, -1]
    finite = np.isfinite(loss)
    all_finite = finite.all(axis=1)
    n = tail_length(length - 1)
    tail = np.ascontiguousarray(loss[:, length - n - 1 :])
    # Every rule is computed for every row and the first that applies wins; rows a rule does not
    # apply to (non-finite ones) may compute inf or NaN there, unused.
    with np.errstate(all="ignore"):
        left, allowed = last - optimal, tol * (first - optimal)
        converged = left <= np.maximum(allowed, ROUNDING * np.abs(optimal))
        before, step = tail[:, :-1], np.diff(tail, axis=1)
        threshold = np.maximum(MOVE_SHARE * (before - optimal[:, None]), ROUNDING * np.abs(before))
        moves = (np.abs(step) > threshold).sum(axis=1)
        logs = np.diff(np.log(np.maximum(tail, np.finfo(np.float64).tiny)), axis=1)
        net, path = logs.sum(axis=1), np.abs(logs).sum(axis=1)
        trend = np.abs(net) >= TREND_SHARE * path
    rule = np.select(
        [~all_finite, converged, np.full(configs, n == 0), 2 * moves < n, trend & (net < 0), trend],
        [NON_FINITE, WITHIN_TOLERANCE, NO_EPOCH, FLAT, FELL, GREW],
        UP_AND_DOWN,
    ).astype(np.int8)
    return Judgements(
        rule=rule,
        non_finite_at=np.where(all_finite, -1, np.argmin(finite, axis=1)),
        initial=first,
        final=last,
        optimal_loss=optimal,
        tolerance=tol,
        tail=n,
        tail_min=tail.min(axis=1),
        tail_max=tail.max(axis=1),
    )


def judge(losses: Sequence[float], optimal_loss: float, tolerance: float) -> Judgement:
    """The outcome of a loss history L_0 … L_E (see the module docstring for the rules)."""
    loss = np.asarray(losses, dtype=np.float64)
    if loss.size == 0:
        raise ValueError("a loss history needs at least its initial loss")
    return judge_many(loss[None, :], optimal_loss, tolerance).judgement(0)


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


@dataclass(frozen=True)
class RunSummaries:
    """`RunSummary` for many runs at once, as columns (one entry per run): what a table of a
    dense grid records. `summary(c)` is run c's `RunSummary`."""

    outcome: np.ndarray  # (runs,) outcome words
    initial_loss: np.ndarray
    final_loss: np.ndarray
    optimal_loss: np.ndarray
    final_w: np.ndarray
    final_b: np.ndarray
    diverged_at_epoch: np.ndarray  # -1 for a run that did not diverge
    judgements: Judgements  # the reasons, on demand

    def __len__(self) -> int:
        return len(self.outcome)

    def summary(self, c: int) -> RunSummary:
        diverged = int(self.diverged_at_epoch[c])
        return RunSummary(
            outcome=str(self.outcome[c]),
            initial_loss=float(self.initial_loss[c]),
            final_loss=float(self.final_loss[c]),
            optimal_loss=float(self.optimal_loss[c]),
            final_w=float(self.final_w[c]),
            final_b=float(self.final_b[c]),
            diverged_at_epoch=diverged if diverged >= 0 else None,
            reason=self.judgements.reason(c),
        )


def summarize_many(
    batch: TrajectoryBatch, optimal_loss: ArrayLike, tolerance: ArrayLike
) -> RunSummaries:
    """`summarize` for every run of a batch: `optimal_loss` is each run's least-squares loss
    (`least_squares_fit(data)[2]`, one per run or one for all), `tolerance` its convergence
    tolerance."""
    judgements = judge_many(batch.loss_history(), optimal_loss, tolerance)
    return RunSummaries(
        outcome=judgements.outcome,
        initial_loss=batch.initial_loss,
        final_loss=batch.final_loss,
        optimal_loss=judgements.optimal_loss,
        final_w=batch.final_w,
        final_b=batch.final_b,
        diverged_at_epoch=batch.diverged_at_epoch,
        judgements=judgements,
    )
