"""The one seam between gdexp and MLflow: where runs go, how they open and close, what they log.

Everything is logged through `MlflowClient.log_batch` in chunks MLflow accepts (1,000 metrics,
100 params, 100 tags a call), so a run costs a handful of calls however long its history is.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from gdexp.outcome import RunSummary
from gdexp.train import Trajectory

# Set by the sweeper for the jobs of a multirun: the sweep's parent run and its store.
SWEEP_RUN_ID_ENV = "GDEXP_SWEEP_RUN_ID"
SWEEP_TRACKING_URI_ENV = "GDEXP_SWEEP_TRACKING_URI"

CONFIG_HASH_TAG = "gdexp.config_hash"
SWEEP_HASH_TAG = "gdexp.sweep_hash"
SWEEP_RUNS_ARTIFACT = "sweep_runs.json"  # on a sweep's parent: every run of the sweep
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Settings that say where and how a run is tracked, not what it computes.
_NOT_IDENTITY = ("uri", "experiment", "enabled", "resume", "retry_seconds")

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
NOTE_TAG = "mlflow.note.content"
PARENT_TAG = "mlflow.parentRunId"


def resolve_tracking_uri(configured: str | None = None) -> str:
    """`configured`, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db; local paths made
    absolute, so every job of a sweep writes to the same store wherever it runs."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if path != ":memory:" and not Path(path).is_absolute():
            return f"sqlite:///{Path(path).resolve()}"
        return uri
    if "://" not in uri:  # a bare folder: MLflow's file store
        return Path(uri).resolve().as_uri()
    return uri


class TrackingUnavailable(CompactHydraException):
    """The MLflow store cannot be reached or written; said in one line, before any training."""


def command_line() -> str:
    return "python -m gdexp " + shlex.join(sys.argv[1:])


@functools.cache
def provenance_tags() -> dict[str, str]:
    """What made a run: the project's commit (and whether it had uncommitted changes), the
    command, and the versions that matter for its numbers."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "mlflow.source.git.commit": commit or "unknown",
        "gdexp.git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
        "command": command_line(),
        "versions.python": platform.python_version(),
        **{f"versions.{p}": version(p) for p in ("torch", "hydra-core", "mlflow", "gdexp")},
    }


def config_hash(cfg: DictConfig) -> str:
    """A run's identity for resuming: its resolved config, less where it is tracked."""
    tree = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    tree.pop("hydra", None)
    for key in _NOT_IDENTITY:
        tree.get("tracking", {}).pop(key, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:32]


def configure_retries(retry_seconds: float) -> None:
    """Bound how long MLflow's HTTP client retries a server that does not answer: exponential
    backoff 1, 2, 4, ... s, as many retries as fit in `retry_seconds`."""
    retries = 0
    while 2 ** (retries + 1) - 1 <= retry_seconds:
        retries += 1
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(min(max(retry_seconds, 5), 30)))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, the dotted keys Hydra overrides use."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store live beside it, in mlruns/<experiment>/ (MLflow's default
    is ./mlruns of whatever folder the experiment happened to be created from)."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None  # a server or database decides for itself
    folder = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns" / folder).as_uri()


@contextlib.contextmanager
def _sqlite_setup_lock(uri: str) -> Iterator[None]:
    """Holds an exclusive lock on a SQLite store's folder while the store is opened: MLflow
    creates and migrates a new database on first use, and two processes doing that at once
    (two sweeps started together) corrupt its schema."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        yield
        return
    import fcntl

    folder = Path(uri.removeprefix("sqlite:///")).parent
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # no such folder: opening the store will say so
        yield
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _check_server(uri: str, wait_seconds: float = 0.0) -> None:
    """Fail in one line when nothing answers at a server address, at once or after waiting up to
    `wait_seconds` for it to come back (MLflow's own client would retry for minutes first)."""
    import requests

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=10)
            return
        except requests.RequestException as error:
            if time.monotonic() >= deadline:
                raise TrackingUnavailable(
                    f"Cannot reach the MLflow tracking server at {uri}: {type(error).__name__}. "
                    "Is it running? (`mlflow server --host ... --port ...`)"
                ) from error
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0)))


def finite_metrics(
    key: str, values: Iterable[float], first_step: int = 0, timestamp: int | None = None
) -> list[Metric]:
    """One Metric per finite value, at steps first_step, first_step + 1, ...; non-finite values
    are left out (MLflow stores inf as ±1.8e308, and a NaN breaks its run page)."""
    timestamp = timestamp if timestamp is not None else int(time.time() * 1000)
    return [
        Metric(key, float(value), timestamp, step)
        for step, value in enumerate(values, start=first_step)
        if math.isfinite(value)
    ]


def config_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as MLflow params with dotted keys (method.batch_size, data.slope...)."""
    return flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


def result_metrics(
    trajectory: Trajectory, summary: RunSummary, log_step_loss: bool
) -> list[Metric]:
    """A run's history and final figures. Steps count epochs done: `loss` at step k is measured
    after k epochs (before epoch k's updates), `w` and `b` at step k after k epochs. `step_loss`
    is at the global update index."""
    now = int(time.time() * 1000)
    metrics = (
        finite_metrics("loss", trajectory.epoch_loss, 0, now)
        + finite_metrics("w", trajectory.w, 1, now)
        + finite_metrics("b", trajectory.b, 1, now)
    )
    if log_step_loss:
        metrics += finite_metrics("step_loss", trajectory.step_loss, 0, now)
    finals = {
        "initial_loss": summary.initial_loss,
        "final_loss": summary.final_loss,
        "final_w": summary.final_w,
        "final_b": summary.final_b,
        "optimal_loss": summary.optimal_loss,
    }
    if summary.diverged_at_epoch is not None:
        finals["diverged_at_epoch"] = summary.diverged_at_epoch
    for key, value in finals.items():
        metrics += finite_metrics(key, [value], 0, now)
    return metrics


class Tracker:
    """An MLflow store and experiment that runs are logged to."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        client: MlflowClient | None = None,
        wait_for_server: float = 0.0,
    ) -> None:
        """`wait_for_server`: how long to wait for a tracking server that does not answer (jobs
        of a running sweep wait out a restart; a command that is starting fails at once)."""
        self.uri = uri
        self._artifact_uris: dict[str, str] = {}
        if uri.startswith(("http://", "https://")):
            _check_server(uri, wait_for_server)
        try:
            with _sqlite_setup_lock(uri):
                self.client = client or MlflowClient(tracking_uri=uri)
                self.experiment_id = self._ensure_experiment(experiment)
        except Exception as error:
            lines = str(error).strip().splitlines()
            reason = lines[0] if lines else type(error).__name__
            raise TrackingUnavailable(f"Cannot use the MLflow store {uri}: {reason}") from error

    def _ensure_experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            experiment_id = self.client.create_experiment(
                name, artifact_location=_artifact_location(self.uri, name)
            )
        except Exception:  # another process created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id
        # Model-training work, not GenAI: the MLflow UI then offers the runs table first.
        self.client.set_experiment_tag(
            experiment_id, "mlflow.experimentKind", "custom_model_development"
        )
        return experiment_id

    def start_run(
        self, name: str, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str:
        all_tags = {**provenance_tags(), **(tags or {})}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        self._artifact_uris[run.info.run_id] = run.info.artifact_uri
        return run.info.run_id

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """`MlflowClient.log_text`, minus its lookup of the run: for a run this tracker created
        in a local artifact store the file is written straight to the run's artifact folder."""
        uri = self._artifact_uris.get(run_id, "")
        local = uri.startswith("file://") or (uri.startswith("/") and "://" not in uri)
        if not local:
            self.client.log_text(run_id, text, artifact_file)
            return
        folder = Path(uri.removeprefix("file://"))
        target = folder / artifact_file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    def log(
        self,
        run_id: str,
        params: Mapping[str, Any] | None = None,
        metrics: list[Metric] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Params, metrics and tags in as few `log_batch` calls as MLflow's limits allow."""
        metrics = metrics or []
        param_list = [Param(k, str(v)) for k, v in (params or {}).items()]
        tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        calls = max(
            math.ceil(len(metrics) / MAX_METRICS_PER_BATCH),
            math.ceil(len(param_list) / MAX_PARAMS_PER_BATCH),
            math.ceil(len(tag_list) / MAX_TAGS_PER_BATCH),
        )
        for i in range(calls):
            self.client.log_batch(
                run_id,
                metrics=metrics[i * MAX_METRICS_PER_BATCH : (i + 1) * MAX_METRICS_PER_BATCH],
                params=param_list[i * MAX_PARAMS_PER_BATCH : (i + 1) * MAX_PARAMS_PER_BATCH],
                tags=tag_list[i * MAX_TAGS_PER_BATCH : (i + 1) * MAX_TAGS_PER_BATCH],
                synchronous=True,
            )

    def end_run(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def search(self, filter_string: str) -> list:
        """Every run of the experiment that matches, all pages."""
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string, max_results=10_000, page_token=token
            )
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def finished_configs(self) -> dict[str, Any]:
        """FINISHED runs by config hash: what a resumed sweep need not run again."""
        runs = self.search("attributes.status = 'FINISHED'")
        return {r.data.tags[CONFIG_HASH_TAG]: r for r in runs if CONFIG_HASH_TAG in r.data.tags}

    def kill_unfinished_children(self, parent_run_id: str) -> int:
        """Mark KILLED the runs of a sweep still RUNNING (jobs a launcher tore down)."""
        running = self.search(
            f"tags.`{PARENT_TAG}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
        )
        for run in running:
            self.end_run(run.info.run_id, "KILLED")
        return len(running)

    @contextlib.contextmanager
    def run(
        self, name: str, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> Iterator[str]:
        """A run that is always closed: FINISHED, FAILED (with the error as a tag) or KILLED."""
        run_id = self.start_run(name, parent_run_id, tags)
        status = "FAILED"
        try:
            yield run_id
            status = "FINISHED"
        except (KeyboardInterrupt, SystemExit):
            status = "KILLED"
            raise
        except Exception as error:
            with contextlib.suppress(Exception):  # the store itself may be what failed
                self.client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:5000])
            raise
        finally:
            try:
                self.end_run(run_id, status)
            except Exception as error:
                if status == "FINISHED":
                    raise
                # Do not hide why the run stopped behind why it could not be closed; a run left
                # RUNNING is run again by the next resume.
                logging.getLogger(__name__).error(
                    "Could not mark run %s %s: %s", run_id, status, str(error).splitlines()[0]
                )

    def ui_hint(self) -> str:
        """Where to look: the address, and for a local store the command that serves it."""
        if self.uri.startswith(("http://", "https://")):
            return f"MLflow UI: {self.ui_address()}"
        if self.uri == resolve_tracking_uri("sqlite:///mlflow.db"):
            server = "`mlflow ui` here"
        else:
            server = f"`mlflow ui --backend-store-uri {self.uri}`"
        return f"MLflow UI (run {server}): {self.ui_address()}"

    def ui_address(self, base: str = "http://127.0.0.1:5000") -> str:
        """The runs table of this experiment in the MLflow UI's model-training view."""
        if self.uri.startswith(("http://", "https://")):
            base = self.uri.rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"


def log_run_config(
    tracker: Tracker,
    run_id: str,
    cfg: DictConfig,
    metrics: list[Metric] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """What the run is, logged before it trains, so that a run that fails still shows it; runs
    trained before they are logged (batched sweeps) pass their result along, in the same batch."""
    tracker.log(
        run_id,
        params=config_params(cfg),
        # params are strings; step_size as a metric sorts and filters numerically
        metrics=finite_metrics("step_size", [cfg.step_size]) + (metrics or []),
        tags=tags,
    )
    tracker.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")


def log_whole_run(
    tracker: Tracker,
    run_id: str,
    cfg: DictConfig,
    trajectory: Trajectory,
    summary: RunSummary,
    description: str,
) -> None:
    """`log_run_config` and `log_run_result` in one batch: the same params, metrics, tags and
    artifact, in fewer calls."""
    log_run_config(
        tracker,
        run_id,
        cfg,
        metrics=result_metrics(trajectory, summary, cfg.tracking.log_step_loss),
        tags=result_tags(summary, description),
    )


def result_tags(summary: RunSummary, description: str) -> dict[str, str]:
    return {"outcome": summary.outcome, NOTE_TAG: description}


def log_run_result(
    tracker: Tracker,
    run_id: str,
    trajectory: Trajectory,
    summary: RunSummary,
    description: str,
    log_step_loss: bool = True,
) -> None:
    tracker.log(
        run_id,
        metrics=result_metrics(trajectory, summary, log_step_loss),
        tags=result_tags(summary, description),
    )
