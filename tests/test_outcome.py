"""gdexp.outcome: the rules on hand-made loss histories, then on real runs of gdexp.train."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from gdexp.config import MethodConfig, RunConfig
from gdexp.data import Dataset, least_squares_fit, make_run_data
from gdexp.outcome import (
    CONVERGED,
    CONVERGING,
    DIVERGED,
    OSCILLATING,
    OUTCOMES,
    STALLED,
    judge,
    loss_history,
    summarize,
    tail_length,
)
from gdexp.train import train

OPTIMUM = 0.2
TOLERANCE = 1e-3


def outcome(losses, optimal_loss: float = OPTIMUM, tolerance: float = TOLERANCE) -> str:
    return judge(losses, optimal_loss, tolerance).outcome


def geometric(start: float, level: float, ratio: float, epochs: int = 20) -> np.ndarray:
    """level + (start - level)·ratio^k, k = 0 … epochs: a loss approaching `level`."""
    return level + (start - level) * ratio ** np.arange(epochs + 1)


# --- the rules on hand-made histories ------------------------------------------------------------


def test_the_vocabulary_is_ordered_best_to_worst():
    assert OUTCOMES == (CONVERGED, CONVERGING, STALLED, OSCILLATING, DIVERGED)
    assert len(set(OUTCOMES)) == 5


def test_converged_when_at_most_the_tolerance_of_the_initial_excess_is_left():
    # 600 → 0.2 + 0.5 (0.5 of the 599.8 excess left: 0.08 %) and → 0.2 + 0.7 (0.12 %).
    inside = geometric(600.0, OPTIMUM + 0.5, 0.3)
    outside = geometric(600.0, OPTIMUM + 0.7, 0.3)
    assert outcome(inside) == CONVERGED
    assert outcome(outside) == STALLED  # flat, but 0.7 above the optimum: settled there
    assert outcome(outside, tolerance=1e-2) == CONVERGED
    # A run that starts on the optimum and stays there (up to rounding) has converged.
    assert outcome([OPTIMUM * (1 + 1e-8)] * 5) == CONVERGED


def test_converging_while_the_loss_still_falls_at_the_end():
    # Falls 1 % of its excess an epoch toward the optimum: far from it, but still going.
    slow = geometric(600.0, OPTIMUM, 0.99)
    assert outcome(slow) == CONVERGING
    assert "fell" in judge(slow, OPTIMUM, TOLERANCE).reason
    # The same fall, but only until epoch 12: flat over the tail, so it stalled.
    stopped = np.concatenate([slow[:13], np.full(8, slow[12])])
    assert outcome(stopped) == STALLED


def test_stalled_when_flat_above_the_optimum_even_with_rounding_noise():
    rng = np.random.default_rng(0)
    flat = np.concatenate([[600.0, 120.0, 30.0], np.full(18, 22.5)])
    assert outcome(flat) == STALLED
    # float32-size wiggles (1e-7 of the loss) are no moves.
    noisy = flat * (1 + 1e-7 * rng.standard_normal(flat.size))
    assert outcome(noisy) == STALLED
    # A run that rose to 1e14 and sits there is stalled too: it stopped, far above the optimum.
    high = np.concatenate([[600.0], np.full(20, 4.4e14)])
    assert outcome(high) == STALLED
    assert "flat" in judge(high, OPTIMUM, TOLERANCE).reason
    # One blip in a flat tail (fewer than half its changes move) is no trend: still stalled.
    blip = np.concatenate([flat[:17], [22.6, 22.6, 22.6, 22.6]])
    assert outcome(blip) == STALLED
    assert outcome(np.concatenate([flat[:16], [22.6, 22.7, 22.8, 22.9, 23.0]])) == DIVERGED


def test_oscillating_when_the_loss_goes_up_and_down_without_a_trend():
    bouncing = np.concatenate([[600.0], np.tile([1e14, 3e14, 1.5e14, 5e14], 5)])
    assert outcome(bouncing) == OSCILLATING
    # One big drop among the bounces is no trend either (net fall < 3/4 of all movement).
    dropping = np.array([600.0, *[1e14] * 14, 1.75e15, 4.5e14, 4.2e14, 4.25e14, 2.5e14, 4.6e14])
    assert outcome(dropping) == OSCILLATING


def test_diverged_when_non_finite_or_still_growing():
    assert outcome([600.0, 5e4, 1e9, math.inf]) == DIVERGED
    assert outcome([600.0, math.nan]) == DIVERGED
    assert "epoch 2" in judge([600.0, 1e3, math.inf], OPTIMUM, TOLERANCE).reason
    # Growing 0.1 % an epoch after a fall: it is on its way up at the end.
    fall_then_rise = np.concatenate(
        [geometric(600.0, 200.0, 0.5, 10), 200.0 * 1.001 ** np.arange(1, 11)]
    )
    assert outcome(fall_then_rise) == DIVERGED
    # Growing by decades with one small dip: the trend is up.
    growing = 10.0 ** np.array([2, 4, 6, 8, 10, 12, 14, 16, 18, 17.9, 20])
    assert outcome(growing) == DIVERGED


def test_the_tail_is_the_last_quarter_of_the_changes_but_at_least_three():
    assert [tail_length(n) for n in (0, 1, 2, 3, 4, 12, 20, 100)] == [0, 1, 2, 3, 3, 3, 5, 25]
    # A fall long ago does not count: only the tail decides.
    early = np.concatenate([geometric(600.0, 50.0, 0.5, 10), np.full(10, 50.0)])
    assert outcome(early) == STALLED
    # Short runs: one epoch is judged by its one change.
    assert outcome([600.0, 300.0]) == CONVERGING
    assert outcome([600.0, 900.0]) == DIVERGED
    assert outcome([600.0]) == STALLED  # no epoch ran


# --- real runs ----------------------------------------------------------------------------------


def config(method: str, step_size: float, **values) -> DictConfig:
    batch = {"bgd": None, "sgd": 1, "minibatch": 10}[method]
    cfg = OmegaConf.structured(
        RunConfig(method=MethodConfig(name=method, batch_size=batch), step_size=step_size)
    )
    for key, value in values.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


def run(method: str, step_size: float, **values):
    cfg = config(method, step_size, **values)
    data = make_run_data(cfg)
    trajectory = train(cfg, data)
    return trajectory, summarize(trajectory, data, cfg.convergence_tolerance)


def test_bgd_at_0_1_converges_in_20_epochs():
    _, summary = run("bgd", 0.1)
    assert summary.outcome == CONVERGED
    assert summary.final_loss - summary.optimal_loss <= 1e-3 * (
        summary.initial_loss - summary.optimal_loss
    )
    assert "tolerance" in summary.reason


def test_bgd_at_0_01_is_still_converging_after_20_epochs():
    trajectory, summary = run("bgd", 0.01)
    assert summary.outcome == CONVERGING
    assert summary.final_loss > 100 * summary.optimal_loss  # far from done ...
    assert np.all(np.diff(loss_history(trajectory)) < 0)  # ... but falling every epoch
    _, longer = run("bgd", 0.01, epochs=400)
    assert longer.outcome == CONVERGED


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sgd_at_0_05_stalls_far_above_the_optimum(dtype):
    trajectory, summary = run("sgd", 0.05, dtype=dtype)
    assert summary.outcome == STALLED
    assert summary.final_loss > 50 * summary.optimal_loss
    tail = loss_history(trajectory)[-6:]
    assert tail.max() - tail.min() < 1e-4 * tail.min()  # flat: settled on its cycle
    if dtype == "float64":
        _, longer = run("sgd", 0.05, dtype=dtype, epochs=80)
        assert longer.outcome == STALLED  # more epochs do not help


def test_sgd_at_1_diverges_to_infinity():
    _, summary = run("sgd", 1.0)
    assert summary.outcome == DIVERGED
    assert summary.final_loss == math.inf and summary.diverged_at_epoch is not None


def test_bgd_just_above_its_threshold_diverges_slowly_with_a_finite_loss():
    # ρ(M) ≈ 1.0005: the loss falls for 12 epochs, then grows ~0.1 % an epoch.
    trajectory, summary = run("bgd", 0.12, epochs=40)
    history = loss_history(trajectory)
    assert np.isfinite(history).all() and history[-1] < history[0]
    assert summary.outcome == DIVERGED
    assert "grew" in summary.reason


def test_sgd_at_0_1_in_data_order_settles_at_1e14():
    # float64 tracks theory's fixed point: flat, so stalled. float32 rounding, amplified ~3e7-fold
    # within an epoch, keeps its loss bouncing around that level by a factor of a few: oscillating.
    trajectory64, summary64 = run("sgd", 0.1, dtype="float64")
    trajectory32, summary32 = run("sgd", 0.1, dtype="float32")
    assert summary64.outcome == STALLED
    assert summary32.outcome == OSCILLATING
    for trajectory in (trajectory64, trajectory32):
        history = loss_history(trajectory)
        assert np.isfinite(history).all() and (history[1:] > 1e11).all()
    tail32 = loss_history(trajectory32)[-6:]
    assert tail32.max() > 1.5 * tail32.min()


def test_summarize_judges_against_the_least_squares_loss_of_the_runs_own_data():
    x = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    data = Dataset(x=x, y=torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    _, _, optimal = least_squares_fit(data)
    assert optimal == pytest.approx(1 / 18)
    cfg = config("bgd", 0.1, epochs=300, init__w=0.0, init__b=0.0, dtype="float64")
    summary = summarize(train(cfg, data), data, 1e-3)
    assert summary.optimal_loss == optimal
    assert summary.outcome == CONVERGED
