"""gdexp.outcome: the rules on hand-made loss histories, then on real runs of gdexp.train, then
judge_many (the rules over arrays) against the per-run judgement it replaced."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from gdexp.config import MethodConfig, RunConfig
from gdexp.data import Dataset, least_squares_fit, make_run_data
from gdexp.outcome import (
    CONVERGED,
    CONVERGING,
    DIVERGED,
    MOVE_SHARE,
    OSCILLATING,
    OUTCOMES,
    ROUNDING,
    STALLED,
    TREND_SHARE,
    Judgement,
    RunSummary,
    judge,
    judge_many,
    loss_history,
    summarize,
    summarize_many,
    tail_length,
)
from gdexp.train import TrainSettings, train, train_arrays

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


# --- judge_many: the rules over arrays, equal to the per-run judgement ---------------------------


def judged_one_at_a_time(losses, optimal_loss: float, tolerance: float) -> Judgement:
    """The scalar judgement as it was written before judge_many existed (git 88c169c), kept as
    the oracle: `judge` now runs through judge_many, and these tests prove that it, and
    judge_many row by row, decide exactly as this did, reasons and all."""
    loss = np.asarray(losses, dtype=np.float64)
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


def same_summary(a: RunSummary, b: RunSummary) -> bool:
    """Field by field, NaN equal to NaN (a diverged run's final w can be NaN)."""
    # Two unequal values are the same only if both are NaN.
    return all(
        x == y
        or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b), strict=True)
    )


def assert_judged_as_one_at_a_time(histories: np.ndarray, optimal, tolerance) -> None:
    optimal = np.broadcast_to(np.asarray(optimal, dtype=np.float64), (len(histories),))
    tolerance = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), (len(histories),))
    many = judge_many(histories, optimal, tolerance)
    assert len(many) == len(histories)
    for c, history in enumerate(histories):
        expected = judged_one_at_a_time(history, float(optimal[c]), float(tolerance[c]))
        assert many.judgement(c) == expected, (c, history.tolist())
        assert many.outcome[c] == expected.outcome
        assert judge(history, float(optimal[c]), float(tolerance[c])) == expected


LEVEL = st.floats(1e-8, 1e15)
RATIO = st.floats(0.0, 2.0)


@st.composite
def histories(draw, length: int) -> np.ndarray:
    """A loss history of `length` values, shaped like what runs do: flat, geometric (converging
    slowly or fast, or growing), oscillating, float32-rounded, with a jump, or arbitrary values
    with inf and NaN anywhere."""
    k = np.arange(length)
    kind = draw(st.sampled_from(["flat", "geometric", "oscillating", "jump", "raw", "rounded"]))
    start, level = draw(LEVEL), draw(LEVEL)
    if kind == "flat":
        history = np.full(length, level)
    elif kind == "geometric":
        history = level + (start - level) * draw(RATIO) ** k
    elif kind == "oscillating":
        amplitude = draw(st.floats(0.0, 0.999))
        period = draw(st.integers(2, 5))
        history = level * (1 + amplitude * np.sin(2 * np.pi * k / period + draw(st.floats(0, 3))))
    elif kind == "jump":
        at = draw(st.integers(0, length - 1))
        history = np.where(k < at, start, level)
    elif kind == "rounded":  # float32's rounding noise on a slowly falling loss
        history = (level + (start - level) * draw(st.floats(0.9, 1.0)) ** k).astype(np.float32)
        history = history.astype(np.float64) * (1 + 1e-7 * np.sin(k * 7.0))
    else:
        values = st.floats(allow_nan=True, allow_infinity=True, width=64)
        history = np.array(draw(st.lists(values, min_size=length, max_size=length)))
    if draw(st.booleans()):  # a blow-up: non-finite from some epoch on (or only there)
        at = draw(st.integers(0, length - 1))
        bad = draw(st.sampled_from([math.inf, -math.inf, math.nan]))
        history = history.copy()
        if draw(st.booleans()):
            history[at:] = bad
        else:
            history[at] = bad
    return np.asarray(history, dtype=np.float64)


@st.composite
def batches(draw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    length = draw(st.one_of(st.integers(1, 30), st.sampled_from([41, 101, 401, 601])))
    rows = draw(st.lists(histories(length), min_size=1, max_size=12))
    optimal = draw(st.lists(st.one_of(st.just(0.0), LEVEL), min_size=len(rows), max_size=len(rows)))
    tolerance = draw(
        st.lists(st.sampled_from([1e-3, 0.0, 1e-2, 0.5]), min_size=len(rows), max_size=len(rows))
    )
    return np.stack(rows), np.array(optimal), np.array(tolerance)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches())
def test_judge_many_decides_every_history_as_the_per_run_judgement_did(batch):
    assert_judged_as_one_at_a_time(*batch)


@settings(max_examples=100, deadline=None)
@given(
    history=histories(21),
    rest=st.lists(histories(21), max_size=5),
    optimal=st.one_of(st.just(0.0), LEVEL),
)
def test_a_history_is_judged_the_same_alone_or_among_others(history, rest, optimal):
    alone = judge_many(history[None, :], optimal, 1e-3)
    together = judge_many(np.stack([*rest, history]), optimal, 1e-3)
    assert together.judgement(len(rest)) == alone.judgement(0)


def test_judge_many_on_the_hand_made_histories():
    rows = [
        geometric(600.0, OPTIMUM + 0.5, 0.3),
        geometric(600.0, OPTIMUM, 0.99),
        np.concatenate([[600.0, 120.0, 30.0], np.full(18, 22.5)]),
        np.concatenate([[600.0], np.tile([1e14, 3e14, 1.5e14, 5e14], 5)]),
        np.concatenate([geometric(600.0, 200.0, 0.5, 10), 200.0 * 1.001 ** np.arange(1, 11)]),
        np.concatenate([[600.0, 5e4], np.full(19, math.inf)]),
    ]
    judged = judge_many(np.stack(rows), OPTIMUM, TOLERANCE)
    assert judged.outcome.tolist() == [
        CONVERGED, CONVERGING, STALLED, OSCILLATING, DIVERGED, DIVERGED
    ]  # fmt: skip
    assert judged.non_finite_at.tolist() == [-1, -1, -1, -1, -1, 2]
    assert judged.reason(5) == "the loss turned non-finite at epoch 2"
    with pytest.raises(ValueError, match="at least its initial loss"):
        judge_many(np.empty((3, 0)), OPTIMUM, TOLERANCE)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_summarize_many_equals_summarize_on_real_runs(dtype):
    # Every batch size of the phase map, both orders, step sizes across 1e-3 … 1 (converging to
    # blown up), 3 seeds with data made once per seed and shared through data_index.
    seeds = [0, 1, 2]
    datasets = [make_run_data(config("bgd", 0.1, seed=s, dtype=dtype)) for s in seeds]
    optimal = np.array([least_squares_fit(d)[2] for d in datasets])
    step_sizes = np.geomspace(1e-3, 1.0, 25)
    outcomes = set()
    for batch_size in (1, 2, 5, 10, 20, 50, 100):
        for shuffle in (False, True):
            lr, seed = (a.ravel() for a in np.meshgrid(step_sizes, seeds, indexing="ij"))
            batch = train_arrays(
                datasets, lr, np.full(lr.size, -10.0), np.full(lr.size, -20.0), seed,
                data_index=seed, epochs=20, batch_size=batch_size, shuffle=shuffle,
                dtype=dtype, record_steps=False,
            )  # fmt: skip
            many = summarize_many(batch, optimal[seed], 1e-3)
            for c in range(len(batch)):
                trajectory = batch.trajectory(c)
                data = datasets[seed[c]]
                expected = summarize(trajectory, data, 1e-3)
                assert same_summary(many.summary(c), expected)
                old = judged_one_at_a_time(loss_history(trajectory), optimal[seed[c]], 1e-3)
                assert (expected.outcome, expected.reason) == (old.outcome, old.reason)
                outcomes.add(expected.outcome)
    assert outcomes == set(OUTCOMES)  # the grid reaches every rule's outcome


def test_summarize_many_equals_summarize_on_runs_that_blow_up_at_once():
    # Diverged in the first epoch's updates (w, b non-finite) and at the first loss (inf data).
    settings = TrainSettings(10.0, -10.0, -20.0, 0, 5, 1, False, "float32", 100)
    data = make_run_data(config("sgd", 10.0))
    huge = Dataset(x=data.x * 1e30, y=data.y * 1e30)
    batch = train_arrays(
        [data, huge], [settings.step_size] * 2, [-10.0] * 2, [-20.0] * 2, [0, 0],
        epochs=5, batch_size=1, shuffle=False, dtype="float32",
    )  # fmt: skip
    assert batch.diverged_at_epoch.tolist() == [0, 0]
    many = summarize_many(batch, [least_squares_fit(d)[2] for d in (data, huge)], 1e-3)
    for c, d in enumerate((data, huge)):
        assert same_summary(many.summary(c), summarize(batch.trajectory(c), d, 1e-3))
        assert many.outcome[c] == DIVERGED
