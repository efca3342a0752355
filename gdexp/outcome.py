"""How a run ended, judged against the best fit its data allows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gdexp.data import Dataset
from gdexp.train import Trajectory

CONVERGED = "converged"
CONVERGING = "converging"
DIVERGED = "diverged"
OUTCOMES = (CONVERGED, CONVERGING, DIVERGED)


def least_squares_fit(data: Dataset) -> tuple[float, float, float]:
    """(w, b, loss) of the least-squares line, in closed form and float64. Plain sums, not a
    LAPACK solve, so the figure is bit-for-bit the same in every process."""
    x, y = data.x.to(torch.float64), data.y.to(torch.float64)
    dx, dy = x - x.mean(), y - y.mean()
    spread = float((dx * dx).sum())
    # With all x equal (or one point) any slope fits equally well; take the flat line.
    w = float((dx * dy).sum()) / spread if spread > 0 else 0.0
    b = float(y.mean()) - w * float(x.mean())
    loss = float(torch.mean((w * x + b - y) ** 2))
    return w, b, loss


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
