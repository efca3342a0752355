"""Every name gdexp writes where others read it: MLflow tags, params, metrics and artifacts,
environment variables, and the display names of methods. One home each; imported everywhere else.

Nothing heavy is imported here (nor anywhere this module is imported from at start-up).
"""

from __future__ import annotations

# --- MLflow's own tags -----------------------------------------------------------------------
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # the run's description on its page
GIT_COMMIT_TAG = "mlflow.source.git.commit"

# --- gdexp's tags on a run ---------------------------------------------------------------------
OUTCOME_TAG = "outcome"
OUTCOME_REASON_TAG = "outcome_reason"  # the rule that decided the outcome, with its numbers
ERROR_TAG = "error"
OVERRIDES_TAG = "overrides"
COMMAND_TAG = "command"
CONFIG_HASH_TAG = "gdexp.config_hash"  # the resolved config, less where it is tracked
CODE_TAG = "gdexp.code"  # fingerprint of the code that made the numbers
GIT_DIRTY_TAG = "gdexp.git_dirty"
VERSION_TAG_PREFIX = "versions."

# --- gdexp's tags on a sweep's parent run ------------------------------------------------------
KIND_TAG = "gdexp.kind"
SWEEP_KIND = "sweep"
SWEEP_HASH_TAG = "gdexp.sweep_hash"  # the sweep's grid of configs and its code
SWEEP_DIR_TAG = "sweep_dir"
SWEEPER_TAG = "sweeper"
N_RUNS_TAG = "n_runs"
GRID_TAG_PREFIX = "grid."
FAILED_RUNS_TAG = "failed_runs"
KILLED_RUNS_TAG = "killed_runs"
SUPERSEDED_BY_TAG = "gdexp.superseded_by"  # on an attempt that a resume re-ran
REUSED_RUNS_TAG = "reused_runs"
RUNS_TAG_PREFIX = "runs_"  # runs_<outcome>: how many runs of the sweep ended so
BEST_RUN_TAG = "best.run_id"
BEST_PARAM_TAG_PREFIX = "best."  # best.step_size, best.final_loss ...
# How a sweep records its configs (tracking.record): a child run each, or rows of its table only.
RECORD_TAG = "gdexp.record"
RECORD_RUNS = "runs"
RECORD_TABLE = "table"
# On a table sweep's parent: each swept key's values as a param, the outcomes counted as metrics.
AXIS_PARAM_PREFIX = "axis."  # axis.step_size = "100 values, 0.001 ... 1"
CONFIGS_METRIC_PREFIX = "configs_"  # configs_<outcome>, configs_total

# --- artifacts ---------------------------------------------------------------------------------
CONFIG_ARTIFACT = "config.yaml"
SWEEP_RUNS_ARTIFACT = "sweep_runs.json"  # on a sweep's parent: every run of the sweep
TABLE_ARTIFACT = "results.parquet"  # on a sweep's parent: a row per config (gdexp.table)
EDGES_ARTIFACT = "edges.csv"  # on a table sweep's parent: measured and theory's step-size edges
PHASE_MAP_ARTIFACT = "phase_map.png"  # on a table sweep's parent: the phase-map figure
SWEEP_MANIFEST = ".gdexp-sweep.json"  # in a sweep's folder: where its jobs log (gdexp.sweep)
# Held (flock) by the process running a sweep, so a second sweep cannot share its folder.
SWEEP_LOCK = ".gdexp-sweep.lock"
# Left in a sweep's folder when its process is asked to stop: jobs in other processes stop too.
STOP_MARKER = ".gdexp-stop"

# --- metrics -----------------------------------------------------------------------------------
LOSS_METRIC = "loss"
STEP_LOSS_METRIC = "step_loss"
STEP_SIZE_METRIC = "step_size"
FINAL_METRICS = ("initial_loss", "final_loss", "final_w", "final_b", "optimal_loss")
DIVERGED_AT_METRIC = "diverged_at_epoch"

# --- environment -------------------------------------------------------------------------------
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"

# --- methods -----------------------------------------------------------------------------------
METHOD_ORDER = ("bgd", "sgd", "minibatch")
METHOD_TITLES = {
    "bgd": "Batch Gradient Descent",
    "sgd": "Stochastic Gradient Descent",
    "minibatch": "Mini-batch Gradient Descent",
}
METHOD_SHORT = {"bgd": "BGD", "sgd": "SGD", "minibatch": "Mini-batch"}
METHOD_WORDS = {"bgd": "batch GD", "sgd": "stochastic GD", "minibatch": "mini-batch GD"}


def method_title(method: str) -> str:
    return METHOD_TITLES.get(method, method)


def method_short(method: str) -> str:
    return METHOD_SHORT.get(method, method)


def method_words(method: str) -> str:
    return METHOD_WORDS.get(method, method)
