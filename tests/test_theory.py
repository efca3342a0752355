"""gdexp.theory against hand computation and against brute-force training with gdexp.train."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from gdexp import theory
from gdexp.config import DataConfig, MethodConfig, RunConfig
from gdexp.data import least_squares_fit, make_run_data
from gdexp.seeding import random_streams
from gdexp.train import train, train_many

REFERENCE_X = -5.0 + 0.1 * np.arange(100)


def config(name: str = "sgd", batch_size: int | None = 1, step_size: float = 0.1, **overrides):
    cfg = OmegaConf.structured(
        RunConfig(method=MethodConfig(name=name, batch_size=batch_size), step_size=step_size)
    )
    for key, value in overrides.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


def data64(cfg: DictConfig) -> tuple[np.ndarray, np.ndarray]:
    data = make_run_data(cfg)
    return data.x.to(torch.float64).numpy(), data.y.to(torch.float64).numpy()


def full_loss(x: np.ndarray, y: np.ndarray, w: float, b: float) -> float:
    return float(np.mean((w * x + b - y) ** 2))


# --- Hessian and thresholds -------------------------------------------------------------------


def test_hessian_and_thresholds_by_hand():
    # x = [1, -1]: H = (2/2)·([[1, 1], [1, 1]] + [[1, -1], [-1, 1]]) = 2·I.
    np.testing.assert_allclose(theory.hessian(np.array([1.0, -1.0])), 2 * np.eye(2))
    assert theory.bgd_threshold(np.array([1.0, -1.0])) == pytest.approx(1.0)
    np.testing.assert_allclose(theory.sample_thresholds(np.array([1.0, -1.0])), [0.5, 0.5])

    # x = [0, 1, 2]: Σx² = 5, Σx = 3, N = 3 → H = (2/3)·[[5, 3], [3, 3]],
    # λ_max = (2/3)·(4 + √10), so the BGD threshold is 3 / (4 + √10).
    x = np.array([0.0, 1.0, 2.0])
    np.testing.assert_allclose(theory.hessian(x), (2 / 3) * np.array([[5.0, 3.0], [3.0, 3.0]]))
    assert theory.hessian(x).dtype == np.float64
    assert theory.bgd_threshold(x) == pytest.approx(3 / (4 + np.sqrt(10)))
    np.testing.assert_allclose(theory.sample_thresholds(x), [1.0, 0.5, 0.2])
    assert theory.sgd_threshold(x) == pytest.approx(0.2)


def test_thresholds_on_reference_data():
    assert round(theory.bgd_threshold(REFERENCE_X), 3) == 0.120
    assert theory.sgd_threshold(REFERENCE_X) == pytest.approx(1 / 26)


def test_single_sample_threshold_is_where_one_step_starts_to_flip_and_grow():
    # One step on x = 3 is I − η·2·[[9, 3], [3, 1]]: eigenvalues 1 (along the sample's level
    # line) and 1 − 20η, which passes −1 at η = 1/10 = 1/(x² + 1).
    x = np.array([3.0])
    limit = theory.sample_thresholds(x)[0]
    assert limit == pytest.approx(0.1)
    for step_size, stable in ((0.99 * limit, True), (1.01 * limit, False)):
        m, _ = theory.epoch_map(x, np.array([0.0]), step_size)
        eigenvalues = np.sort(np.linalg.eigvals(m).real)
        assert eigenvalues[1] == pytest.approx(1.0)
        assert (eigenvalues[0] > -1) == stable


# --- BGD against brute force ------------------------------------------------------------------


def test_bgd_threshold_separates_converging_from_diverging_training():
    cfgs = [
        config("bgd", None, step, epochs=200, dtype="float64", data__noise_std=0.0)
        for step in (0.119, 0.121)
    ]
    assert theory.bgd_threshold(data64(cfgs[0])[0]) == pytest.approx(0.12, abs=5e-4)
    below, above = train_many(cfgs, [make_run_data(cfg) for cfg in cfgs])
    assert below.epoch_loss[-1] < 1e-2 * below.initial_loss
    assert above.epoch_loss[-1] > 1e2 * above.initial_loss


def test_bgd_map_is_one_full_batch_step():
    x, y = data64(config())
    m, c = theory.epoch_map(x, y, 0.05, batch_size=10_000)
    np.testing.assert_allclose(m, np.eye(2) - 0.05 * theory.hessian(x))
    np.testing.assert_allclose(c, 0.05 * (2 / len(x)) * np.array([x @ y, y.sum()]))


# --- epoch_map against brute force ------------------------------------------------------------


# SGD at 0.1 in data order amplifies rounding ~3e7-fold within an epoch (transient gain), so
# there the map and the training loop only agree to ~1e-7; elsewhere to ~1e-14.
@pytest.mark.parametrize(
    ("batch_size", "shuffle", "step_size", "rtol"),
    [
        (1, False, 0.03, 1e-10),
        (1, False, 0.1, 1e-6),
        (10, False, 0.1, 1e-10),
        (1, True, 0.03, 1e-10),
        (1, True, 0.1, 1e-10),
        (10, True, 0.1, 1e-10),
    ],
)
def test_epoch_map_reproduces_training(batch_size, shuffle, step_size, rtol):
    epochs = 5
    cfg = config(
        "sgd" if batch_size == 1 else "minibatch",
        batch_size,
        step_size,
        epochs=epochs,
        dtype="float64",
        method__shuffle=shuffle,
    )
    x, y = data64(cfg)
    trajectory = train(cfg, make_run_data(cfg))
    # Every epoch's order, drawn from the run's shuffle stream as gdexp.train draws them.
    shuffler = random_streams(cfg.seed).shuffle
    theta = np.array([cfg.init.w, cfg.init.b])
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=shuffler).numpy() if shuffle else None
        m, c = theory.epoch_map(x, y, step_size, batch_size, order)
        theta = m @ theta + c
        np.testing.assert_allclose(
            theta, [trajectory.w[epoch], trajectory.b[epoch]], rtol=rtol, atol=1e-9
        )


def test_transient_gain_is_largest_partial_product_norm():
    x = np.array([2.0, 0.0])
    # Steps on x = 2 then x = 0 at η = 0.5: I − 0.5·2·[[4, 2], [2, 1]] has eigenvalues 1 and −4
    # (norm 4); the x = 0 step [[1, 0], [0, 0]] then drops a row, leaving norm √13 < 4.
    analysis = theory.analyze_epoch_map(x, np.zeros(2), 0.5)
    first = np.eye(2) - 0.5 * theory.hessian(x[:1])
    second = np.eye(2) - 0.5 * theory.hessian(x[1:])
    expected = max(np.linalg.norm(first, 2), np.linalg.norm(second @ first, 2))
    assert analysis.transient_gain == pytest.approx(expected)
    assert analysis.transient_gain == pytest.approx(4.0)
    assert np.linalg.norm(second @ first, 2) == pytest.approx(np.sqrt(13))
    assert analysis.spectral_radius == pytest.approx(
        np.abs(np.linalg.eigvals(second @ first)).max()
    )


# --- The SGD fixed point at η = 0.1 -----------------------------------------------------------


# Data on an exact binary grid (x = -5, -4.875, …, 4.875, y = -5x: every number exact in
# float32), where noise-free data lies exactly on the line.
EXACT_GRID = {"data__x_step": 0.125, "data__n_points": 80, "data__noise_std": 0.0}


def test_sgd_settles_on_the_fixed_point_far_above_the_optimum():
    noisy = config(epochs=60, dtype="float64")
    (noisy_run,) = train_many([noisy], [make_run_data(noisy)])

    x, y = data64(noisy)
    analysis = theory.analyze_epoch_map(x, y, 0.1)
    assert analysis.stable and analysis.spectral_radius < 0.6
    assert 1e7 < analysis.transient_gain < 1e8
    assert 1e14 < analysis.fixed_point_loss < 1e15
    np.testing.assert_allclose(noisy_run.epoch_loss[-5:], analysis.fixed_point_loss, rtol=1e-6)
    assert noisy_run.epoch_loss[0] == pytest.approx(full_loss(x, y, -10.0, -20.0))


def test_without_noise_sgd_finds_the_line_only_on_exact_data():
    exact = config(epochs=60, dtype="float64", **EXACT_GRID)
    # The tutorial's grid without noise: x = arange(-5, 5, 0.1) in float32 is 0.1 only up to
    # rounding, and y = -5x is rounded again; an epoch amplifies those residuals ~3e7-fold.
    rounded = config(epochs=60, dtype="float64", data__noise_std=0.0)
    exact_run = train(exact, make_run_data(exact))
    rounded_run = train(rounded, make_run_data(rounded))

    x, y = data64(exact)
    analysis = theory.analyze_epoch_map(x, y, 0.1)
    assert analysis.stable
    assert analysis.fixed_point_w == pytest.approx(-5.0, abs=1e-6)
    assert analysis.fixed_point_b == pytest.approx(0.0, abs=1e-6)
    assert analysis.fixed_point_loss < 1e-10
    assert exact_run.epoch_loss[-1] < 1e-10

    x, y = data64(rounded)
    analysis = theory.analyze_epoch_map(x, y, 0.1)
    optimum = float(np.mean((np.polyval(np.polyfit(x, y, 1), x) - y) ** 2))
    assert optimum < 1e-12 and analysis.stable
    assert 1e-3 < analysis.fixed_point_loss < 1.0  # far above the optimum, far below 1e14
    np.testing.assert_allclose(rounded_run.epoch_loss[-5:], analysis.fixed_point_loss, rtol=1e-4)


# --- predict ----------------------------------------------------------------------------------


def test_predict_verdicts_on_reference_settings():
    bgd = theory.predict(config("bgd", None, 0.1))
    assert bgd.verdict == "converges"
    assert bgd.batch_size == 100
    assert bgd.epoch_map.fixed_point_loss == pytest.approx(0.168, abs=1e-3)  # the LS optimum

    sgd = theory.predict(config("sgd", 1, 0.1))
    assert sgd.verdict == "settles high"
    assert sgd.sgd_threshold == pytest.approx(1 / 26)

    assert theory.predict(config("bgd", None, 0.2)).verdict == "diverges"
    assert theory.predict(config("sgd", 1, 0.1, **EXACT_GRID)).verdict == "converges"
    assert theory.predict(config("sgd", 1, 0.1, data__noise_std=0.0)).verdict == "settles high"


def test_predict_uses_the_configs_own_data():
    base = theory.predict(config("bgd", None, 0.1))
    # x = 0, 0.1, ..., 1.9: a much flatter Hessian, so a far larger BGD threshold.
    moved = theory.predict(config("bgd", None, 0.1, data__x_start=0.0, data__n_points=20))
    x = np.arange(20) * 0.1
    assert moved.batch_size == 20
    assert moved.bgd_threshold == pytest.approx(theory.bgd_threshold(x))
    assert moved.bgd_threshold > 3 * base.bgd_threshold
    assert moved.sgd_threshold == pytest.approx(1 / (1.9**2 + 1))

    # The order matters: the first epoch's shuffle gives a different map than data order.
    shuffled = theory.predict(config(method__shuffle=True))
    cfg = config(method__shuffle=True)
    x, y = data64(config(dtype="float64"))
    order = torch.randperm(100, generator=random_streams(cfg.seed).shuffle).numpy()
    assert shuffled.epoch_map == theory.analyze_epoch_map(x, y, 0.1, 1, order)
    assert shuffled.epoch_map != theory.predict(config()).epoch_map


def test_predict_many_matches_predict():
    cfgs = [config(step_size=s) for s in (0.02, 0.1)] + [config(seed=3), config("bgd", None)]
    cfgs += [
        config(name, batch, step, seed=seed, method__shuffle=shuffle)
        for name, batch, shuffle in (
            ("sgd", 1, False),
            ("minibatch", 10, True),
            ("bgd", None, False),
        )
        for step in (0.001, 0.05, 0.1, 1.0)
        for seed in (0, 1, 2)
    ]
    together = theory.predict_many(cfgs)
    alone = [theory.predict(cfg) for cfg in cfgs]
    # Bit for bit, alone or in a grid (NaN fixed points of unstable maps included).
    np.testing.assert_equal([astuple(p) for p in together], [astuple(p) for p in alone])
    assert {p.verdict for p in together} == {"converges", "settles high", "diverges"}


# --- the vectorised epoch maps against a plain matrix product -------------------------------


def reference_epoch(x, y, step_size, batch_size, order=None):
    """(M, c, gain) by multiplying out one 2x2 matrix per batch, as written in the docstring."""
    if order is not None:
        x, y = x[order], y[order]
    m, c, gain = np.eye(2), np.zeros(2), 0.0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        step = np.eye(2) - step_size * theory.hessian(xb)
        m = step @ m
        c = step @ c + step_size * (2.0 / len(xb)) * np.array([xb @ yb, yb.sum()])
        gain = max(gain, np.linalg.norm(m, 2))
    return m, c, gain


@pytest.mark.parametrize(
    ("batch_size", "shuffle"), [(1, False), (7, False), (10, True), (100, False)]
)
def test_epoch_maps_match_the_matrix_product_for_every_step_size_and_data_set(batch_size, shuffle):
    cfgs = [config(seed=seed) for seed in (0, 1, 2)]
    x = data64(cfgs[0])[0]
    ys = np.stack([data64(cfg)[1] for cfg in cfgs])
    order = np.random.default_rng(5).permutation(len(x)) if shuffle else None
    steps = np.array([1e-4, 0.01, 0.03, 0.05, 0.1])
    maps = theory.epoch_maps(x, ys, steps, batch_size, order)
    assert maps.m.shape == (5, 2, 2) and maps.c.shape == (5, 3, 2)
    assert maps.fixed_point_loss.shape == (5, 3)
    for i, step in enumerate(steps):
        for j, y in enumerate(ys):
            m, c, gain = reference_epoch(x, y, step, batch_size, order)
            # Rounding grows with the partial products: up to ~1e-16 of the transient gain.
            atol = 1e-13 * gain
            np.testing.assert_allclose(maps.m[i], m, rtol=1e-9, atol=atol)
            np.testing.assert_allclose(maps.c[i, j], c, rtol=1e-9, atol=atol * np.abs(c).max())
            assert maps.transient_gain[i] == pytest.approx(gain, rel=1e-9)
            radius = np.abs(np.linalg.eigvals(m)).max()
            assert maps.spectral_radius[i] == pytest.approx(radius, rel=1e-6, abs=atol)
            if radius < 1:
                theta = np.linalg.solve(np.eye(2) - m, c)
                np.testing.assert_allclose(
                    [maps.fixed_point_w[i, j], maps.fixed_point_b[i, j]], theta, rtol=1e-6
                )
                assert maps.fixed_point_loss[i, j] == pytest.approx(
                    full_loss(x, y, *theta), rel=1e-6
                )


def test_step_sizes_that_overflow_are_unstable_not_errors():
    x, y = data64(config())
    with np.errstate(all="raise"):  # no floating-point warning escapes
        maps = theory.epoch_maps(x, y, [0.1, 10.0, 1e6], 1)
    assert maps.stable.tolist() == [True, False, False]
    assert np.isinf(maps.spectral_radius[2]) and np.isnan(maps.fixed_point_loss[2, 0])
    assert theory.predict(config(step_size=1e6)).verdict == "diverges"


# --- step-size edges --------------------------------------------------------------------------

TUTORIAL_DATA = astuple(DataConfig())  # the default data settings: the tutorial's
# A fine log grid (0.05 % apart) to scan ρ(M) by brute force.
FINE_GRID = np.geomspace(1e-3, 1.0, 15_001)


@pytest.fixture(scope="module")
def tutorial_edges() -> dict[tuple[int, str], theory.StepSizeEdge]:
    edges = theory.settings_step_size_edges(TUTORIAL_DATA, [0])
    return {(e.batch_size, e.order): e for e in edges}


def first_index(values: np.ndarray) -> int:
    assert values.any(), "the fine grid never shows it"
    return int(np.argmax(values))


@pytest.mark.parametrize("batch_size", theory.PHASE_MAP_BATCH_SIZES)
def test_data_order_edges_lie_where_a_fine_scan_of_the_map_sees_them(tutorial_edges, batch_size):
    x, y = data64(config(dtype="float64"))
    edge = tutorial_edges[batch_size, theory.DATA_ORDER]
    assert edge.kind == theory.EXACT and edge.seed == 0
    maps = theory.epoch_maps(x, y, FINE_GRID, batch_size)
    unstable = first_index(maps.spectral_radius >= 1)
    assert FINE_GRID[unstable - 1] < edge.diverge_step_size <= FINE_GRID[unstable]
    # At the edge itself ρ is 1 to float64 precision, just below it is under 1.
    at = theory.analyze_epoch_map(x, y, edge.diverge_step_size, batch_size)
    below = theory.analyze_epoch_map(x, y, edge.diverge_step_size * (1 - 1e-9), batch_size)
    assert at.spectral_radius >= 1 > below.spectral_radius
    assert at.spectral_radius == pytest.approx(1.0, abs=1e-6)

    again = maps.stable & (np.arange(len(FINE_GRID)) > unstable)
    if again.any():
        first = first_index(again)
        assert FINE_GRID[first - 1] < edge.restable_step_size <= FINE_GRID[first]
    else:
        assert np.isnan(edge.restable_step_size)

    optimum = least_squares_fit(make_run_data(config(dtype="float64")))[2]
    limit = theory.settles_high_loss(optimum, y)
    high = maps.stable & ~(maps.fixed_point_loss[:, 0] <= limit)
    high[unstable:] = False
    if high.any():
        first = first_index(high)
        assert FINE_GRID[first - 1] < edge.settle_high_step_size <= FINE_GRID[first]
    else:
        assert np.isnan(edge.settle_high_step_size)
    assert edge.worst_batch_bound <= edge.diverge_step_size


def test_bgd_edge_is_two_over_the_largest_curvature(tutorial_edges):
    x, _ = data64(config(dtype="float64"))
    for order in (theory.DATA_ORDER, theory.SHUFFLED):  # one batch: the order cannot matter
        edge = tutorial_edges[100, order]
        assert edge.kind == theory.EXACT
        assert float(f"{edge.diverge_step_size:.3g}") == 0.120
        assert edge.diverge_step_size == pytest.approx(
            2 / np.linalg.eigvalsh(theory.hessian(x))[-1]
        )
        assert edge.diverge_step_size == pytest.approx(edge.full_batch_bound, rel=1e-9)
        # BGD's fixed point is the optimum at every stable step: it never settles high.
        assert np.isnan(edge.settle_high_step_size) and np.isnan(edge.restable_step_size)
        assert edge.not_converging_step_size == edge.diverge_step_size


def test_sgd_data_order_edge_and_what_training_does_on_either_side(tutorial_edges):
    edge = tutorial_edges[1, theory.DATA_ORDER]
    # Stable well past the per-sample bound 1/26, diverging before BGD's 0.12 (README: ρ = 0.29
    # at 0.1).
    assert 1 / 26 < edge.settle_high_step_size < 0.05 < 0.1 < edge.diverge_step_size < 0.11
    assert edge.worst_batch_bound == pytest.approx(1 / 26)
    cfgs = [
        config(step_size=edge.diverge_step_size * f, epochs=60, dtype="float64")
        for f in (0.99, 1.01)
    ]
    below, above = train_many(cfgs, [make_run_data(cfg) for cfg in cfgs])
    settled = below.epoch_loss[-10:]
    assert np.all(np.isfinite(settled)) and settled.max() < 1.01 * settled.min()
    assert above.diverged_at_epoch is not None or above.epoch_loss[-1] > 1e3 * above.epoch_loss[20]


def test_edges_agree_with_the_verdicts_of_predict(tutorial_edges):
    for batch_size in (1, 5, 10, 100):
        edge = tutorial_edges[batch_size, theory.DATA_ORDER]
        steps = {"converges": 0.999 * edge.not_converging_step_size}
        if not np.isnan(edge.settle_high_step_size):
            steps["settles high"] = 1.000001 * edge.settle_high_step_size
        steps["diverges"] = 1.000001 * edge.diverge_step_size
        for verdict, step in steps.items():
            cfg = config("minibatch", batch_size, step, dtype="float64")
            assert theory.predict(cfg).verdict == verdict, (batch_size, step)


def test_worst_batch_bound_is_the_worst_subset_by_brute_force():
    from itertools import combinations

    x = np.random.default_rng(3).normal(0.5, 2.0, size=9)
    for size in (1, 2, 3, 4, 9):
        worst = max(
            np.linalg.eigvalsh(theory.hessian(x[list(s)]))[-1] for s in combinations(range(9), size)
        )
        # Batches of 2 or 4 leave a last batch of 1: the schedule's worst batch is the worse.
        if 9 % size:
            worst = max(worst, 2 * (x**2 + 1).max())
        assert theory.worst_batch_bound(x, size, shuffled=True) == pytest.approx(2 / worst)
    in_order = theory.worst_batch_bound(x, 3, shuffled=False)
    batches = [x[i : i + 3] for i in (0, 3, 6)]
    assert in_order == pytest.approx(
        min(2 / np.linalg.eigvalsh(theory.hessian(b))[-1] for b in batches)
    )
    assert in_order >= theory.worst_batch_bound(x, 3, shuffled=True)
    assert theory.worst_batch_bound(x, 1, shuffled=True) == pytest.approx(theory.sgd_threshold(x))
    assert theory.worst_batch_bound(x, 9, shuffled=True) == pytest.approx(theory.bgd_threshold(x))


def test_shuffled_rows_are_labelled_estimates_above_the_proven_bound(tutorial_edges):
    x, _ = data64(config(dtype="float64"))
    for batch_size in (1, 2, 5, 10, 20, 50):
        edge = tutorial_edges[batch_size, theory.SHUFFLED]
        assert edge.kind == theory.ESTIMATE
        assert theory.sgd_threshold(x) <= edge.worst_batch_bound <= edge.diverge_step_size
        assert edge.full_batch_bound == pytest.approx(0.12, abs=5e-4)
        # No fixed point for reshuffled epochs: theory does not say where they settle.
        assert np.isnan(edge.settle_high_step_size) and np.isnan(edge.not_converging_step_size)
        # Reshuffled batches of 2-50 stay stable a little past BGD's edge (up to ~13 %): the
        # full-batch bound is a reference, not an upper bound.
        assert edge.diverge_step_size < 1.2 * edge.full_batch_bound
    assert (
        tutorial_edges[5, theory.SHUFFLED].diverge_step_size
        > tutorial_edges[5, theory.SHUFFLED].full_batch_bound
    )
    brackets = theory.settings_step_size_edges(TUTORIAL_DATA, [0], (1, 10), shuffled=theory.BRACKET)
    for edge in brackets:
        if edge.order == theory.SHUFFLED:
            assert edge.kind == theory.BRACKET and np.isnan(edge.diverge_step_size)
            assert (
                edge.worst_batch_bound
                == tutorial_edges[edge.batch_size, edge.order].worst_batch_bound
            )
    assert [
        e.order for e in theory.settings_step_size_edges(TUTORIAL_DATA, [0], (1,), shuffled=None)
    ] == [theory.DATA_ORDER]


def test_shuffled_sgd_estimate_separates_bounded_from_diverging_training(tutorial_edges):
    estimate = tutorial_edges[1, theory.SHUFFLED].diverge_step_size
    cfgs = [
        config(step_size=estimate * f, seed=seed, epochs=100, dtype="float64", method__shuffle=True)
        for f in (0.9, 1.1)
        for seed in range(5)
    ]
    runs = train_many(cfgs, [make_run_data(cfg) for cfg in cfgs])
    assert all(run.diverged_at_epoch is None for run in runs[:5])
    assert all(run.diverged_at_epoch is not None for run in runs[5:])


def test_edges_for_several_seeds_share_x_and_differ_only_where_y_matters():
    edges = theory.settings_step_size_edges(TUTORIAL_DATA, [0, 1, 2], (1, 100), shuffled=None)
    assert [(e.seed, e.batch_size) for e in edges] == [(s, b) for s in (0, 1, 2) for b in (1, 100)]
    sgd = [e for e in edges if e.batch_size == 1]
    assert len({e.diverge_step_size for e in sgd}) == 1  # ρ(M) depends on x alone
    assert len({e.settle_high_step_size for e in sgd}) == 3  # the fixed point on y too
    alone = theory.settings_step_size_edges(TUTORIAL_DATA, [2], (1, 100), shuffled=None)
    np.testing.assert_equal([astuple(e) for e in alone], [astuple(e) for e in edges if e.seed == 2])


def test_edges_of_seven_batch_sizes_and_five_seeds_come_one_row_each():
    # (Its time, ~0.4 s for all seven batch sizes and five seeds, is measured, not asserted.)
    edges = theory.settings_step_size_edges(TUTORIAL_DATA, range(5))
    keys = {(e.seed, e.batch_size, e.order) for e in edges}
    assert len(keys) == len(edges) == 5 * 7 * 2
