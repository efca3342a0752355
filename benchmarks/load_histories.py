"""How long loading metric histories takes: gdexp.analysis.load_histories vs the naive loop.

    python benchmarks/load_histories.py [--runs 1000] [--epochs 20] [--server]

Builds a temporary SQLite store with RUNS runs of EPOCHS epochs (loss, w and b per epoch, logged
with MlflowClient.log_batch), then times loading the `loss` history of every run four ways:
the naive loop of one `MlflowClient.get_metric_history` call per run, load_histories on a thread
pool (what it does for stores without SQL tables, e.g. a server), load_histories with the SQL
store's own bulk query (MLflow's `get_metric_history_bulk`, 500 runs at a time), and
load_histories' default for SQL stores (one query on MLflow's metrics table per 500 runs). Each
result is checked against the naive one.

With --server it also serves the store with `mlflow server` on a free local port and times the
naive loop and the thread pool over HTTP (a REST store has no bulk history query).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from gdexp.analysis.load import load_histories


def build_store(folder: Path, n_runs: int, epochs: int) -> tuple[str, list[str]]:
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("bench")
    now = int(time.time() * 1000)
    run_ids = []
    for i in range(n_runs):
        run_id = client.create_run(experiment_id, run_name=f"run {i}").info.run_id
        metrics = [
            Metric(key, value, now, step)
            for step in range(epochs)
            for key, value in (("loss", 100.0 / (step + 1) + i), ("w", -step), ("b", step))
        ]
        client.log_batch(run_id, metrics=metrics, params=[Param("seed", str(i))], synchronous=True)
        run_ids.append(run_id)
    return uri, run_ids


def naive(uri: str, run_ids: list[str]) -> pd.DataFrame:
    client = MlflowClient(uri)
    rows = [
        (run_id, "loss", m.step, m.value)
        for run_id in run_ids
        for m in client.get_metric_history(run_id, "loss")
    ]
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


def timed(label: str, fn, reference: pd.DataFrame | None = None) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    frame = fn()
    seconds = time.perf_counter() - start
    if reference is not None:
        expected = reference.sort_values(["run_id", "step"]).reset_index(drop=True)
        got = frame.sort_values(["run_id", "step"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    print(f"  {label:<42} {seconds:7.3f} s  ({len(frame):,} points)")
    return seconds, frame


@contextmanager
def mlflow_server(store_uri: str) -> Iterator[str]:
    """`mlflow server` on the store, on a free local port; its address while the block runs."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", store_uri, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: its workers stop with it
    )
    address = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{address}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("mlflow server did not start within a minute")
        yield address
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--server", action="store_true", help="also time it over HTTP")
    args = parser.parse_args()
    logging.getLogger("alembic").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        uri, run_ids = build_store(Path(tmp), args.runs, args.epochs)
        print(
            f"Store: {args.runs} runs x {args.epochs} epochs (loss, w, b) in "
            f"{time.perf_counter() - start:.1f} s. Loading the loss history of every run:"
        )
        # Warm up: the first client on a store pays for MLflow's schema check once.
        load_histories(run_ids[:1], tracking_uri=uri)
        t_naive, reference = timed("naive: get_metric_history per run", lambda: naive(uri, run_ids))
        t_threads, _ = timed(
            "load_histories, thread pool (8 workers)",
            lambda: load_histories(run_ids, tracking_uri=uri, bulk=False),
            reference,
        )
        t_bulk, _ = timed(
            "load_histories, MLflow's bulk query",
            lambda: load_histories(run_ids, tracking_uri=uri, bulk=True),
            reference,
        )
        t_sql, _ = timed(
            "load_histories, SQL tables (default)",
            lambda: load_histories(run_ids, tracking_uri=uri),
            reference,
        )
        print(
            f"Speed-up over the naive loop: SQL tables {t_naive / t_sql:.1f}x, "
            f"bulk query {t_naive / t_bulk:.1f}x, thread pool {t_naive / t_threads:.1f}x."
        )
        if args.server:
            with mlflow_server(uri) as address:
                print(f"Over HTTP ({address}, mlflow server on the same store):")
                load_histories(run_ids[:1], tracking_uri=address)
                t_naive, reference = timed(
                    "naive: get_metric_history per run", lambda: naive(address, run_ids)
                )
                t_threads, _ = timed(
                    "load_histories, thread pool (8 workers)",
                    lambda: load_histories(run_ids, tracking_uri=address),
                    reference,
                )
                print(f"Speed-up over the naive loop: thread pool {t_naive / t_threads:.1f}x.")


if __name__ == "__main__":
    main()
