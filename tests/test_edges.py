"""gdexp.analysis.edges: measured edges on hand-made outcome frames whose answer is known, theory's
edges joined beside them, and one real grid trained with gdexp.train around BGD's edge."""

from __future__ import annotations

import io
import math
from dataclasses import astuple

import numpy as np
import pandas as pd
import pytest
import torch

from gdexp import theory
from gdexp.analysis import edges
from gdexp.config import DataConfig
from gdexp.data import make_dataset
from gdexp.outcome import CONVERGED, CONVERGING, DIVERGED, OSCILLATING, STALLED, summarize
from gdexp.seeding import random_streams
from gdexp.train import TrainSettings, train_many

STEPS = (0.01, 0.02, 0.04, 0.08)


def results(outcomes: dict[int, list[str]], batch_size: int = 1, shuffle: bool = False):
    """One run per (seed, step size): outcomes[seed] lists the outcome at each of STEPS."""
    return pd.DataFrame(
        [
            (batch_size, shuffle, step, seed, outcome)
            for seed, per_step in outcomes.items()
            for step, outcome in zip(STEPS, per_step, strict=True)
        ],
        columns=["batch_size", "shuffle", "step_size", "seed", "outcome"],
    )


def row(table: pd.DataFrame, event: str, batch_size: int = 1, order: str = theory.DATA_ORDER):
    found = table[
        (table["batch_size"] == batch_size) & (table["order"] == order) & (table["event"] == event)
    ]
    assert len(found) == 1
    return found.iloc[0]


C, G, S, OSC, D = CONVERGED, CONVERGING, STALLED, OSCILLATING, DIVERGED


def test_exactly_half_the_seeds_is_enough_and_the_grid_brackets_the_edge():
    table = edges.measured_edges(
        results({0: [C, C, D, D], 1: [C, C, D, D], 2: [C, C, C, D], 3: [C, S, OSC, D]})
    )
    diverged = row(table, "diverged")
    assert diverged["seeds"] == 4
    # 0.04: seeds 0 and 1 of 4 diverged, half: the edge; 0.02 had none.
    assert (diverged["measured_step_size"], diverged["measured_lower"]) == (0.04, 0.02)
    assert diverged["measured_upper"] == 0.04
    # Per-seed edges 0.04, 0.04, 0.08, 0.08; four seeds only reach [min, max], 1 − 2/16.
    assert (diverged["seed_median_low"], diverged["seed_median_high"]) == (0.04, 0.08)
    assert diverged["seed_interval_coverage"] == pytest.approx(0.875)

    not_converged = row(table, "not converged")
    # 0.02: seed 3 stalled, 1 of 4; 0.04: seeds 0, 1 diverged, 3 oscillating: 3 of 4.
    assert not_converged["measured_step_size"] == 0.04
    assert not_converged["measured_lower"] == 0.02
    assert (not_converged["seed_median_low"], not_converged["seed_median_high"]) == (0.02, 0.08)


def test_one_seed_short_of_half_is_not_an_edge():
    table = edges.measured_edges(
        results({0: [C, C, D, D], 1: [C, C, C, D], 2: [C, C, C, D], 3: [C, C, C, D]})
    )
    assert row(table, "diverged")["measured_step_size"] == 0.08
    assert row(table, "diverged")["measured_lower"] == 0.04


def test_a_schedule_that_never_diverges_has_no_edge_and_says_how_far_it_was_measured():
    table = edges.measured_edges(results({0: [C, C, S, S], 1: [C, C, S, OSC], 2: [C, G, S, S]}))
    diverged = row(table, "diverged")
    # No edge within the grid: it lies above 0.08, the largest step size measured.
    assert math.isnan(diverged["measured_step_size"])
    assert (diverged["measured_lower"], diverged["measured_upper"]) == (0.08, math.inf)
    assert diverged["seed_median_low"] == diverged["seed_median_high"] == math.inf
    assert row(table, "not converged")["measured_step_size"] == 0.04


def test_all_seeds_diverging_at_the_smallest_step_puts_the_edge_at_or_below_it():
    table = edges.measured_edges(results({0: [D, D, D, D], 1: [D, D, D, D]}))
    for event in edges.EVENTS:
        found = row(table, event)
        assert found["measured_step_size"] == 0.01
        assert (found["measured_lower"], found["measured_upper"]) == (0.0, 0.01)
        assert found["seed_median_low"] == found["seed_median_high"] == 0.01


def test_converging_counts_as_converged_and_the_smallest_crossing_wins():
    # Slow runs at small steps are `converging`: not an edge. At 0.02 half diverge, at 0.04
    # none (a stable window), at 0.08 all: the edge is the first crossing, 0.02.
    table = edges.measured_edges(results({0: [G, D, C, D], 1: [G, C, C, D]}))
    assert row(table, "not converged")["measured_step_size"] == 0.02
    assert row(table, "diverged")["measured_step_size"] == 0.02
    assert row(table, "diverged")["measured_lower"] == 0.01


def test_each_batch_size_and_order_is_its_own_row():
    frame = pd.concat(
        [
            results({0: [C, C, C, D], 1: [C, C, C, D]}, batch_size=1, shuffle=False),
            results({0: [C, C, D, D], 1: [C, C, D, D]}, batch_size=1, shuffle=True),
            results({0: [C, D, D, D], 1: [C, D, D, D]}, batch_size=10, shuffle=False),
        ]
    )
    table = edges.measured_edges(frame)
    assert len(table) == 3 * len(edges.EVENTS)
    assert row(table, "diverged")["measured_step_size"] == 0.08
    assert row(table, "diverged", order=theory.SHUFFLED)["measured_step_size"] == 0.04
    assert row(table, "diverged", batch_size=10)["measured_step_size"] == 0.02


@pytest.mark.parametrize(
    ("n", "j", "coverage"),
    [(1, 1, 0.0), (4, 1, 0.875), (5, 1, 0.9375), (6, 1, 0.96875), (10, 2, 0.978515625)],
)
def test_median_interval_by_hand(n, j, coverage):
    assert edges.median_interval(n) == (j, pytest.approx(coverage))


def test_median_interval_of_100_seeds_is_the_textbook_one():
    # Ranks 40 and 61 of 100 cover the median with probability ~0.965.
    j, coverage = edges.median_interval(100)
    assert (j, 100 + 1 - j) == (40, 61)
    assert 0.95 <= coverage < 0.97


def test_the_edge_table_puts_theory_beside_the_measurements_and_reads_back_from_csv():
    data = astuple(DataConfig())
    theory_frame = edges.theory_edges(data, [0, 1], (1, 100))
    assert len(theory_frame) == 2 * 2 * 2  # seeds × batch sizes × orders
    frame = pd.concat(
        [
            results({0: [C, C, S, D], 1: [C, C, S, D]}, batch_size=1),
            results({0: [C, C, C, D], 1: [C, C, C, D]}, batch_size=100),
        ]
    )
    table = edges.edge_table(frame, theory_frame)
    assert list(table.columns) == [*edges.MEASURED_COLUMNS, *edges.THEORY_COLUMNS[3:]]
    assert len(table) == 2 * 2 * 2  # batch sizes × orders × events

    bgd = row(table, "diverged", batch_size=100)
    assert bgd["theory_kind"] == theory.EXACT
    assert bgd["theory_step_size"] == pytest.approx(0.11997, abs=1e-5)
    assert bgd["theory_min"] == bgd["theory_max"]
    assert bgd["measured_step_size"] == 0.08  # the hand-made outcomes

    sgd = row(table, "not converged")
    settle_high = theory_frame.loc[
        (theory_frame["batch_size"] == 1) & (theory_frame["order"] == theory.DATA_ORDER),
        "settle_high_step_size",
    ]
    # The median over the two seeds' data, between their own edges.
    assert sgd["theory_step_size"] == pytest.approx(settle_high.median())
    assert sgd["theory_min"] < sgd["theory_max"]
    assert sgd["measured_step_size"] == 0.04

    shuffled = row(table, "diverged", order=theory.SHUFFLED)
    # Theory's shuffled rows stand without measurements (none were made here).
    assert shuffled["theory_kind"] == theory.ESTIMATE and math.isnan(shuffled["seeds"])
    assert row(table, "not converged", order=theory.SHUFFLED)["theory_kind"] == edges.NO_THEORY

    text = edges.edge_table_csv(table)
    assert text.splitlines()[0] == ",".join(table.columns)
    back = pd.read_csv(io.StringIO(text))
    assert len(back) == len(table)
    np.testing.assert_allclose(back["theory_step_size"], table["theory_step_size"], rtol=1e-5)
    # inf (never measured to diverge) and nan (no measurement) survive the round trip.
    np.testing.assert_array_equal(back["measured_upper"], table["measured_upper"])
    assert back["theory_kind"].tolist() == table["theory_kind"].tolist()


def test_bgd_trained_around_its_edge_diverges_where_theory_says():
    # A real grid: BGD in float32 (the tutorial's runs), 20 epochs, 4 seeds, judged by gdexp's
    # own outcome rules. Theory's edge, 2/λmax(H) = 0.11997, must fall inside the measured
    # bracket: the largest step size where fewer than half diverged and the edge.
    steps = (0.11, 0.115, 0.119, 0.1199, 0.1201, 0.121, 0.125)
    seeds = range(4)
    settings = [
        TrainSettings(
            step_size=step,
            init_w=-10.0,
            init_b=-20.0,
            seed=seed,
            epochs=20,
            batch_size=None,
            shuffle=False,
            dtype="float32",
            n_points=100,
        )
        for step in steps
        for seed in seeds
    ]
    datasets = [
        make_dataset(DataConfig(), random_streams(s.seed).data, torch.float32) for s in settings
    ]
    runs = train_many(settings, datasets)
    outcomes = [
        summarize(run, data, 1e-3).outcome for run, data in zip(runs, datasets, strict=True)
    ]
    frame = pd.DataFrame(
        {
            "batch_size": 100,
            "shuffle": False,
            "step_size": [s.step_size for s in settings],
            "seed": [s.seed for s in settings],
            "outcome": outcomes,
        }
    )
    table = edges.edge_table(
        frame, edges.theory_edges(astuple(DataConfig()), seeds, (100,), shuffled=None)
    )
    diverged = row(table, "diverged", batch_size=100)
    assert diverged["measured_lower"] < diverged["theory_step_size"] <= diverged["measured_upper"]
    assert diverged["measured_step_size"] == 0.1201
    # Below the edge nothing settles high (BGD's fixed point is the optimum): the two events
    # share the edge.
    assert row(table, "not converged", batch_size=100)["measured_step_size"] == 0.1201
