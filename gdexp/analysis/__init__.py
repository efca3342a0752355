"""Analysis of gdexp runs tracked in MLflow: load them as frames, plot them, report on a sweep.

    from gdexp.analysis import load_runs, load_histories, loss_curves
    runs = load_runs(sweep="latest")
    loss_curves(runs, load_histories(runs)).savefig("loss.png")

A sweep is read from its table (results.parquet on its parent run) in one download, anything
else through MLflow's public API (gdexp.analysis.load). `python -m gdexp.analysis` writes the
whole report (see gdexp.analysis.report).
"""

from gdexp.analysis.figures import loss_curves, parameter_path, step_size_map
from gdexp.analysis.load import (
    AnalysisError,
    ExperimentNotFound,
    NoRuns,
    StoreNotFound,
    SweepNotFound,
    load_histories,
    load_runs,
    run_config,
)
from gdexp.analysis.report import Report, log_report, summary_table, write_report
from gdexp.analysis.tables import sgd_theory_curve, theory_table

__all__ = [
    "AnalysisError",
    "ExperimentNotFound",
    "NoRuns",
    "Report",
    "StoreNotFound",
    "SweepNotFound",
    "load_histories",
    "load_runs",
    "log_report",
    "loss_curves",
    "parameter_path",
    "run_config",
    "sgd_theory_curve",
    "step_size_map",
    "summary_table",
    "theory_table",
    "write_report",
]
