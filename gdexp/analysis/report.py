"""A sweep's report: figures as PNG, a summary table (CSV and Markdown), and report.md.

`write_report` writes the files of a `load_runs` frame into a folder; `log_report` puts that
folder on the sweep's parent run as MLflow artifacts (under analysis/); `main` is
`python -m gdexp.analysis`.
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

from gdexp.analysis import figures, tables
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
from gdexp.names import method_short
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
FAILED_STATUSES = ("FAILED", "KILLED")
# The outcomes that agree with each of theory's verdicts.
AGREES = {
    CONVERGES: {CONVERGED, CONVERGING},
    SETTLES_HIGH: {STALLED, OSCILLATING},
    DIVERGES: {DIVERGED},
}
SUMMARY_COLUMNS = (
    "method",
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


def _verdict(verdicts: pd.Series) -> str:
    counts = verdicts.value_counts()
    if len(counts) == 1:
        return str(counts.index[0])
    return "mixed: " + ", ".join(f"{v} ({n})" for v, n in counts.items())


def summary_table(runs: pd.DataFrame, theory: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (method, step_size), methods in bgd, sgd, minibatch order (columns
    `SUMMARY_COLUMNS`).

    runs / seeds: how many runs and distinct seeds; one column per outcome (gdexp.outcome's
    OUTCOMES): the share of the runs with it (0-1); failed: runs FAILED or KILLED;
    median_final_loss over the runs (inf if most blew up) and the median least-squares loss;
    final w and b mean and sample sd; theory_*: gdexp.theory's verdict (one, or "mixed: ..." if
    seeds differ), the median predicted fixed-point loss (NaN where the epoch map is unstable)
    and spectral radius ρ(M), and theory_agrees: how many runs ended as their verdict says
    (`AGREES`).
    """
    theory = tables.theory_table(runs) if theory is None else theory
    verdicts = dict(zip(theory["run_id"], theory["verdict"], strict=True))
    theory = theory.set_index("run_id")
    rows = []
    for method in figures.methods_in(runs):
        of_method = runs[runs["method"] == method]
        for step_size, cell in of_method.groupby("step_size", sort=True):
            predicted = theory.loc[theory.index.intersection(cell["run_id"])]
            n = len(cell)
            stable = predicted[predicted["stable"]]
            agrees = sum(
                outcome in AGREES.get(verdicts.get(run_id), ())
                for run_id, outcome in zip(cell["run_id"], cell["outcome"], strict=True)
            )
            rows.append(
                {
                    "method": method,
                    "step_size": float(step_size),
                    "runs": n,
                    "seeds": cell["seed"].nunique(),
                    **{o: float((cell["outcome"] == o).sum()) / n for o in OUTCOMES},
                    "failed": int(cell["status"].isin(FAILED_STATUSES).sum()),
                    "median_final_loss": float(cell["final_loss"].median()),
                    "median_optimal_loss": float(cell["optimal_loss"].median()),
                    "final_w_mean": float(cell["final_w"].mean()),
                    "final_w_sd": float(cell["final_w"].std()),
                    "final_b_mean": float(cell["final_b"].mean()),
                    "final_b_sd": float(cell["final_b"].std()),
                    "theory_verdict": _verdict(predicted["verdict"]) if len(predicted) else "",
                    "theory_fixed_point_loss": (
                        float(stable["fixed_point_loss"].median()) if len(stable) else math.nan
                    ),
                    "theory_spectral_radius": float(predicted["spectral_radius"].median()),
                    "theory_agrees": int(agrees),
                }
            )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


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
    return ", ".join(f"{n} {o}" for o, n in counts.items()) or "no outcome"


def summary_markdown(summary: pd.DataFrame) -> str:
    header = (
        "Method",
        "Step size",
        "Runs",
        "Outcomes",
        "Median final loss",
        "Final w (mean ± sd)",
        "Final b (mean ± sd)",
        "Theory (ρ)",
        "Theory fixed-point loss",
        "Runs as theory says",
    )
    rows = [
        (
            method_short(r.method),
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
        for r in summary.itertuples()
    ]
    return _markdown_table(header, rows)


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


def _finding(row: Any) -> str:
    """One sentence per table row, from the row's own numbers: what the runs did, what theory
    says, and whether they agree."""
    name = f"**{method_short(row.method)}, step size {row.step_size:g}**"
    counts = outcome_counts(row)
    measured = (
        f"{row.runs} runs: {_tally(counts)}; median final loss {_num(row.median_final_loss)} "
        f"(optimum {_num(row.median_optimal_loss)})"
    )
    if row.theory_agrees == row.runs:
        agreement = "All runs ended as theory says"
    else:
        agreement = f"{row.runs - row.theory_agrees} of {row.runs} runs ended otherwise"
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

    @property
    def files(self) -> list[Path]:
        return [self.report, self.summary_csv, self.summary_md, *self.figures.values()]


def default_folder(runs: pd.DataFrame) -> Path:
    """reports/<sweep name, as a folder name>/, or reports/all/ for runs not from one sweep."""
    sweep = runs.attrs.get("sweep")
    if not sweep:
        return Path("reports") / "all"
    return Path("reports") / (re.sub(r"[^\w.-]+", "-", sweep["run_name"]).strip("-") or "sweep")


def write_report(
    runs: pd.DataFrame,
    folder: Path | str | None = None,
    histories: pd.DataFrame | None = None,
    theory: pd.DataFrame | None = None,
    dpi: int = 120,
) -> Report:
    """Write the figures (PNG), summary.csv, summary.md and report.md of `runs` into `folder`
    (default `default_folder(runs)`). Histories (loss, w, b) and theory are loaded / computed
    when not given."""
    folder = Path(folder) if folder is not None else default_folder(runs)
    folder.mkdir(parents=True, exist_ok=True)
    if histories is None:
        histories = load_histories(runs, keys=("loss", "w", "b"))
    theory = tables.theory_table(runs) if theory is None else theory

    made = {
        "loss_curves": figures.loss_curves(runs, histories),
        "step_size_map": figures.step_size_map(runs, theory),
        "parameter_path": figures.parameter_path(runs, histories, theory=theory),
    }
    paths = {}
    for name, fig in made.items():
        paths[name] = folder / f"{name}.png"
        fig.savefig(paths[name], dpi=dpi)

    summary = summary_table(runs, theory)
    csv_path, md_path = folder / "summary.csv", folder / "summary.md"
    summary.to_csv(csv_path, index=False)
    table = summary_markdown(summary)
    md_path.write_text(table, encoding="utf-8")

    report_path = folder / "report.md"
    report_path.write_text(_report_text(runs, summary, theory, table), encoding="utf-8")
    return Report(folder, report_path, csv_path, md_path, paths)


def _report_text(
    runs: pd.DataFrame, summary: pd.DataFrame, theory: pd.DataFrame, table: str
) -> str:
    attrs = runs.attrs
    sweep = attrs.get("sweep")
    if sweep:
        title = f"# Gradient descent sweep: {sweep['run_name']}"
        source = (
            f"Sweep `{sweep.get('command') or '?'}`, MLflow parent run `{sweep['run_id']}` "
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
    lines = [
        title,
        "",
        f"{source}{where}: {len(runs)} runs ({_tally(totals)}; {failed} failed or killed); "
        f"{agree} of {len(runs)} ended as theory says.",
        "",
        "## Summary per method and step size",
        "",
        _outcome_key(),
        "",
        "Final w and b are mean ± sample sd over the runs. Theory (gdexp.theory) analyses one "
        "epoch as an affine map θ ↦ Mθ + c on each run's own data: ρ(M) < 1 means the run "
        "settles on the map's fixed point, whose loss is the predicted fixed-point loss; a run "
        "ends as theory says when it converged or is converging where theory says *converges*, "
        "stalled or oscillates where it says *settles high*, and diverged where it says "
        "*diverges*.",
        "",
        table,
        _thresholds(theory),
        "",
        "## Findings",
        "",
        *(_finding(row) for row in summary.itertuples()),
        "",
        "## Figures",
        "",
    ]
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
        histories = load_histories(runs, keys=("loss", "w", "b"), source=args.source)
        report = write_report(runs, args.out, histories=histories)
        parent = runs.attrs.get("sweep")
        if parent and not args.no_mlflow:
            log_report(report, parent["run_id"], runs.attrs["tracking_uri"])
    except AnalysisError as error:
        print(f"gdexp.analysis: error: {error}", file=sys.stderr)
        return 1
    print(f"Report of {len(runs)} runs: {report.report}")
    for path in report.files[1:]:
        print(f"  {path}")
    if parent and not args.no_mlflow:
        print(f"Logged to MLflow parent run {parent['run_id']} under {ARTIFACT_DIR}/")
    return 0
