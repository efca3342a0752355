"""The edges of a phase map: as the step size grows, where a batch schedule's runs stop
converging, measured from the runs' outcomes and predicted by gdexp.theory, side by side.

Two events, each judged from a run's outcome word (gdexp.outcome):

- `diverged`: the run ended `diverged`; theory's counterpart is "diverges", ρ(M) ≥ 1.
- `not converged`: the run ended `stalled`, `oscillating` or `diverged`; theory's counterpart is
  any verdict but "converges" ("settles high" or "diverges"). A `converging` run counts as
  converged: it is still falling at the end, which at small step sizes means 20 epochs were too
  few (BGD at 0.01 is `converging`), not that the step is too large; counting it would put the
  edge at the grid's smallest step size. This is the correspondence the analysis report already
  checks runs against (converges ↔ converged/converging).

A measured edge is the smallest step size at which at least half the seeds show the event
(exactly half counts). Its interval is the grid's own: the edge lies above the largest step size
measured below it (where fewer than half did) and at or below the edge. Seeds also give a
distribution-free interval for the median of the per-seed edges (each seed's smallest step size
with the event), from order statistics: the narrowest [s₍ⱼ₎, s₍ₙ₊₁₋ⱼ₎] whose binomial coverage
is at least 95 %, or the widest, [min, max], with its lower coverage when there are too few seeds.
No plotting here: frames in, frames (and CSV text) out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict

import numpy as np
import pandas as pd

from gdexp.outcome import DIVERGED, OSCILLATING, STALLED
from gdexp.theory import (
    DATA_ORDER,
    EXACT,
    PHASE_MAP_BATCH_SIZES,
    SHUFFLED,
    settings_step_size_edges,
)

DIVERGED_EVENT = "diverged"
NOT_CONVERGED_EVENT = "not converged"
EVENTS = (DIVERGED_EVENT, NOT_CONVERGED_EVENT)
EVENT_OUTCOMES = {
    DIVERGED_EVENT: frozenset({DIVERGED}),
    NOT_CONVERGED_EVENT: frozenset({STALLED, OSCILLATING, DIVERGED}),
}
SEED_INTERVAL_COVERAGE = 0.95
# Theory's edges of a sweep are computed on the data of at most this many seeds (the smallest):
# in data order the divergence edge depends on x alone, the same for every seed, and only
# settling high varies with a seed's y; a call costs ~0.04 s per seed at 10 seeds and grows
# faster than the seeds (11 s for 100 seeds × 7 batch sizes, measured on this machine).
THEORY_MAX_SEEDS = 10
# Theory's kind for an edge it cannot give (where a reshuffled run settles: it has no fixed point).
NO_THEORY = "none"

KEYS = ("batch_size", "order", "event")
MEASURED_COLUMNS = (
    *KEYS,
    "seeds",  # how many seeds were measured
    "measured_step_size",  # smallest step size where ≥ half the seeds show the event; nan: none
    "measured_lower",  # largest step size measured below it (0: it is the smallest measured)
    "measured_upper",  # = measured_step_size (inf: no step size measured showed it)
    "seed_median_low",  # interval for the median over seeds of each seed's own edge
    "seed_median_high",
    "seed_interval_coverage",  # its binomial coverage
)
THEORY_COLUMNS = (
    *KEYS,
    "theory_kind",  # gdexp.theory's EXACT, ESTIMATE, BRACKET, or NO_THEORY
    "theory_step_size",  # median over the seeds' data sets
    "theory_min",  # and its range over them (data order: ρ(M) depends on x alone)
    "theory_max",
    "worst_batch_bound",  # proven: no run diverges below it
    "full_batch_bound",  # 2/λmax(H), BGD's edge
)


def order_name(shuffle: bool) -> str:
    return SHUFFLED if shuffle else DATA_ORDER


def median_interval(n: int, coverage: float = SEED_INTERVAL_COVERAGE) -> tuple[int, float]:
    """(j, its coverage): the order statistics s₍ⱼ₎ ≤ median ≤ s₍ₙ₊₁₋ⱼ₎ (1-based) of n samples
    cover the median with probability 1 − 2·P(Binomial(n, ½) < j); the largest j that reaches
    `coverage`, else j = 1 (min and max) with what it reaches."""
    below = 0.0  # P(Binomial(n, ½) ≤ j − 1), accumulated
    best = (1, 1.0 - 2.0 * 0.5**n)
    for j in range(1, (n + 1) // 2 + 1):
        below += math.comb(n, j - 1) * 0.5**n
        reached = 1.0 - 2.0 * below
        if reached < coverage:
            break
        best = (j, reached)
    return best


def _event_edge(steps: np.ndarray, hits: np.ndarray) -> tuple[float, float, float]:
    """(edge, lower, upper) from the share of seeds with the event at each sorted step size."""
    reached = np.flatnonzero(hits >= 0.5)
    if not reached.size:
        return math.nan, float(steps[-1]), math.inf
    first = int(reached[0])
    return float(steps[first]), float(steps[first - 1]) if first else 0.0, float(steps[first])


def measured_edges(results: pd.DataFrame) -> pd.DataFrame:
    """Measured edges per (batch_size, order, event) (columns `MEASURED_COLUMNS`), from a frame
    with one row per run: batch_size, shuffle (bool), step_size, seed, outcome."""
    rows = []
    for (batch, shuffle), group in results.groupby(["batch_size", "shuffle"], sort=True):
        for event in EVENTS:
            hit = group["outcome"].isin(EVENT_OUTCOMES[event])
            share = hit.groupby(group["step_size"]).mean().sort_index()
            edge, lower, upper = _event_edge(share.index.to_numpy(), share.to_numpy())
            # Each seed's own edge: its smallest step size with the event (inf: none).
            per_seed = (
                group["step_size"].where(hit, math.inf).groupby(group["seed"]).min().sort_values()
            )
            n = len(per_seed)
            j, coverage = median_interval(n)
            rows.append(
                (
                    int(batch),
                    order_name(bool(shuffle)),
                    event,
                    n,
                    edge,
                    lower,
                    upper,
                    float(per_seed.iloc[j - 1]),
                    float(per_seed.iloc[n - j]),
                    coverage,
                )
            )
    return pd.DataFrame(rows, columns=list(MEASURED_COLUMNS))


def theory_edges(
    data: tuple,
    seeds: Iterable[int],
    batch_sizes: Sequence[int] = PHASE_MAP_BATCH_SIZES,
    **options,
) -> pd.DataFrame:
    """gdexp.theory's edges on the runs' data (`settings_step_size_edges`), one row per (seed,
    batch size, order): every `StepSizeEdge` field, plus `not_converging_step_size`."""
    edges = settings_step_size_edges(data, list(seeds), batch_sizes, **options)
    return pd.DataFrame(
        [{**asdict(e), "not_converging_step_size": e.not_converging_step_size} for e in edges]
    )


def theory_edge_summary(edges: pd.DataFrame) -> pd.DataFrame:
    """`theory_edges` per (batch_size, order, event) over the seeds (columns `THEORY_COLUMNS`)."""
    column = {
        DIVERGED_EVENT: "diverge_step_size",
        NOT_CONVERGED_EVENT: "not_converging_step_size",
    }
    rows = []
    for (batch, order), group in edges.groupby(["batch_size", "order"], sort=True):
        kind = str(group["kind"].iloc[0])
        for event in EVENTS:
            values = group[column[event]].to_numpy(dtype=np.float64)
            known = not np.isnan(values).all()
            # Where a reshuffled run settles, theory does not say: no edge, not a missing number.
            event_kind = kind if known or kind == EXACT else NO_THEORY
            rows.append(
                (
                    int(batch),
                    str(order),
                    event,
                    event_kind,
                    float(np.median(values)) if known else math.nan,
                    float(np.min(values)) if known else math.nan,
                    float(np.max(values)) if known else math.nan,
                    float(group["worst_batch_bound"].min()),
                    float(group["full_batch_bound"].iloc[0]),
                )
            )
    return pd.DataFrame(rows, columns=list(THEORY_COLUMNS))


def edge_table(results: pd.DataFrame, theory: pd.DataFrame) -> pd.DataFrame:
    """Measured and theory's edges side by side, one row per (batch_size, order, event): the
    `measured_edges` of `results` joined with the `theory_edge_summary` of `theory` (a
    `theory_edges` frame). A key on one side only keeps its row, the other side's columns nan."""
    table = measured_edges(results).merge(theory_edge_summary(theory), on=list(KEYS), how="outer")
    order_rank = table["order"].map({DATA_ORDER: 0, SHUFFLED: 1})
    event_rank = table["event"].map({e: i for i, e in enumerate(EVENTS)})
    return (
        table.assign(_o=order_rank, _e=event_rank)
        .sort_values(["batch_size", "_o", "_e"])
        .drop(columns=["_o", "_e"])
        .reset_index(drop=True)
    )


def edge_table_csv(table: pd.DataFrame) -> str:
    """The edge table as CSV text; floats to 6 significant digits, inf and nan spelled out."""
    return table.to_csv(index=False, float_format="%.6g", na_rep="nan")


# --- The phase map's cells ---------------------------------------------------------------------

GRID_KEYS = ("batch_size", "order", "step_size")
GRID_COLUMNS = (
    *GRID_KEYS,
    "runs",  # configs in the cell (rows of the results frame)
    "seeds",  # of them, judged: an outcome (a failed config has none)
    "diverged_fraction",  # share of the judged seeds whose outcome is `diverged`
    "not_converged_fraction",  # share whose outcome is stalled, oscillating or diverged
    "median_loss_ratio",  # median over judged seeds of final_loss / optimal_loss (inf: ≥ half)
    "full_batch",  # batch_size is all the data (n_points): BGD
)


def phase_grid(results: pd.DataFrame) -> pd.DataFrame:
    """The cells of a phase map: one row per (batch_size, order, step_size) present in `results`
    (one row per run: batch_size (effective), shuffle, step_size, seed, outcome, final_loss,
    optimal_loss; n_points when known), columns `GRID_COLUMNS`, sorted by batch size, order
    (data order first) and step size.

    A cell's fractions are over its judged seeds (the runs with an outcome); events as in
    `EVENT_OUTCOMES`. A cell whose runs all failed keeps its row with seeds 0 and nan fractions:
    no data, not 0. `median_loss_ratio` takes a diverged run's +inf as its loss, so it is inf
    when at least half the seeds overflowed (pandas' median of an even count averages the two
    middle values). `full_batch`: the batch is all n_points of the data; without an n_points
    column, DataConfig's default size.
    """
    outcome = results["outcome"]
    known = outcome.notna().to_numpy()
    shuffle = results["shuffle"].astype(bool).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = results["final_loss"].to_numpy(dtype=np.float64) / results["optimal_loss"].to_numpy(
            dtype=np.float64
        )
    if "n_points" in results:
        n_points = results["n_points"].to_numpy()
    else:
        from gdexp.config import DataConfig

        n_points = np.full(len(results), DataConfig().n_points)
    cells = pd.DataFrame(
        {
            "batch_size": results["batch_size"].to_numpy(dtype=np.int64),
            "shuffle": shuffle,  # named after grouping: grouping by a bool is cheaper
            "step_size": results["step_size"].to_numpy(dtype=np.float64),
            "runs": 1,
            "seeds": known.astype(np.int64),
            "diverged": outcome.isin(EVENT_OUTCOMES[DIVERGED_EVENT]).to_numpy() & known,
            "not_converged": outcome.isin(EVENT_OUTCOMES[NOT_CONVERGED_EVENT]).to_numpy() & known,
            "ratio": np.where(known, ratio, np.nan),
            "full_batch": results["batch_size"].to_numpy() >= n_points,
        }
    )
    grid = (
        cells.groupby(["batch_size", "shuffle", "step_size"], sort=True)
        .agg(
            runs=("runs", "sum"),
            seeds=("seeds", "sum"),
            diverged=("diverged", "sum"),
            not_converged=("not_converged", "sum"),
            median_loss_ratio=("ratio", "median"),
            full_batch=("full_batch", "all"),
        )
        .reset_index()
    )
    seeds = grid["seeds"].where(grid["seeds"] > 0)  # nan: no judged seed, no fraction
    grid["diverged_fraction"] = grid.pop("diverged") / seeds
    grid["not_converged_fraction"] = grid.pop("not_converged") / seeds
    grid.insert(1, "order", np.where(grid.pop("shuffle"), SHUFFLED, DATA_ORDER))
    return grid[list(GRID_COLUMNS)]
