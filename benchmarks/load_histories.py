"""How long reading a sweep takes: from its table (results.parquet) against MLflow's public API.

    python benchmarks/load_histories.py [--runs 1000] [--epochs 20] [--store DIR] [--server]

Builds a sweep of RUNS SGD runs (seeds 0..RUNS-1, EPOCHS epochs, the batched launcher, epoch
metrics only) with gdexp itself in a SQLite store (in DIR, reused on the next call, or a
temporary folder), then times, in this process:

- `load_runs(sweep="latest")` from the sweep's table (one artifact download and one search for
  the runs' names and start times) and from MLflow's runs (`search_runs`, page by page);
- the loss, w and b histories of every run: `load_histories` from the table, `load_histories`
  through MLflow's API (`get_metric_history` per run and key on a thread pool), and the naive
  loop of one `get_metric_history` call after another.

Each frame is checked against the other source's. With --server it serves the store with
`mlflow server` on a free local port and times the same over HTTP. A first, untimed-in-the-ratios
`load_runs` warms the store (and the server's workers): it is printed as the warm-up line.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from gdexp.analysis.load import load_histories, load_runs, open_store

KEYS = ("loss", "w", "b")


def build_store(folder: Path, n_runs: int, epochs: int) -> str:
    """A sweep of n_runs runs into folder/mlflow.db, unless the folder holds one already."""
    uri = f"sqlite:///{folder}/mlflow.db"
    if (folder / "mlflow.db").exists():
        print(f"Reusing the store in {folder}.")
        return uri
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "gdexp", "-m", "hydra/launcher=batched",
        "tracking.log_step_loss=false", "method=sgd", "step_size=0.01",
        f"seed=range(0,{n_runs})", f"epochs={epochs}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GDEXP_"))}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"building the store failed:\n{done.stderr[-3000:]}")
    print(f"Built a {n_runs}-run sweep in {folder} in {time.perf_counter() - start:.1f} s.")
    return uri


def naive(uri: str, run_ids: list[str]) -> pd.DataFrame:
    client = MlflowClient(uri)
    rows = [
        (run_id, key, m.step, m.value)
        for run_id in run_ids
        for key in KEYS
        for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    ]
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


def timed(label: str, fn: Callable[[], pd.DataFrame]) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    frame = fn()
    seconds = time.perf_counter() - start
    print(f"  {label:<50} {seconds:7.3f} s  ({len(frame):,} rows)")
    return seconds, frame


def compare(uri: str) -> None:
    open_store(uri)  # the first client on a store pays for MLflow's schema check: not timed
    # The first search of a store (or of a fresh server's worker) costs several times the next
    # one: shown, then left out of the comparison.
    timed(
        "warm-up: load_runs through MLflow's API, cold",
        lambda: load_runs(sweep="latest", tracking_uri=uri, source="runs"),
    )
    t_table_runs, runs = timed(
        "load_runs from the table", lambda: load_runs(sweep="latest", tracking_uri=uri)
    )
    assert runs.attrs["source"] == "table", runs.attrs
    t_api_runs, api_runs = timed(
        "load_runs through MLflow's API",
        lambda: load_runs(sweep="latest", tracking_uri=uri, source="runs"),
    )
    pd.testing.assert_frame_equal(runs, api_runs)
    t_table, from_table = timed(
        "load_histories (loss, w, b) from the table", lambda: load_histories(runs, keys=KEYS)
    )
    t_api, from_api = timed(
        "load_histories through MLflow's API (8 threads)",
        lambda: load_histories(runs, keys=KEYS, source="runs"),
    )
    pd.testing.assert_frame_equal(from_table, from_api)
    t_naive, from_naive = timed(
        "naive: get_metric_history per run and key", lambda: naive(uri, list(runs["run_id"]))
    )
    pd.testing.assert_frame_equal(from_naive, from_table, check_dtype=False)
    print(
        f"  Runs and histories: table {t_table_runs + t_table:.2f} s, MLflow's API "
        f"{t_api_runs + t_api:.2f} s ({(t_api_runs + t_api) / (t_table_runs + t_table):.1f}x); "
        f"histories: table {t_naive / t_table:.0f}x, thread pool {t_naive / t_api:.1f}x faster "
        "than the naive loop."
    )


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
    parser.add_argument("--store", type=Path, help="keep the store here and reuse it")
    parser.add_argument("--server", action="store_true", help="also time it over HTTP")
    args = parser.parse_args()
    logging.getLogger("alembic").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        uri = build_store(args.store or Path(tmp), args.runs, args.epochs)
        print(f"Reading the sweep ({args.runs} runs x {args.epochs} epochs) from {uri}:")
        compare(uri)
        if args.server:
            with mlflow_server(uri) as address:
                print(f"Over HTTP ({address}, mlflow server on the same store):")
                compare(address)


if __name__ == "__main__":
    main()
