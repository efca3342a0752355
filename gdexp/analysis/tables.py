"""What follows from the runs' data and settings, as frames: gdexp.theory's prediction and the
least-squares fit per run, and SGD's predicted fixed-point loss between the swept step sizes.

Computed here, once per distinct data set and (data, batches, order), so that the figures only
draw: `figures` takes these frames and computes no fit or theory of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

THEORY_COLUMNS = (
    "run_id",
    "method",
    "step_size",
    "seed",
    "batch_size",
    "bgd_threshold",
    "sgd_threshold",
    "spectral_radius",
    "transient_gain",
    "fixed_point_w",
    "fixed_point_b",
    "fixed_point_loss",
    "stable",
    "verdict",
    # the least-squares fit on the run's data, and the data's moments (the loss surface:
    # L(w, b) = w²·xx + 2wb·x + b² − 2w·xy − 2b·y + yy, each a mean over the samples)
    "fit_w",
    "fit_b",
    "fit_loss",
    "mean_xx",
    "mean_x",
    "mean_y",
    "mean_xy",
    "mean_yy",
)
_DATA_COLUMNS = ("n_points", "x_start", "x_step", "slope", "intercept", "noise_std")


def _settings(rows: pd.DataFrame, step_sizes: Iterable[float] | None = None) -> list:
    """gdexp.theory.RunSettings of each row (at each of `step_sizes`, if given), straight from
    the frame's columns: no config is rebuilt."""
    from gdexp.theory import RunSettings

    columns = ["method", "step_size", "batch_size", "shuffle", "seed", *_DATA_COLUMNS]
    settings = []
    for method, step, batch, shuffle, seed, *data in rows[columns].itertuples(index=False):
        key = (int(data[0]), *(float(v) for v in data[1:]))
        for s in [step] if step_sizes is None else step_sizes:
            settings.append(
                RunSettings(str(method), float(s), int(batch), bool(shuffle), int(seed), key)
            )
    return settings


def theory_table(runs: pd.DataFrame) -> pd.DataFrame:
    """gdexp.theory's prediction and the least-squares fit for each run of a `load_runs` frame,
    one row per run (columns `THEORY_COLUMNS`)."""
    from gdexp.data import least_squares_fit  # imported late: torch
    from gdexp.theory import predict_settings, settings_data

    settings = _settings(runs)
    predictions = predict_settings(settings)
    facts: dict[tuple, tuple] = {}
    for s in settings:
        if (s.data, s.seed) in facts:
            continue
        data = settings_data(s.data, s.seed)
        x, y = data.x.numpy(), data.y.numpy()
        moments = (np.mean(x * x), np.mean(x), np.mean(y), np.mean(x * y), np.mean(y * y))
        facts[s.data, s.seed] = (*least_squares_fit(data), *map(float, moments))
    rows = [
        (
            run_id,
            p.method,
            p.step_size,
            s.seed,
            p.batch_size,
            p.bgd_threshold,
            p.sgd_threshold,
            p.epoch_map.spectral_radius,
            p.epoch_map.transient_gain,
            p.epoch_map.fixed_point_w,
            p.epoch_map.fixed_point_b,
            p.epoch_map.fixed_point_loss,
            p.epoch_map.stable,
            p.verdict,
            *facts[s.data, s.seed],
        )
        for run_id, s, p in zip(runs["run_id"], settings, predictions, strict=True)
    ]
    frame = pd.DataFrame(rows, columns=list(THEORY_COLUMNS))
    return frame.astype({"seed": "int64", "batch_size": "int64", "stable": "bool"})


CURVE_COLUMNS = ("step_size", "fixed_point_loss")


def sgd_theory_curve(
    runs: pd.DataFrame, step_sizes: Iterable[float], max_seeds: int = 3
) -> pd.DataFrame:
    """SGD's predicted fixed-point loss at every step size given (columns `CURVE_COLUMNS`): the
    median over the data of the SGD runs' first `max_seeds` seeds, NaN where ρ(M) >= 1 for any
    of them. Empty without SGD runs."""
    from gdexp.theory import predict_settings

    step_sizes = np.asarray(list(step_sizes), dtype=np.float64)
    sgd = runs[runs["method"] == "sgd"].sort_values("seed").drop_duplicates("seed")
    if sgd.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in CURVE_COLUMNS})
    seeds = sgd.head(max_seeds)
    predictions = predict_settings(_settings(seeds, step_sizes))
    table = np.array(
        [p.epoch_map.fixed_point_loss if p.epoch_map.stable else np.nan for p in predictions]
    ).reshape(len(seeds), len(step_sizes))
    with np.errstate(all="ignore"):
        curve = np.where(np.isnan(table).any(axis=0), np.nan, np.median(table, axis=0))
    return pd.DataFrame({"step_size": step_sizes, "fixed_point_loss": curve})
