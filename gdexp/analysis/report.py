"""A sweep's report: figures as PNG, a summary table (CSV and Markdown), and report.md.

`write_report` writes the files of a `load_runs` frame into a folder; `log_report` puts that
folder on the sweep's parent run as MLflow artifacts (under analysis/); `main` is
`python -m gdexp.analysis`.

A table sweep's report (its configs have no run ids: gdexp.record=table) is bounded whatever its
size: the phase map (figures.phase_map) and the edge table (edges.edge_table: measured edges and
theory's, as edges.csv and in report.md) instead of the per-method figures, which are drawn per
run id and merge a method's batch schedules; summary.csv holds every (method, batch size, order,
step size) row, and summary.md, when that is more than `MAX_MARKDOWN_ROWS` rows (1,400 for the
dense phase-map grid), one row per batch schedule instead, as do the findings. Everything is
computed on whole columns, theory once per distinct (data, batch size, order).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gdexp.analysis import edges, figures, tables
from gdexp.analysis.load import (
    LATEST,
    SOURCES,
    AnalysisError,
    SweepNotFound,
    find_sweep,
    get_experiment_id,
    load_histories,
    load_runs,
    open_store,
)
from gdexp.names import EDGES_ARTIFACT, PHASE_MAP_ARTIFACT, RECORD_TABLE, method_short
from gdexp.outcome import (
    CONVERGED,
    CONVERGING,
    DIVERGED,
    MEANINGS,
    OSCILLATING,
    OUTCOMES,
    STALLED,
)
from gdexp.theory import CONVERGES, DIVERGES, SETTLES_HIGH

ARTIFACT_DIR = "analysis"
FIGURES = {
    "loss_curves": "Loss against epoch",
    "step_size_map": "Final loss against step size, with theory",
    "parameter_path": "Parameter paths over the loss contours",
}
# A table sweep's figure, and its edge table (file names as on the sweep's parent run).
PHASE_MAP = PHASE_MAP_ARTIFACT.removesuffix(".png")
PHASE_MAP_CAPTION = "Phase map: where each batch schedule diverges, measured and by theory"
EDGES_CSV = EDGES_ARTIFACT
# Above this many summary rows, summary.md (and report.md) show one row per batch schedule
# (method, batch size, order) and summary.csv alone has them all.
MAX_MARKDOWN_ROWS = 100
# What must be one value across a sweep for its edges to be one table: the data, the epochs, the
# precision, the start and the tolerance (the step size, seed and batch schedule vary).
SETTING_COLUMNS = (
    *tables.DATA_COLUMNS,
    "epochs",
    "dtype",
    "init_w",
    "init_b",
    "convergence_tolerance",
)
FAILED_STATUSES = ("FAILED", "KILLED")
# The outcomes that agree with each of theory's verdicts.
AGREES = {
    CONVERGES: {CONVERGED, CONVERGING},
    SETTLES_HIGH: {STALLED, OSCILLATING},
    DIVERGES: {DIVERGED},
}
SUMMARY_COLUMNS = (
    "method",
    "batch_size",  # effective
    "shuffle",
    "step_size",
    "runs",
    "seeds",
    *OUTCOMES,
    "failed",
    "median_final_loss",
    "median_optimal_loss",
    "final_w_mean",
    "final_w_sd",
    "final_b_mean",
    "final_b_sd",
    "theory_verdict",
    "theory_fixed_point_loss",
    "theory_spectral_radius",
    "theory_agrees",
)


def is_table_sweep(runs: pd.DataFrame) -> bool:
    """The frame is a table sweep's: its rows are configs without run ids (gdexp.table)."""
    sweep = runs.attrs.get("sweep") or {}
    return sweep.get("record") == RECORD_TABLE or bool(len(runs) and runs["run_id"].isna().all())


def _row_keys(frame: pd.DataFrame) -> pd.Index:
    """What names each row of a `load_runs` or `theory_table` frame: its run id, or for a table
    sweep's config (no run id) its config index."""
    run_ids = frame["run_id"].to_numpy(dtype=object)
    missing = pd.isna(run_ids)
    if not missing.any():
        return pd.Index(run_ids, dtype=object)
    index = frame["config_index"].to_numpy(dtype=object)
    if missing.all():
        return pd.Index(index.astype(np.int64))
    return pd.Index(np.where(missing, index, run_ids), dtype=object)


def _theory_of(runs: pd.DataFrame, theory: pd.DataFrame) -> pd.DataFrame:
    """`theory`'s verdict, stability, fixed-point loss and ρ(M) for each row of `runs` (matched
    by run id or config index; the first theory row of each), NaN / None where it has none."""
    keys = _row_keys(theory)
    unique = ~keys.duplicated()
    at = keys[unique].get_indexer(_row_keys(runs))
    found = at >= 0
    rows = np.flatnonzero(unique)[np.where(found, at, 0)]

    def column(name: str, missing: Any) -> np.ndarray:
        values = theory[name].to_numpy()[rows]
        return np.where(found, values, missing)

    return pd.DataFrame(
        {
            "verdict": column("verdict", None).astype(object),
            "stable": column("stable", False).astype(bool),
            "fixed_point_loss": column("fixed_point_loss", np.nan).astype(np.float64),
            "spectral_radius": column("spectral_radius", np.nan).astype(np.float64),
            "known": found,
        }
    )


def _verdict_words(groups: np.ndarray, verdicts: np.ndarray, n_groups: int) -> list[str]:
    """Per group, theory's verdict of its rows: the one verdict, or "mixed: v (n), ..." most
    common first (ties in order of appearance, as pandas' value_counts has them), "" where no
    row has one."""
    known = pd.notna(verdicts)
    codes, names = pd.factorize(verdicts[known])
    width = max(len(names), 1)
    pairs = groups[known].astype(np.int64) * width + codes
    counts = np.bincount(pairs, minlength=n_groups * width).reshape(n_groups, width)
    first = np.full(n_groups * width, np.iinfo(np.int64).max)
    seen, at = np.unique(pairs, return_index=True)  # rows are in order: first appearance
    first[seen] = at
    first = first.reshape(n_groups, width)
    present = (counts > 0).sum(axis=1)
    words = np.array([*map(str, names), ""], dtype=object)[
        np.where(present == 1, counts.argmax(axis=1), len(names))
    ]
    for group in np.flatnonzero(present > 1):
        order = sorted(
            np.flatnonzero(counts[group]), key=lambda v: (-counts[group, v], first[group, v])
        )
        words[group] = "mixed: " + ", ".join(f"{names[v]} ({counts[group, v]})" for v in order)
    return list(words)


def summary_table(runs: pd.DataFrame, theory: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (method, batch_size, shuffle, step_size) — a method's batch schedule (its
    effective batch size and order) at a step size — methods in bgd, sgd, minibatch order, then
    batch size, order and step size ascending (columns `SUMMARY_COLUMNS`). A sweep whose
    methods each have one batch schedule has a row per (method, step size).

    runs / seeds: how many runs (or configs) and distinct seeds; one column per outcome
    (gdexp.outcome's OUTCOMES): the share of the runs with it (0-1); failed: runs FAILED or
    KILLED; median_final_loss over the runs (inf if most blew up) and the median least-squares
    loss; final w and b mean and sample sd; theory_*: gdexp.theory's verdict (one, or "mixed:
    ..." if seeds differ), the median predicted fixed-point loss (NaN where the epoch map is
    unstable) and spectral radius ρ(M), and theory_agrees: how many runs ended as their verdict
    says (`AGREES`). `theory` (default `tables.theory_table(runs)`) is matched to the runs by run
    id, or config index for a table sweep's configs. Computed on whole columns (grouped once),
    so a table sweep of 10^5 configs costs a fraction of a second.
    """
    theory = tables.theory_table(runs) if theory is None else theory
    predicted = _theory_of(runs, theory)
    rank = {m: i for i, m in enumerate(figures.methods_in(runs))}
    outcome = runs["outcome"].to_numpy(dtype=object)
    verdict = predicted["verdict"].to_numpy(dtype=object)
    agrees = np.zeros(len(runs), dtype=bool)
    for said, outcomes in AGREES.items():
        agrees |= (verdict == said) & pd.Series(outcome).isin(outcomes).to_numpy()
    frame = pd.DataFrame(
        {
            "rank": runs["method"].map(rank).to_numpy(),
            "batch_size": runs["batch_size"].to_numpy(dtype=np.int64),
            "shuffle": runs["shuffle"].to_numpy(dtype=bool),
            "step_size": runs["step_size"].to_numpy(dtype=np.float64),
            "seed": runs["seed"].to_numpy(),
            **{o: outcome == o for o in OUTCOMES},
            "failed": runs["status"].isin(FAILED_STATUSES).to_numpy(),
            **{
                c: runs[c].to_numpy(dtype=np.float64)
                for c in ("final_loss", "optimal_loss", "final_w", "final_b")
            },
            "fixed_point": np.where(predicted["stable"], predicted["fixed_point_loss"], np.nan),
            "radius": predicted["spectral_radius"].to_numpy(),
            "agrees": agrees,
        }
    )
    keys = ["rank", "batch_size", "shuffle", "step_size"]
    grouped = frame.groupby(keys, sort=True)
    with np.errstate(invalid="ignore"):  # a median of +inf and -inf
        table = grouped.agg(
            runs=("seed", "size"),
            seeds=("seed", "nunique"),
            **{o: (o, "sum") for o in OUTCOMES},
            failed=("failed", "sum"),
            median_final_loss=("final_loss", "median"),
            median_optimal_loss=("optimal_loss", "median"),
            final_w_mean=("final_w", "mean"),
            final_w_sd=("final_w", "std"),
            final_b_mean=("final_b", "mean"),
            final_b_sd=("final_b", "std"),
            theory_fixed_point_loss=("fixed_point", "median"),
            theory_spectral_radius=("radius", "median"),
            theory_agrees=("agrees", "sum"),
        ).reset_index()
    runs_per_row = table["runs"].to_numpy(dtype=np.int64)
    for o in OUTCOMES:
        table[o] = table[o].to_numpy(dtype=np.int64) / runs_per_row
    table["theory_verdict"] = _verdict_words(grouped.ngroup().to_numpy(), verdict, len(table))
    methods = np.array(list(rank), dtype=object)
    table["method"] = pd.Series(methods[table["rank"].to_numpy()], dtype=object, index=table.index)
    table = table.astype(
        {"runs": "int64", "seeds": "int64", "failed": "int64", "theory_agrees": "int64"}
    )
    return table[list(SUMMARY_COLUMNS)]


def _num(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{digits}g}"


def format_radius(value: float, digits: int = 4) -> str:
    """ρ(M) with `digits` significant digits, and more where needed so that the text is on the
    same side of 1 as the value: 0.99998 reads 0.99998, never "1"; 1.00002 never "1" either."""
    if value is None or not math.isfinite(value):
        return _num(value)
    for d in range(digits, 18):
        text = f"{value:.{d}g}"
        shown = float(text)
        if (shown < 1) == (value < 1) and (shown > 1) == (value > 1):
            return text
    return repr(value)


def _mean_sd(mean: float, sd: float) -> str:
    return _num(mean, 4) if math.isnan(sd) else f"{_num(mean, 4)} ± {_num(sd, 2)}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)]) + "\n"


def outcome_counts(row: Any) -> dict[str, int]:
    """{outcome: runs} of a summary row, in OUTCOMES order, outcomes with no run left out."""
    counts = {o: round(getattr(row, o) * row.runs) for o in OUTCOMES}
    return {o: n for o, n in counts.items() if n}


def _tally(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {o}" for o, n in counts.items()) or "no outcome"


def schedule_labels(summary: pd.DataFrame) -> list[str]:
    """How the report names each summary row's method: its short name (BGD, SGD, Mini-batch),
    and its batch size and order too where the method comes with more than one."""
    schedules = summary.groupby("method")[["batch_size", "shuffle"]].apply(
        lambda group: len(group.drop_duplicates())
    )
    return [
        method_short(r.method)
        if schedules[r.method] == 1
        else f"{method_short(r.method)}, batch {r.batch_size}"
        + (", shuffled" if r.shuffle else ", data order")
        for r in summary.itertuples()
    ]


def summary_markdown(summary: pd.DataFrame, unit: str = "runs") -> str:
    """The summary as Markdown, a row per summary row; `unit`: what its rows count (runs, or a
    table sweep's configs)."""
    header = (
        "Method",
        "Step size",
        unit.capitalize(),
        "Outcomes",
        "Median final loss",
        "Final w (mean ± sd)",
        "Final b (mean ± sd)",
        "Theory (ρ)",
        "Theory fixed-point loss",
        f"{unit.capitalize()} as theory says",
    )
    rows = [
        (
            label,
            f"{r.step_size:g}",
            f"{r.runs}" + (f" ({r.failed} failed)" if r.failed else ""),
            _tally(outcome_counts(r)),
            _num(r.median_final_loss),
            _mean_sd(r.final_w_mean, r.final_w_sd),
            _mean_sd(r.final_b_mean, r.final_b_sd),
            f"{r.theory_verdict} (ρ = {format_radius(r.theory_spectral_radius)})",
            _num(r.theory_fixed_point_loss),
            f"{r.theory_agrees} of {r.runs}",
        )
        for label, r in zip(schedule_labels(summary), summary.itertuples(), strict=True)
    ]
    return _markdown_table(header, rows)


SCHEDULE_COLUMNS = (
    "method",
    "batch_size",
    "shuffle",
    "step_sizes",  # how many step sizes of the schedule have a row
    "step_size_min",
    "step_size_max",
    "runs",
    "seeds",  # the most seeds at one step size
    *OUTCOMES,  # runs (not shares) with each outcome
    "failed",
    "theory_agrees",
)


def schedule_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary per batch schedule (method, batch_size, shuffle), in the summary's order
    (columns `SCHEDULE_COLUMNS`): its step sizes, and its runs' counts added up over them."""
    counts = summary.assign(
        **{o: (summary[o] * summary["runs"]).round().astype("int64") for o in OUTCOMES}
    )
    table = (
        counts.groupby(["method", "batch_size", "shuffle"], sort=False)
        .agg(
            step_sizes=("step_size", "size"),
            step_size_min=("step_size", "min"),
            step_size_max=("step_size", "max"),
            runs=("runs", "sum"),
            seeds=("seeds", "max"),
            **{o: (o, "sum") for o in OUTCOMES},
            failed=("failed", "sum"),
            theory_agrees=("theory_agrees", "sum"),
        )
        .reset_index()
    )
    return table[list(SCHEDULE_COLUMNS)]


def _order_word(shuffle: bool) -> str:
    return "shuffled" if shuffle else "data order"


def schedule_markdown(schedules: pd.DataFrame, unit: str = "runs") -> str:
    """`schedule_table` as Markdown; `unit` names what is counted (runs, or configs)."""
    header = (
        "Method",
        "Batch size",
        "Order",
        "Step sizes",
        unit.capitalize(),
        "Outcomes",
        f"{unit.capitalize()} as theory says",
    )
    rows = [
        (
            method_short(r.method),
            f"{r.batch_size}",
            _order_word(r.shuffle),
            f"{r.step_sizes} ({r.step_size_min:g} – {r.step_size_max:g})",
            f"{r.runs:,}" + (f" ({r.failed:,} failed)" if r.failed else ""),
            _tally({o: getattr(r, o) for o in OUTCOMES if getattr(r, o)}),
            f"{r.theory_agrees:,} of {r.runs:,}",
        )
        for r in schedules.itertuples()
    ]
    return _markdown_table(header, rows)


EDGE_HEADER = (
    "Batch size",
    "Order",
    "Event",
    "Measured edge (grid interval)",
    "Median of the seeds' edges (interval, coverage)",
    "Theory (kind)",
    "Theory over the seeds' data",
    "Proven: no divergence below",
)


def _interval(low: float, high: float) -> str:
    return f"{_num(low, 4)} – {_num(high, 4)}"


def edges_markdown(table: pd.DataFrame) -> str:
    """An `edges.edge_table` as Markdown: a row per (batch size, order, event)."""
    rows = []
    for r in table.itertuples():
        measured = getattr(r, "measured_step_size", math.nan)
        if math.isnan(getattr(r, "seeds", math.nan)):
            found = "not measured"
        elif not math.isfinite(measured):
            found = f"none up to {_num(r.measured_lower, 4)}"
        else:
            found = f"{_num(measured, 4)} ({_num(r.measured_lower, 4)}, {_num(measured, 4)}]"
        seeds = (
            f"{_interval(r.seed_median_low, r.seed_median_high)}, {r.seed_interval_coverage:.0%}"
            if math.isfinite(getattr(r, "seed_interval_coverage", math.nan))
            else "–"
        )
        kind = getattr(r, "theory_kind", None)
        if not isinstance(kind, str):
            theory = "–"
        elif kind == edges.NO_THEORY:
            theory = "none (no fixed point when shuffled)"
        else:
            theory = f"{_num(r.theory_step_size, 4)} ({kind})"
        spread = (
            _interval(r.theory_min, r.theory_max)
            if math.isfinite(getattr(r, "theory_min", math.nan))
            else "–"
        )
        rows.append(
            (
                f"{r.batch_size}",
                r.order,
                r.event,
                found,
                seeds,
                theory,
                spread,
                _num(getattr(r, "worst_batch_bound", math.nan), 4),
            )
        )
    return _markdown_table(EDGE_HEADER, rows)


def _theory_words(row: Any) -> str:
    rho = format_radius(row.theory_spectral_radius)
    verdict = row.theory_verdict
    fixed = _num(row.theory_fixed_point_loss)
    if verdict == CONVERGES:
        return (
            f"Theory: converges (ρ(M) = {rho} < 1; the fixed point's loss {fixed} is within "
            "10× the optimum)"
        )
    if verdict == SETTLES_HIGH:
        return (
            f"Theory: settles high (ρ(M) = {rho} < 1: the loss stays finite and settles around "
            f"the epoch map's fixed point, loss {fixed}, far above the optimum)"
        )
    if verdict == DIVERGES:
        return f"Theory: diverges (ρ(M) = {rho} ≥ 1: the loss grows without bound)"
    return f"Theory: {verdict} (median ρ(M) = {rho})"


def _finding(row: Any, label: str | None = None, unit: str = "runs") -> str:
    """One sentence per table row, from the row's own numbers: what the runs did, what theory
    says, and whether they agree. `label`: the row's method as the table names it; `unit`: what
    the rows count (runs, or a table sweep's configs)."""
    name = f"**{label or method_short(row.method)}, step size {row.step_size:g}**"
    counts = outcome_counts(row)
    measured = (
        f"{row.runs} {unit}: {_tally(counts)}; median final loss "
        f"{_num(row.median_final_loss)} (optimum {_num(row.median_optimal_loss)})"
    )
    if row.theory_agrees == row.runs:
        agreement = f"All {unit} ended as theory says"
    else:
        agreement = f"{row.runs - row.theory_agrees} of {row.runs} {unit} ended otherwise"
    settled = counts.keys() & {STALLED, OSCILLATING}
    if settled and math.isfinite(row.theory_fixed_point_loss) and row.theory_fixed_point_loss > 0:
        ratio = row.median_final_loss / row.theory_fixed_point_loss
        agreement += f" (median final loss / predicted fixed-point loss = {_num(ratio, 2)})"
    return f"- {name}: {measured}. {_theory_words(row)}. {agreement}."


def _outcome_key() -> str:
    return (
        "Outcomes, from each run's own loss history (gdexp.outcome): "
        + "; ".join(f"*{o}*: {MEANINGS[o]}" for o in OUTCOMES)
        + "."
    )


def _thresholds(theory: pd.DataFrame) -> str:
    bgd = ", ".join(f"{v:.4g}" for v in np.unique(theory["bgd_threshold"].round(12)))
    sgd = ", ".join(f"{v:.4g}" for v in np.unique(theory["sgd_threshold"].round(12)))
    return (
        f"Theory's thresholds on these runs' data: BGD converges for step sizes below "
        f"2/λmax(H) = {bgd}; every single SGD step contracts below min 1/(xᵢ²+1) = {sgd}. "
        "Above the SGD threshold an epoch can still be stable as a whole (ρ(M) < 1): then SGD "
        "settles on the epoch map's fixed point, which at a large step size is far from the fit."
    )


@dataclass(frozen=True)
class Report:
    folder: Path
    report: Path
    summary_csv: Path
    summary_md: Path
    figures: dict[str, Path]
    edges_csv: Path | None = None  # a table sweep's edge table

    @property
    def files(self) -> list[Path]:
        edges_csv = [self.edges_csv] if self.edges_csv is not None else []
        return [self.report, self.summary_csv, self.summary_md, *edges_csv, *self.figures.values()]


def default_folder(runs: pd.DataFrame) -> Path:
    """reports/<sweep name, as a folder name>/, or reports/all/ for runs not from one sweep."""
    sweep = runs.attrs.get("sweep")
    if not sweep:
        return Path("reports") / "all"
    return Path("reports") / (re.sub(r"[^\w.-]+", "-", sweep["run_name"]).strip("-") or "sweep")


@dataclass(frozen=True)
class Edges:
    """A table sweep's edge table (`edges.edge_table`, or `edges.measured_edges` alone when
    theory cannot be computed), with what theory's side was computed on."""

    table: pd.DataFrame
    theory_seeds: list[int]  # the seeds whose data theory's edges are computed on (none: none)
    seeds: int  # the sweep's distinct seeds
    note: str = ""  # why theory's side is missing


def edge_report(runs: pd.DataFrame, max_seeds: int = edges.THEORY_MAX_SEEDS) -> Edges:
    """The measured edges of `runs` (every config) beside theory's (`edges.theory_edges` on the
    data of the smallest `max_seeds` seeds, at the batch sizes and orders the sweep ran; the
    shuffled estimate only if it ran shuffled configs), one row per (batch size, order, event).
    Theory's edges need one data setting (only the seed varying, `tables.DATA_COLUMNS`): with
    several, the measured edges alone, as the sweep itself writes its edges.csv."""
    from gdexp.theory import ESTIMATE

    seeds = sorted(int(s) for s in runs["seed"].unique())
    data = runs[list(tables.DATA_COLUMNS)].drop_duplicates()
    if len(data) != 1:
        varied = [c for c in tables.DATA_COLUMNS if data[c].nunique(dropna=False) > 1]
        note = f"theory's edges need one data setting; the sweep varies {', '.join(varied)}"
        return Edges(edges.measured_edges(runs), [], len(seeds), note)
    first = data.iloc[0]
    setting = (int(first["n_points"]), *(float(first[c]) for c in tables.DATA_COLUMNS[1:]))
    chosen = seeds[:max_seeds]
    batches = sorted(int(b) for b in runs["batch_size"].unique())
    shuffled = bool(runs["shuffle"].any())
    theory = edges.theory_edges(setting, chosen, batches, shuffled=ESTIMATE if shuffled else None)
    ran = {
        (int(b), edges.order_name(bool(v)))
        for b, v in runs[["batch_size", "shuffle"]].drop_duplicates().itertuples(index=False)
    }
    keep = [(int(b), o) in ran for b, o in zip(theory["batch_size"], theory["order"], strict=True)]
    table = edges.edge_table(runs, theory[keep].reset_index(drop=True))
    return Edges(table, chosen, len(seeds))


def write_report(
    runs: pd.DataFrame,
    folder: Path | str | None = None,
    histories: pd.DataFrame | None = None,
    theory: pd.DataFrame | None = None,
    dpi: int = 120,
) -> Report:
    """Write the figures (PNG), summary.csv, summary.md and report.md of `runs` into `folder`
    (default `default_folder(runs)`). Histories (loss, w, b) and theory are loaded / computed
    when not given.

    A table sweep's report (`is_table_sweep`) draws the phase map (phase_map.png) and writes the
    edge table (edges.csv, and in report.md) instead of the per-method figures, and loads no
    histories. Any report whose summary has more than `MAX_MARKDOWN_ROWS` rows shows one row per
    batch schedule in summary.md and report.md; summary.csv always has every row."""
    folder = Path(folder) if folder is not None else default_folder(runs)
    folder.mkdir(parents=True, exist_ok=True)
    table_sweep = is_table_sweep(runs)
    theory = tables.theory_table(runs) if theory is None else theory

    paths = {}
    found_edges = None
    edges_path = None
    if table_sweep:
        found_edges = edge_report(runs)
        edges_path = folder / EDGES_CSV
        edges_path.write_text(edges.edge_table_csv(found_edges.table), encoding="utf-8")
        made = {PHASE_MAP: figures.phase_map(runs, found_edges.table)}
    else:
        if histories is None:
            histories = load_histories(runs, keys=("loss", "w", "b"))
        made = {
            "loss_curves": figures.loss_curves(runs, histories),
            "step_size_map": figures.step_size_map(runs, theory),
            "parameter_path": figures.parameter_path(runs, histories, theory=theory),
        }
    for name, fig in made.items():
        paths[name] = folder / f"{name}.png"
        fig.savefig(paths[name], dpi=dpi)

    summary = summary_table(runs, theory)
    csv_path, md_path = folder / "summary.csv", folder / "summary.md"
    summary.to_csv(csv_path, index=False)
    unit = "configs" if table_sweep else "runs"
    if len(summary) > MAX_MARKDOWN_ROWS:
        table = schedule_markdown(schedule_table(summary), unit)
    else:
        table = summary_markdown(summary, unit)
    md_path.write_text(table, encoding="utf-8")

    report_path = folder / "report.md"
    text = _report_text(runs, summary, theory, table, found_edges)
    report_path.write_text(text, encoding="utf-8")
    return Report(folder, report_path, csv_path, md_path, paths, edges_path)


def _headline(runs: pd.DataFrame, summary: pd.DataFrame, unit: str) -> tuple[str, str, str]:
    """(title, source line, headline) of the report."""
    attrs = runs.attrs
    sweep = attrs.get("sweep")
    if sweep:
        title = f"# Gradient descent sweep: {sweep['run_name']}"
        kind = "Table sweep" if sweep.get("record") == RECORD_TABLE else "Sweep"
        source = (
            f"{kind} `{sweep.get('command') or '?'}`, MLflow parent run `{sweep['run_id']}` "
            f"({sweep.get('status')})"
        )
    else:
        title = "# Gradient descent runs: all runs"
        source = "All runs that are not sweep parents"
    where = f" in experiment `{attrs.get('experiment', '?')}` of `{attrs.get('tracking_uri', '?')}`"
    # The headline adds up the table's rows, so the two always agree.
    totals: dict[str, int] = {}
    for row in summary.itertuples():
        for outcome, n in outcome_counts(row).items():
            totals[outcome] = totals.get(outcome, 0) + n
    totals = {o: totals[o] for o in OUTCOMES if o in totals}
    failed = int(summary["failed"].sum())
    agree = int(summary["theory_agrees"].sum())
    n = len(runs)
    count = f"{n:,}" if unit == "configs" else f"{n}"
    headline = (
        f"{source}{where}: {count} {unit} ({_tally(totals)}; {failed} failed or killed); "
        f"{agree:,} of {count} ended as theory says."
    )
    return title, source, headline


def _grid_lines(runs: pd.DataFrame) -> list[str]:
    """A table sweep's grid (its axes) and, if it was interrupted, what its table holds."""
    sweep = runs.attrs.get("sweep") or {}
    lines = []
    axes = sweep.get("axes") or {}
    if axes:
        lines += ["Grid: " + "; ".join(f"`{k}`: {v}" for k, v in axes.items()) + ".", ""]
    if sweep.get("status") not in (None, "FINISHED", "RUNNING"):
        lines += [
            f"The sweep did not finish ({sweep.get('status')}): its table holds the "
            f"{len(runs):,} configs that did, and this report covers those alone.",
            "",
        ]
    return lines


def _edge_lines(found: Edges | None) -> list[str]:
    if found is None:
        return []
    lines = ["## Where each batch schedule stops converging", ""]
    if not found.theory_seeds:
        subset = f"not computed: {found.note}"
    elif len(found.theory_seeds) == found.seeds:
        subset = f"computed on the data of all {found.seeds} seeds"
    else:
        subset = (
            f"computed on the data of seeds {found.theory_seeds[0]}–{found.theory_seeds[-1]} "
            f"({len(found.theory_seeds)} of the sweep's {found.seeds} seeds: its cost grows "
            "faster than the seeds; in data order the divergence edge depends on x alone, the "
            "same for every seed, and only where a run settles high varies with a seed's noise)"
        )
    lines += [
        "Measured (gdexp.analysis.edges): the smallest step size at which at least half the "
        "seeds diverged, or did not converge (stalled, oscillating or diverged), with the grid "
        "interval it lies in and an interval for the median of the seeds' own edges. Theory "
        "(gdexp.theory): exact in data order (ρ(M) reaches 1; the fixed point's loss leaves "
        "the optimum), an estimate from sampled orders when shuffled, and the proven bound "
        f"below which no run diverges; {subset}. The same table is `edges.csv`.",
        "",
        edges_markdown(found.table),
    ]
    return lines


def _schedule_findings(summary: pd.DataFrame, found: Edges | None, unit: str) -> list[str]:
    """One sentence per batch schedule (the compact view's findings)."""
    table = found.table if found is not None else None
    by_key = (
        {}
        if table is None
        else {(int(r.batch_size), r.order, r.event): r for r in table.itertuples()}
    )
    lines = []
    for r in schedule_table(summary).itertuples():
        name = f"**{method_short(r.method)}, batch {r.batch_size}, {_order_word(r.shuffle)}**"
        counts = {o: getattr(r, o) for o in OUTCOMES if getattr(r, o)}
        text = (
            f"- {name}: {r.runs:,} {unit} at {r.step_sizes} step sizes "
            f"({r.step_size_min:g} – {r.step_size_max:g}): {_tally(counts)}. "
        )
        if r.theory_agrees == r.runs:
            text += "All ended as theory says."
        else:
            text += f"{r.runs - r.theory_agrees:,} of {r.runs:,} ended otherwise than theory says."
        for event in edges.EVENTS:
            edge = by_key.get((int(r.batch_size), edges.order_name(bool(r.shuffle)), event))
            if edge is None:
                continue
            measured = edge.measured_step_size
            kind = getattr(edge, "theory_kind", None)
            theory = getattr(edge, "theory_step_size", math.nan)
            if not isinstance(kind, str):
                said = "no theory computed"
            elif math.isnan(theory):
                said = "theory gives none"
            else:
                said = f"theory: {_num(theory, 4)}"

            where = (
                f"from step size {_num(measured, 4)}"
                if math.isfinite(measured)
                else "at no step size measured"
            )
            text += f" {event.capitalize()}: {where} ({said})."
        lines.append(text)
    return lines


def _report_text(
    runs: pd.DataFrame,
    summary: pd.DataFrame,
    theory: pd.DataFrame,
    table: str,
    found_edges: Edges | None = None,
) -> str:
    table_sweep = is_table_sweep(runs)
    unit = "configs" if table_sweep else "runs"
    title, _, headline = _headline(runs, summary, unit)
    compact = len(summary) > MAX_MARKDOWN_ROWS
    if compact:
        heading = "## Summary per batch schedule"
        about = (
            f"The full table, one row per method, batch size, order and step size "
            f"({len(summary):,} rows), is `summary.csv`; here its rows are added up per batch "
            "schedule."
        )
        findings = _schedule_findings(summary, found_edges, unit)
    else:
        heading = "## Summary per method and step size"
        about = (
            "Final w and b are mean ± sample sd over the runs. Theory (gdexp.theory) analyses "
            "one epoch as an affine map θ ↦ Mθ + c on each run's own data: ρ(M) < 1 means the "
            "run settles on the map's fixed point, whose loss is the predicted fixed-point "
            "loss; a run ends as theory says when it converged or is converging where theory "
            "says *converges*, stalled or oscillates where it says *settles high*, and diverged "
            "where it says *diverges*."
        )
        labels = schedule_labels(summary)
        findings = [
            _finding(row, label, unit)
            for label, row in zip(labels, summary.itertuples(), strict=True)
        ]
    lines = [
        title,
        "",
        headline,
        "",
        *(_grid_lines(runs) if table_sweep else []),
        heading,
        "",
        _outcome_key(),
        "",
        about,
        "",
        table,
        _thresholds(theory),
        "",
        *_edge_lines(found_edges),
        "## Findings",
        "",
        *findings,
        "",
        "## Figures",
        "",
    ]
    if table_sweep:
        lines += [
            f"### {PHASE_MAP_CAPTION}",
            "",
            f"![{PHASE_MAP_CAPTION}]({PHASE_MAP}.png)",
            "",
            "A table sweep's configs have no runs of their own: the per-run figures (loss "
            "curves, final loss against step size, parameter paths) are left out; the phase map "
            "shows every batch schedule at every step size instead.",
            "",
        ]
        lines += [
            "Files: `summary.csv` (the table, full precision), `summary.md`, `edges.csv`, and "
            "the PNG above.",
            "",
        ]
    else:
        for name, caption in FIGURES.items():
            lines += [f"### {caption}", "", f"![{caption}]({name}.png)", ""]
        lines += [
            "Files: `summary.csv` (the table, full precision), `summary.md`, and the PNGs above.",
            "",
        ]
    return "\n".join(lines)


def log_report(report: Report, parent_run_id: str, tracking_uri: str | None = None) -> None:
    """The report's files as artifacts of `parent_run_id`, under analysis/."""
    _, client = open_store(tracking_uri)
    for path in report.files:
        client.log_artifact(parent_run_id, str(path), ARTIFACT_DIR)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gdexp.analysis",
        description="Figures, a summary table and a Markdown report of a gdexp sweep from MLflow; "
        "logged as artifacts (analysis/) on the sweep's parent run.",
    )
    parser.add_argument("--experiment", default="gdexp", help="MLflow experiment (gdexp)")
    parser.add_argument(
        "--sweep",
        help="the sweep: its parent run id or run name, 'latest', or 'all' for every run that "
        "is not a sweep parent (default: latest if there is a sweep, else all)",
    )
    parser.add_argument(
        "--out", type=Path, help="output folder (default: reports/<sweep name or 'all'>/)"
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default="auto",
        help="read a sweep from its table (results.parquet on its parent run) or from its runs "
        "in MLflow; auto: the table when the sweep has one (the two give the same report)",
    )
    parser.add_argument(
        "--no-mlflow",
        action="store_true",
        help="do not log the report as artifacts on the sweep's parent run",
    )
    return parser


def _selection(experiment: str, sweep: str | None, tracking_uri: str | None) -> str | None:
    if sweep == "all":
        return None
    if sweep is not None:
        return sweep
    _, client = open_store(tracking_uri)
    try:
        find_sweep(client, get_experiment_id(client, experiment), LATEST)
    except SweepNotFound:
        return None
    return LATEST


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        sweep = _selection(args.experiment, args.sweep, args.tracking_uri)
        runs = load_runs(args.experiment, sweep, args.tracking_uri, source=args.source)
        histories = (
            None
            if is_table_sweep(runs)  # no per-run figures: no histories
            else load_histories(runs, keys=("loss", "w", "b"), source=args.source)
        )
        report = write_report(runs, args.out, histories=histories)
        parent = runs.attrs.get("sweep")
        if parent and not args.no_mlflow:
            log_report(report, parent["run_id"], runs.attrs["tracking_uri"])
    except AnalysisError as error:
        print(f"gdexp.analysis: error: {error}", file=sys.stderr)
        return 1
    print(f"Report of {len(runs)} {'configs' if is_table_sweep(runs) else 'runs'}: {report.report}")
    for path in report.files[1:]:
        print(f"  {path}")
    if parent and not args.no_mlflow:
        print(f"Logged to MLflow parent run {parent['run_id']} under {ARTIFACT_DIR}/")
    return 0
