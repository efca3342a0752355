"""The phase map (issue 17): `edges.phase_grid`'s cells on hand-made runs whose answer is known,
and `figures.phase_map` read back — its cell colours against the computed fractions, its edges
against the edge table, its legend against what it draws — on small, irregular, full-size
(140,000 rows) and really trained grids."""

from __future__ import annotations

import math
from dataclasses import astuple

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection, QuadMesh
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.markers import MarkerStyle
from omegaconf import OmegaConf

from gdexp import theory
from gdexp.analysis import edges, figures
from gdexp.analysis.figures import legend_groups, phase_map
from gdexp.config import DataConfig, RunConfig
from gdexp.data import least_squares_fit, make_run_data
from gdexp.outcome import (
    CONVERGED,
    CONVERGING,
    DIVERGED,
    OSCILLATING,
    OUTCOMES,
    STALLED,
    summarize_many,
)
from gdexp.train import train_arrays

C, G, S, OSC, D = CONVERGED, CONVERGING, STALLED, OSCILLATING, DIVERGED
DATA, SHUFFLED = theory.DATA_ORDER, theory.SHUFFLED
LOSS = {C: 1.0, G: 1.5, S: 40.0, OSC: 1e5, D: math.inf, None: math.nan}  # × the optimum
BLOCK_LABELS = ["none", "> 0", "≥ ¼", "≥ ½", "≥ ¾", "all"]


def runs(batch_size: int, shuffle: bool, step_size: float, outcomes: list, optimal=2.0):
    """One run per seed 0, 1, ... with these outcomes (None: the config failed)."""
    return [
        {
            "batch_size": batch_size,
            "shuffle": shuffle,
            "step_size": step_size,
            "seed": seed,
            "outcome": outcome,
            "final_loss": LOSS[outcome] * optimal,
            "optimal_loss": optimal,
        }
        for seed, outcome in enumerate(outcomes)
    ]


def frame(*groups: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([row for group in groups for row in group])


STEPS = (0.01, 0.03, 0.1, 0.3)
BATCHES = (1, 10, 100)
# Outcomes of seeds 0-3 at each of STEPS, per (batch size, shuffle): every block of the colour
# bar occurs (0, 1/4, 1/2, 3/4, 1 of the seeds diverged).
PATTERN = {
    (1, False): [[C, C, C, C], [S, S, C, S], [D, OSC, S, S], [D, D, D, D]],
    (1, True): [[C, C, C, C], [C, D, C, C], [D, D, OSC, C], [D, D, D, D]],
    (10, False): [[G, G, C, C], [C, C, C, C], [D, D, D, C], [D, D, D, D]],
    (10, True): [[G, C, C, C], [C, C, C, C], [C, D, D, C], [D, D, D, D]],
    (100, False): [[G, G, G, G], [C, C, C, C], [C, C, C, C], [D, D, D, D]],
    (100, True): [[G, G, G, G], [C, C, C, C], [C, C, C, C], [D, D, D, D]],
}


def small_grid() -> pd.DataFrame:
    return frame(
        *(
            runs(batch, shuffle, step, outcomes)
            for (batch, shuffle), per_step in PATTERN.items()
            for step, outcomes in zip(STEPS, per_step, strict=True)
        )
    )


def expected_fractions(results: pd.DataFrame, order: str, batches, steps) -> np.ndarray:
    """(batch sizes, step sizes): share of judged seeds diverged, nan where none was judged."""
    out = np.full((len(batches), len(steps)), np.nan)
    for i, batch in enumerate(batches):
        for j, step in enumerate(steps):
            cell = results[
                (results["batch_size"] == batch)
                & (results["shuffle"] == (order == SHUFFLED))
                & (results["step_size"] == step)
                & results["outcome"].notna()
            ]
            if len(cell):
                out[i, j] = (cell["outcome"] == DIVERGED).mean()
    return out


def edge_rows(rows: list[tuple]) -> pd.DataFrame:
    """An edge table by hand: (batch, order, event, measured_step_size, theory_kind,
    theory_step_size, worst_batch_bound) per row, the other columns nan."""
    table = pd.DataFrame(
        rows,
        columns=[
            "batch_size",
            "order",
            "event",
            "measured_step_size",
            "theory_kind",
            "theory_step_size",
            "worst_batch_bound",
        ],
    )
    for column in (*edges.MEASURED_COLUMNS, *edges.THEORY_COLUMNS):
        if column not in table:
            table[column] = np.nan
    return table[[*edges.MEASURED_COLUMNS, *edges.THEORY_COLUMNS[3:]]]


DIV, NC = edges.DIVERGED_EVENT, edges.NOT_CONVERGED_EVENT
EXACT, ESTIMATE, BRACKET = theory.EXACT, theory.ESTIMATE, theory.BRACKET
NAN = math.nan
HAND_EDGES = edge_rows(
    [
        # data order: SGD settles high (0.04) before it diverges (0.1)
        (1, DATA, DIV, 0.1, EXACT, 0.1, 0.02),
        (1, DATA, NC, 0.03, EXACT, 0.04, 0.02),
        # batch 10: straight from converging to diverging at 0.12: no settle-high edge
        (10, DATA, DIV, 0.1, EXACT, 0.12, 0.05),
        (10, DATA, NC, NAN, EXACT, 0.12, 0.05),
        (100, DATA, DIV, 0.3, EXACT, 0.2, 0.2),
        (100, DATA, NC, 0.3, EXACT, 0.2, 0.2),
        # shuffled: theory's divergence is an estimate; where it settles, no theory
        (1, SHUFFLED, DIV, 0.1, ESTIMATE, 0.09, 0.015),
        (1, SHUFFLED, NC, 0.1, edges.NO_THEORY, NAN, 0.015),
        # a bracket has no edge; its bound lies beyond the grid's step sizes: not drawn
        (10, SHUFFLED, DIV, 0.1, BRACKET, NAN, 5.0),
        (10, SHUFFLED, NC, 0.1, edges.NO_THEORY, NAN, 5.0),
        (100, SHUFFLED, DIV, 0.3, EXACT, 0.2, 0.2),
        (100, SHUFFLED, NC, 0.3, EXACT, 0.2, 0.2),
        # a batch size the runs do not have: no row to draw it in
        (50, DATA, DIV, 0.1, EXACT, 0.11, 0.1),
        (50, DATA, NC, 0.05, EXACT, 0.06, 0.1),
    ]
)
# What HAND_EDGES draws on small_grid: label -> order -> {(step size, row)}; rows 0, 1, 2 are
# batch sizes 1, 10, 100.
HAND_DRAWN = {
    figures.THEORY_DIVERGE_LABEL: {
        DATA: {(0.1, 0), (0.12, 1), (0.2, 2)},
        SHUFFLED: {(0.2, 2)},
    },
    figures.THEORY_DIVERGE_ESTIMATE_LABEL: {SHUFFLED: {(0.09, 0)}},
    figures.THEORY_SETTLE_HIGH_LABEL: {DATA: {(0.04, 0)}},
    figures.WORST_BATCH_LABEL: {
        DATA: {(0.02, 0), (0.05, 1), (0.2, 2)},
        SHUFFLED: {(0.015, 0), (0.2, 2)},
    },
    figures.MEASURED_NOT_CONVERGED_LABEL: {
        DATA: {(0.03, 0), (0.3, 2)},
        SHUFFLED: {(0.1, 0), (0.1, 1), (0.3, 2)},
    },
}


# --- reading a figure back ---------------------------------------------------------------------


def panel_of(fig: Figure) -> dict[str, object]:
    """order -> its panel (by title)."""
    found = {}
    for ax in fig.axes:
        title = ax.get_title()
        for order, words in figures.ORDER_TITLES.items():
            if title.startswith(words):
                found[order] = ax
    return found


def colour_bar(fig: Figure):
    (bar,) = [ax for ax in fig.axes if ax.get_ylabel() == figures.PHASE_COLOR_LABEL]
    return bar


def tagged(ax, label: str) -> list:
    return [a for a in legend_groups(ax.figure).get(label, []) if a.axes is ax]


def mesh_of(ax) -> QuadMesh:
    (mesh,) = tagged(ax, figures.PHASE_COLOR_LABEL)
    return mesh


def points_of(artist) -> set[tuple[float, int]]:
    """(step size, row) of each edge an artist draws: a segment's x and middle, or a marker."""
    if isinstance(artist, LineCollection):
        found = set()
        for segment in artist.get_segments():
            (x0, y0), (x1, y1) = segment
            assert x0 == x1 and y1 - y0 == pytest.approx(2 * figures.EDGE_HALF_HEIGHT)
            found.add((round(float(x0), 12), round((y0 + y1) / 2)))
        return found
    return {(round(float(x), 12), round(float(y))) for x, y in artist.get_offsets()}


def shows_data(artist) -> bool:
    """Whether a visible artist puts something inside its panel's view."""
    if not artist.get_visible() or artist.axes is None:
        return False
    (x0, x1), (y0, y1) = artist.axes.get_xlim(), artist.axes.get_ylim()
    if isinstance(artist, QuadMesh):
        return bool((~np.ma.getmaskarray(artist.get_array())).any())
    if isinstance(artist, LineCollection):
        xy = np.concatenate(artist.get_segments()) if artist.get_segments() else np.empty((0, 2))
    elif isinstance(artist, PathCollection):
        xy = np.asarray(artist.get_offsets())
    else:
        raise AssertionError(f"unexpected tagged artist {artist!r}")
    inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
    return bool(inside.any())


def legend_entries(fig: Figure) -> dict:
    """label -> handle, of the one legend below the panels (none: {})."""
    assert len(fig.legends) <= 1
    if not fig.legends:
        return {}
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert len(labels) == len(set(labels)), labels
    return dict(zip(labels, legend.legend_handles, strict=True))


def same_color(a, b) -> bool:
    return np.allclose(to_rgba(a), to_rgba(b))


def check_legend(fig: Figure) -> dict:
    """Legend entries ⇔ drawn artists: each entry stands for artists that show data in their
    panel, drawn with the entry's mark (colour, line style, marker); each tagged artist is in
    the legend (the colour mesh in the colour bar). The legend lies outside the panels, and no
    text lies on a panel. Returns the entries."""
    fig.canvas.draw()
    render = fig.canvas.get_renderer()
    entries = legend_entries(fig)
    groups = legend_groups(fig)
    assert set(groups) - {figures.PHASE_COLOR_LABEL} == set(entries), (
        f"drawn without an entry: {set(groups) - set(entries) - {figures.PHASE_COLOR_LABEL}}; "
        f"entries for nothing drawn: {set(entries) - set(groups)}"
    )
    assert colour_bar(fig).get_ylabel() == figures.PHASE_COLOR_LABEL
    for label, artists in groups.items():
        for artist in artists:
            assert shows_data(artist), f"{label!r}: an artist with nothing in view"
        handle = entries.get(label)
        if handle is None:
            continue
        for artist in artists:
            if isinstance(artist, LineCollection):
                assert handle.get_marker() in ("None", None, "none", "")
                assert same_color(handle.get_color(), artist.get_edgecolor()[0]), label
                assert handle.get_linewidth() == pytest.approx(artist.get_linewidth()[0])
                _, dashes = artist.get_linestyle()[0]
                assert dashes is not None, f"{label!r}: theory is dashed or dotted"
                assert handle._dash_pattern[1] is not None
                np.testing.assert_allclose(handle._dash_pattern[1], dashes)
            elif isinstance(artist, PathCollection):
                marker = MarkerStyle(handle.get_marker())
                path = marker.get_path().transformed(marker.get_transform())
                np.testing.assert_allclose(artist.get_paths()[0].vertices, path.vertices)
                assert same_color(handle.get_markerfacecolor(), artist.get_facecolor()[0])
                assert same_color(handle.get_markeredgecolor(), artist.get_edgecolor()[0])
            elif isinstance(artist, QuadMesh):  # no data: the patch's colour, every cell
                colours = artist.get_facecolor()
                shown = colours[colours[:, 3] > 0]
                assert len(shown) and np.allclose(shown, to_rgba(handle.get_facecolor()))
    for legend in fig.legends:
        box = legend.get_window_extent(render)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(render)), "a legend lies on a panel"
    for ax in fig.axes:
        panel = ax.get_window_extent(render).shrunk(0.99, 0.99)
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels()]
        texts += [t for legend in fig.legends for t in legend.get_texts()]
        for other in fig.axes:
            if other is not ax:
                texts += [other.title, other.xaxis.label, other.yaxis.label]
        for text in texts:
            if text.get_visible() and text.get_text().strip():
                box = text.get_window_extent(render).shrunk(0.98, 0.9)
                assert not box.overlaps(panel), f"text {text.get_text()!r} lies on a panel"
    return entries


# --- phase_grid ----------------------------------------------------------------------------------


def test_phase_grid_counts_each_cell_over_its_judged_seeds():
    results = frame(
        runs(1, False, 0.02, [S, OSC, G, D]),
        runs(1, False, 0.01, [C, D, D, None]),
        runs(1, False, 0.005, [None, None]),  # every run failed
        runs(1, True, 0.01, [C, C, C]),
        runs(100, True, 0.01, [D, C]),
    ).assign(n_points=100)
    grid = edges.phase_grid(results)
    assert list(grid.columns) == list(edges.GRID_COLUMNS)
    # Sorted: batch size, then data order before shuffled, then step size.
    assert list(zip(grid["batch_size"], grid["order"], grid["step_size"], strict=True)) == [
        (1, DATA, 0.005),
        (1, DATA, 0.01),
        (1, DATA, 0.02),
        (1, SHUFFLED, 0.01),
        (100, SHUFFLED, 0.01),
    ]
    failed, half, mixed, calm, bgd = (grid.iloc[i] for i in range(5))
    assert (failed["runs"], failed["seeds"]) == (2, 0)
    assert math.isnan(failed["diverged_fraction"]) and math.isnan(failed["not_converged_fraction"])
    assert math.isnan(failed["median_loss_ratio"])
    # 2 of the 3 judged seeds diverged; the failed one counts for nothing.
    assert (half["runs"], half["seeds"]) == (4, 3)
    assert half["diverged_fraction"] == pytest.approx(2 / 3)
    assert half["median_loss_ratio"] == math.inf  # the median of 1, inf, inf
    # stalled, oscillating and diverged are not converged; converging is not an event.
    assert mixed["diverged_fraction"] == 0.25 and mixed["not_converged_fraction"] == 0.75
    assert mixed["median_loss_ratio"] == pytest.approx((LOSS[S] + LOSS[OSC]) / 2)
    assert calm["diverged_fraction"] == 0 and calm["median_loss_ratio"] == 1.0
    assert calm["order"] == SHUFFLED and not calm["full_batch"]
    assert bgd["full_batch"] and bgd["diverged_fraction"] == 0.5
    assert bgd["median_loss_ratio"] == math.inf  # half overflowed: the two middle ones average
    # Without n_points, DataConfig's size: 100.
    assert edges.phase_grid(results.drop(columns="n_points"))["full_batch"].tolist() == [
        False,
        False,
        False,
        False,
        True,
    ]


def test_phase_grid_fractions_put_the_measured_edges_where_measured_edges_does():
    rng = np.random.default_rng(7)
    steps = np.geomspace(0.01, 1, 12)
    rows = []
    for batch in (1, 5):
        for shuffle in (False, True):
            for seed in range(9):
                edge = rng.uniform(0.05, 0.5)
                for step in steps:
                    outcome = D if step >= edge else (S if step >= edge / 2 else C)
                    rows.append((batch, shuffle, step, seed, outcome, 1.0, 1.0))
    results = pd.DataFrame(
        rows,
        columns=[
            "batch_size",
            "shuffle",
            "step_size",
            "seed",
            "outcome",
            "final_loss",
            "optimal_loss",
        ],
    )
    grid = edges.phase_grid(results)
    table = edges.measured_edges(results)
    for (batch, order), cells in grid.groupby(["batch_size", "order"]):
        for event, column in ((DIV, "diverged_fraction"), (NC, "not_converged_fraction")):
            (measured,) = table.loc[
                (table["batch_size"] == batch)
                & (table["order"] == order)
                & (table["event"] == event),
                "measured_step_size",
            ]
            reached = cells.loc[cells[column] >= 0.5, "step_size"]
            assert measured == reached.min()


# --- the figure ---------------------------------------------------------------------------------


def test_cell_colours_are_the_computed_fractions_in_the_colour_bars_blocks():
    results = small_grid()
    fig = phase_map(results)
    fig.canvas.draw()
    panels = panel_of(fig)
    assert list(panels) == [DATA, SHUFFLED]
    bar = colour_bar(fig)
    assert [t.get_text() for t in bar.get_yticklabels()] == BLOCK_LABELS
    (blocks,) = [c for c in bar.collections if isinstance(c, QuadMesh)]
    block_colours = blocks.get_facecolor()
    assert len(block_colours) == len(BLOCK_LABELS)
    for order, ax in panels.items():
        mesh = mesh_of(ax)
        values = mesh.get_array()
        want = expected_fractions(results, order, BATCHES, STEPS)
        assert values.shape == want.shape == (3, 4)
        np.testing.assert_array_equal(values.filled(np.nan), want)
        # Each cell is the colour bar's block of its fraction: 0; > 0; ≥ ¼, ½, ¾; all.
        block = np.select(
            [want == 0, want < 0.25, want < 0.5, want < 0.75, want < 1], [0, 1, 2, 3, 4], 5
        )
        np.testing.assert_allclose(mesh.get_facecolor(), block_colours[block.ravel()])
        # A column per step size, split from the next midway on the log scale.
        x_edges = mesh.get_coordinates()[0, :, 0]
        assert (x_edges[:-1] < STEPS).all() and (x_edges[1:] > STEPS).all()
        np.testing.assert_allclose(x_edges[1:-1], np.sqrt(np.multiply(STEPS[1:], STEPS[:-1])))
        np.testing.assert_allclose(mesh.get_coordinates()[:, 0, 1], [-0.5, 0.5, 1.5, 2.5])
        assert ax.get_xscale() == "log"
        assert ax.get_xlim() == pytest.approx((x_edges[0], x_edges[-1]))
    # The blocks' ends: any seed at all leaves "none"; exactly half is the measured edge's block.
    fractions = [0, 0.01, 0.2499, 0.25, 0.4999, 0.5, 0.7499, 0.75, 0.99, 1]
    assert list(figures.phase_norm()(fractions)) == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    # All the blocks are in the grid: 0, ¼, ½, ¾ and 1 of the seeds.
    fractions = np.concatenate([mesh_of(ax).get_array().ravel() for ax in panels.values()])
    assert {0, 0.25, 0.5, 0.75, 1} <= set(fractions.tolist())


def test_batch_sizes_are_evenly_spaced_labelled_rows_naming_sgd_and_bgd():
    fig = phase_map(small_grid().assign(n_points=100))
    fig.canvas.draw()
    ax = panel_of(fig)[DATA]
    assert list(ax.get_yticks()) == [0, 1, 2]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1 (SGD)", "10", "100 (BGD)"]
    assert ax.get_ylabel() == "batch size"
    # With data of 200 points a batch of 100 is not all of it.
    fig = phase_map(small_grid().assign(n_points=200))
    assert [t.get_text() for t in panel_of(fig)[DATA].get_yticklabels()][-1] == "100"
    assert panel_of(fig)[SHUFFLED].get_title().endswith("48 configs, 4 seeds a cell")


def test_missing_cells_are_drawn_as_no_data_not_as_zero():
    results = small_grid()
    complete = phase_map(results)
    assert figures.NO_DATA_LABEL not in legend_groups(complete)
    assert figures.NO_DATA_LABEL not in check_legend(complete)

    absent = (results["batch_size"] == 10) & results["shuffle"] & (results["step_size"] == 0.1)
    failed = (results["batch_size"] == 1) & ~results["shuffle"] & (results["step_size"] == 0.01)
    holed = results[~absent].copy()
    holed.loc[failed, "outcome"] = None
    fig = phase_map(holed)
    entries = check_legend(fig)
    assert figures.NO_DATA_LABEL in entries
    panels = panel_of(fig)
    for order, (row, column) in ((DATA, (0, 0)), (SHUFFLED, (1, 2))):
        values = mesh_of(panels[order]).get_array()
        assert np.ma.getmaskarray(values).sum() == 1 and values.mask[row, column]
        assert mesh_of(panels[order]).get_facecolor()[row * 4 + column][3] == 0  # not drawn
        (gaps,) = tagged(panels[order], figures.NO_DATA_LABEL)
        shown = ~np.ma.getmaskarray(gaps.get_array())
        assert shown.sum() == 1 and shown[row, column]
        colours = gaps.get_facecolor()
        assert same_color(colours[row * 4 + column], figures.NO_DATA_COLOR)
    # The grey is no block of the colour bar.
    for colour in figures.phase_colors():
        assert not same_color(colour, figures.NO_DATA_COLOR)


def test_an_irregular_grid_one_batch_size_one_order_few_step_sizes():
    results = frame(
        runs(5, True, 0.002, [C, C]),
        runs(5, True, 0.05, [C, D]),
        runs(5, True, 0.07, [D, D]),
    )
    fig = phase_map(results)
    entries = check_legend(fig)
    assert entries == {}  # the map alone: nothing but the colour bar to explain
    (ax,) = panel_of(fig).values()
    assert ax.get_title().startswith(figures.ORDER_TITLES[SHUFFLED])
    np.testing.assert_array_equal(mesh_of(ax).get_array(), [[0, 0.5, 1]])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["5"]
    # A single step size gets a cell of its own width.
    one = phase_map(results[results["step_size"] == 0.05])
    (ax,) = panel_of(one).values()
    lo, hi = ax.get_xlim()
    assert lo < 0.05 < hi and np.sqrt(lo * hi) == pytest.approx(0.05)


def test_edges_are_drawn_where_the_edge_table_puts_them():
    fig = phase_map(small_grid(), HAND_EDGES)
    panels = panel_of(fig)
    for label, per_order in HAND_DRAWN.items():
        for order, ax in panels.items():
            drawn = set().union(*(points_of(a) for a in tagged(ax, label)))
            assert drawn == per_order.get(order, set()), (label, order)
    # Exact, estimate, settle-high and the bound are segments; measured edges markers.
    for label in HAND_DRAWN:
        kind = PathCollection if label.startswith("measured") else LineCollection
        assert all(isinstance(a, kind) for a in legend_groups(fig)[label])
    check_legend(fig)


def test_edges_beyond_the_grids_step_sizes_are_left_out():
    moved = HAND_EDGES.copy()
    moved["theory_step_size"] = moved["theory_step_size"].where(moved["order"] != SHUFFLED, 50.0)
    fig = phase_map(small_grid(), moved)
    ax = panel_of(fig)[SHUFFLED]
    assert not tagged(ax, figures.THEORY_DIVERGE_ESTIMATE_LABEL)
    assert not tagged(ax, figures.THEORY_DIVERGE_LABEL)
    entries = check_legend(fig)
    assert figures.THEORY_DIVERGE_ESTIMATE_LABEL not in entries  # drawn nowhere now
    assert figures.THEORY_DIVERGE_LABEL in entries  # still drawn in data order


@pytest.mark.parametrize(
    ("case", "present", "absent"),
    [
        ("none", [], [*HAND_DRAWN]),
        ("table", [*HAND_DRAWN], []),
        (
            "measured only",
            [figures.MEASURED_NOT_CONVERGED_LABEL],
            [label for label in HAND_DRAWN if not label.startswith("measured")],
        ),
        (
            "theory only",
            [label for label in HAND_DRAWN if not label.startswith("measured")],
            [figures.MEASURED_NOT_CONVERGED_LABEL],
        ),
        (
            "never settles high",
            [figures.THEORY_DIVERGE_LABEL, figures.WORST_BATCH_LABEL],
            [figures.THEORY_SETTLE_HIGH_LABEL],
        ),
    ],
)
def test_the_legend_names_exactly_what_is_drawn(case, present, absent):
    table = {
        "none": None,
        "table": HAND_EDGES,
        "measured only": HAND_EDGES[list(edges.MEASURED_COLUMNS)],
        "theory only": HAND_EDGES[list(edges.THEORY_COLUMNS)],
        # settle-high's edge no earlier than divergence (0.1-0.2 in data order): theory goes
        # straight to "diverges"
        "never settles high": HAND_EDGES.assign(
            theory_step_size=HAND_EDGES["theory_step_size"].where(HAND_EDGES["event"] == DIV, 0.25)
        ),
    }[case]
    fig = phase_map(small_grid(), table)
    entries = check_legend(fig)
    assert set(present) <= set(entries)
    assert not set(absent) & set(entries)
    if table is None:
        assert not fig.legends
        assert not [
            a
            for ax in fig.axes
            for a in ax.collections
            if isinstance(a, LineCollection) and a.get_gid()
        ]


def test_the_legend_check_catches_what_it_is_for():
    # An artist drawn without an entry, and an entry for nothing drawn, are each caught.
    fig = phase_map(small_grid(), HAND_EDGES)
    ax = panel_of(fig)[DATA]
    figures._tag(ax.scatter([0.05], [1]), "an unexplained mark")
    with pytest.raises(AssertionError, match="drawn without an entry"):
        check_legend(fig)
    fig = phase_map(small_grid(), HAND_EDGES)
    for artist in legend_groups(fig)[figures.THEORY_SETTLE_HIGH_LABEL]:
        artist.set_gid(None)
    with pytest.raises(AssertionError, match="entries for nothing drawn"):
        check_legend(fig)
    # A segment moved out of view stands for nothing there.
    fig = phase_map(small_grid(), HAND_EDGES)
    (settle,) = legend_groups(fig)[figures.THEORY_SETTLE_HIGH_LABEL]
    settle.set_segments([[(10.0, -0.4), (10.0, 0.4)]])
    with pytest.raises(AssertionError, match="nothing in view"):
        check_legend(fig)


def test_theory_lies_over_the_colour_and_under_the_measurements():
    fig = phase_map(small_grid(), HAND_EDGES)
    groups = legend_groups(fig)
    meshes = groups[figures.PHASE_COLOR_LABEL]
    theory_artists = [a for label in figures.PHASE_THEORY_STYLES for a in groups.get(label, [])]
    measured = groups[figures.MEASURED_NOT_CONVERGED_LABEL]
    assert len(theory_artists) >= 4
    assert max(a.get_zorder() for a in meshes) < min(a.get_zorder() for a in theory_artists)
    assert max(a.get_zorder() for a in theory_artists) < min(a.get_zorder() for a in measured)
    for artist in theory_artists:
        # Thin and broken, with a white halo: seen on pale and dark cells, hiding neither.
        assert artist.get_linewidth()[0] <= 2.0
        assert artist.get_linestyle()[0][1] is not None
        effects = artist.get_path_effects()
        assert effects and same_color(effects[0]._gc["foreground"], "white")


def test_a_140000_row_grid_draws():
    # The real grid's shape: 7 batch sizes × 2 orders × 100 step sizes × 100 seeds, outcomes
    # made up around an edge per batch size.
    batches = np.array(theory.PHASE_MAP_BATCH_SIZES)
    steps = np.geomspace(1e-3, 1.0, 100)
    b, shuffle, step, seed = (
        a.ravel() for a in np.meshgrid(batches, [False, True], steps, np.arange(100), indexing="ij")
    )
    rng = np.random.default_rng(0)
    edge = 0.1 * (1 + 0.02 * np.log(b)) * np.exp(0.05 * rng.standard_normal(b.size))
    outcome = np.where(step >= edge, DIVERGED, np.where(step >= edge / 2, STALLED, CONVERGED))
    results = pd.DataFrame(
        {
            "batch_size": b,
            "shuffle": shuffle,
            "step_size": step,
            "seed": seed,
            "outcome": outcome.astype(object),
            "final_loss": np.where(outcome == DIVERGED, np.inf, 1.0),
            "optimal_loss": 0.5,
        }
    )
    assert len(results) == 140_000
    fig = phase_map(results)
    fig.canvas.draw()
    panels = panel_of(fig)
    grid = edges.phase_grid(results)
    for order, ax in panels.items():
        assert ax.get_title().endswith("70,000 configs, 100 seeds a cell")
        values = mesh_of(ax).get_array()
        assert values.shape == (7, 100) and not np.ma.getmaskarray(values).any()
        want = grid[grid["order"] == order].pivot(
            index="batch_size", columns="step_size", values="diverged_fraction"
        )
        np.testing.assert_array_equal(values, want.to_numpy())
        blocks = figures.phase_norm()(want.to_numpy()).ravel()
        colours = np.array(figures.phase_colors())[blocks]
        np.testing.assert_allclose(mesh_of(ax).get_facecolor(), colours)
        # One mesh per panel, not an artist per config.
        assert len(ax.collections) < 10
    labels = [t.get_text() for t in panels[DATA].get_yticklabels()]
    assert labels == ["1 (SGD)", "2", "5", "10", "20", "50", "100 (BGD)"]


# --- a really trained grid, with theory's edges --------------------------------------------------


@pytest.fixture(scope="module")
def trained() -> tuple[pd.DataFrame, pd.DataFrame]:
    """BGD, batch 10 and SGD in both orders, 2 seeds × 25 step sizes 0.01-0.5, float32, 20
    epochs, judged by gdexp's rules (as benchmarks/phase_map.py computes a phase map), and the
    edge table with theory's edges on the same data."""
    seeds, batches = (0, 1), (1, 10, 100)
    base = OmegaConf.structured(RunConfig())
    datasets = []
    for seed in seeds:
        base.seed = seed
        datasets.append(make_run_data(base))
    optimal = np.array([least_squares_fit(d)[2] for d in datasets])
    steps = np.geomspace(0.01, 0.5, 25)
    parts = []
    for batch in batches:
        for shuffle in (False, True):
            lr, seed = (a.ravel() for a in np.meshgrid(steps, seeds, indexing="ij"))
            ones = np.ones(lr.size)
            trajectories = train_arrays(
                datasets, lr, -10.0 * ones, -20.0 * ones, seed, data_index=seed, epochs=20,
                batch_size=batch, shuffle=shuffle, dtype="float32", record_steps=False,
            )  # fmt: skip
            summary = summarize_many(trajectories, optimal[seed], 1e-3)
            parts.append(
                pd.DataFrame(
                    {
                        "batch_size": batch,
                        "shuffle": shuffle,
                        "step_size": lr,
                        "seed": seed,
                        "outcome": np.array(OUTCOMES, dtype=object)[
                            summary.judgements.outcome_code
                        ],
                        "final_loss": summary.final_loss,
                        "optimal_loss": optimal[seed],
                        "n_points": 100,
                    }
                )
            )
    results = pd.concat(parts, ignore_index=True)
    theory_frame = edges.theory_edges(astuple(DataConfig()), seeds, batches)
    return results, edges.edge_table(results, theory_frame)


def test_a_trained_grid_puts_theorys_edges_at_its_colour_steps(trained):
    results, table = trained
    fig = phase_map(results, table)
    entries = check_legend(fig)
    assert {
        figures.THEORY_DIVERGE_LABEL,
        figures.THEORY_DIVERGE_ESTIMATE_LABEL,
        figures.THEORY_SETTLE_HIGH_LABEL,
        figures.WORST_BATCH_LABEL,
        figures.MEASURED_NOT_CONVERGED_LABEL,
    } <= set(entries)
    panels = panel_of(fig)
    ax = panels[DATA]
    theory_diverge = {row: x for x, row in points_of(*tagged(ax, figures.THEORY_DIVERGE_LABEL))}
    # BGD (row 2): exactly 2/λmax(H); all seeds converge a cell below it, all diverge a cell
    # above it.
    assert theory_diverge[2] == pytest.approx(0.11997, abs=1e-5)
    bgd = mesh_of(ax).get_array()[2]
    steps = np.sort(results["step_size"].unique())
    below, above = steps < theory_diverge[2], steps > theory_diverge[2]
    assert (bgd[below][-3:] == 0).all() and (bgd[above][1:] == 1).all()
    # SGD in data order settles high before it diverges: the settle-high edge lies left of
    # the divergence edge, and the measured "not converged" marker is within a cell of it.
    (settle,) = [
        x for x, row in points_of(*tagged(ax, figures.THEORY_SETTLE_HIGH_LABEL)) if row == 0
    ]
    assert settle < theory_diverge[0]
    (measured,) = [
        x for x, row in points_of(*tagged(ax, figures.MEASURED_NOT_CONVERGED_LABEL)) if row == 0
    ]
    assert abs(np.log(measured / settle)) < 2.5 * np.log(steps[1] / steps[0])
    # Every edge drawn is the edge table's own number.
    for label, kind, event, order in (
        (figures.THEORY_DIVERGE_LABEL, EXACT, DIV, DATA),
        (figures.THEORY_DIVERGE_ESTIMATE_LABEL, ESTIMATE, DIV, SHUFFLED),
    ):
        want = table[
            (table["theory_kind"] == kind) & (table["event"] == event) & (table["order"] == order)
        ]
        drawn = set().union(*(points_of(a) for a in tagged(panels[order], label)))
        assert drawn == {
            (round(float(x), 12), {1: 0, 10: 1, 100: 2}[b])
            for x, b in zip(want["theory_step_size"], want["batch_size"], strict=True)
        }
