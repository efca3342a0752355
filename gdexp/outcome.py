"""How a run ended, judged against the best fit its data allows."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gdexp.data import Dataset, least_squares_fit
from gdexp.train import Trajectory

CONVERGED = "converged"
CONVERGING = "converging"
DIVERGED = "diverged"
OUTCOMES = (CONVERGED, CONVERGING, DIVERGED)


def classify(initial_loss: float, final_loss: float, optimal_loss: float, tolerance: float) -> str:
    """`diverged` if the loss grew or turned non-finite; `converged` if at most `tolerance` of the
    excess loss it started with (initial - optimal) is left; `converging` otherwise."""
    if not math.isfinite(final_loss) or final_loss > initial_loss:
        return DIVERGED
    if final_loss - optimal_loss <= tolerance * (initial_loss - optimal_loss):
        return CONVERGED
    return CONVERGING


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


def summarize(trajectory: Trajectory, data: Dataset, tolerance: float) -> RunSummary:
    _, _, optimal_loss = least_squares_fit(data)
    return RunSummary(
        outcome=classify(trajectory.initial_loss, trajectory.final_loss, optimal_loss, tolerance),
        initial_loss=trajectory.initial_loss,
        final_loss=trajectory.final_loss,
        optimal_loss=optimal_loss,
        final_w=trajectory.final_w,
        final_b=trajectory.final_b,
        diverged_at_epoch=trajectory.diverged_at_epoch,
    )
