"""What follows from the runs' data and settings, as frames: gdexp.theory's prediction and the
least-squares fit per run, and SGD's predicted fixed-point loss between the swept step sizes.

Computed here, once per distinct data set and (data, batches, order), so that the figures only
draw: `figures` takes these frames and computes no fit or theory of its own. `theory_table` works
on whole columns: a table sweep of 140,000 configs costs its ~700 distinct (data, batch size,
order) epoch-map computations (gdexp.theory.epoch_maps, every step size and seed of each at once)
and array indexing, not an object per config.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace

import numpy as np
import pandas as pd

THEORY_COLUMNS = (
    "run_id",
    "config_index",  # a table sweep's config (no run id); <NA> for a run
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
DATA_COLUMNS = ("n_points", "x_start", "x_step", "slope", "intercept", "noise_std")


def _settings(rows: pd.DataFrame, step_sizes: Iterable[float] | None = None) -> list:
    """gdexp.theory.RunSettings of each row (at each of `step_sizes`, if given), straight from
    the frame's columns: no config is rebuilt."""
    from gdexp.theory import RunSettings

    columns = ["method", "step_size", "batch_size", "shuffle", "seed", *DATA_COLUMNS]
    settings = []
    for method, step, batch, shuffle, seed, *data in rows[columns].itertuples(index=False):
        key = (int(data[0]), *(float(v) for v in data[1:]))
        for s in [step] if step_sizes is None else step_sizes:
            settings.append(
                RunSettings(str(method), float(s), int(batch), bool(shuffle), int(seed), key)
            )
    return settings


def theory_table(runs: pd.DataFrame) -> pd.DataFrame:
    """gdexp.theory's prediction and the least-squares fit for each row of a `load_runs` frame,
    one row per run or config, in the frame's order (columns `THEORY_COLUMNS`; run_id and
    config_index are the frame's own, so either names the row).

    The same numbers and verdicts as `gdexp.theory.predict_settings` gives each run: each
    distinct (data, batch size, order) is one `epoch_maps` call over all its step sizes and
    seeds (shuffled configs: the first epoch's order, drawn from the seed as gdexp.train draws
    it), each distinct data set one least-squares fit; the verdict `gdexp.theory.verdicts`.
    """
    from gdexp.data import least_squares_fit  # imported late: torch
    from gdexp.theory import (
        bgd_threshold,
        epoch_maps,
        first_epoch_order,
        settings_data,
        settles_high_loss,
        sgd_threshold,
        verdicts,
    )

    n_rows = len(runs)
    data_code = runs.groupby(list(DATA_COLUMNS), sort=False).ngroup().to_numpy()
    codes, first_rows = np.unique(data_code, return_index=True)
    data_of = {
        int(code): (int(row[0]), *(float(v) for v in row[1:]))
        for code, row in zip(
            codes,
            runs[list(DATA_COLUMNS)].iloc[first_rows].itertuples(index=False, name=None),
            strict=True,
        )
    }
    seeds = runs["seed"].to_numpy(dtype=np.int64)
    steps = runs["step_size"].to_numpy(dtype=np.float64)
    n_points = runs["n_points"].to_numpy(dtype=np.int64)
    batches = np.minimum(runs["batch_size"].to_numpy(dtype=np.int64), n_points)
    shuffled = runs["shuffle"].to_numpy(dtype=bool)
    order_seed = np.where(shuffled, seeds, -1)

    # Each distinct data set (data settings, seed): x and y in float64, the fit, the moments.
    sets: dict[tuple[int, int], tuple] = {}
    pairs = pd.unique(pd.MultiIndex.from_arrays([data_code, seeds]))
    for code, seed in ((int(c), int(s)) for c, s in pairs):
        data = settings_data(data_of[code], seed)
        x, y = data.x.numpy(), data.y.numpy()
        fit = least_squares_fit(data)
        moments = (np.mean(x * x), np.mean(x), np.mean(y), np.mean(x * y), np.mean(y * y))
        sets[code, seed] = (x, y, fit, tuple(map(float, moments)), settles_high_loss(fit[2], y))

    out = {
        name: np.full(n_rows, np.nan)
        for name in (
            "bgd_threshold", "sgd_threshold", "spectral_radius", "transient_gain",
            "fixed_point_w", "fixed_point_b", "fixed_point_loss", "limit",
            "fit_w", "fit_b", "fit_loss",
            "mean_xx", "mean_x", "mean_y", "mean_xy", "mean_yy",
        )
    }  # fmt: skip
    thresholds: dict[int, tuple[float, float]] = {}
    orders: dict[tuple[int, int], np.ndarray] = {}  # (seed, N) -> its first epoch's order
    groups = pd.DataFrame({"data": data_code, "batch": batches, "order": order_seed})
    for (code, batch, order), rows in groups.groupby(["data", "batch", "order"]).indices.items():
        code, batch, order = int(code), int(batch), int(order)
        group_steps, step_at = np.unique(steps[rows], return_inverse=True)
        group_seeds, seed_at = np.unique(seeds[rows], return_inverse=True)
        x = sets[code, int(group_seeds[0])][0]
        if code not in thresholds:
            thresholds[code] = (bgd_threshold(x), sgd_threshold(x))
        ys = np.stack([sets[code, int(seed)][1] for seed in group_seeds])
        first = None
        if order >= 0:  # reshuffled every epoch: theory reads the first epoch's order
            if (order, len(x)) not in orders:
                # What first_epoch_order reads of a run config (a DictConfig costs ~1 ms).
                cfg = SimpleNamespace(seed=order, method=SimpleNamespace(shuffle=True))
                orders[order, len(x)] = first_epoch_order(cfg, len(x))
            first = orders[order, len(x)]
        maps = epoch_maps(x, ys, group_steps, batch, first)
        out["bgd_threshold"][rows], out["sgd_threshold"][rows] = thresholds[code]
        out["spectral_radius"][rows] = maps.spectral_radius[step_at]
        out["transient_gain"][rows] = maps.transient_gain[step_at]
        out["fixed_point_w"][rows] = maps.fixed_point_w[step_at, seed_at]
        out["fixed_point_b"][rows] = maps.fixed_point_b[step_at, seed_at]
        out["fixed_point_loss"][rows] = maps.fixed_point_loss[step_at, seed_at]
        facts = np.array(
            [(*sets[code, int(s)][2], *sets[code, int(s)][3], sets[code, int(s)][4])
             for s in group_seeds]
        )  # fmt: skip
        for j, name in enumerate(
            ("fit_w", "fit_b", "fit_loss", "mean_xx", "mean_x", "mean_y", "mean_xy",
             "mean_yy", "limit")
        ):  # fmt: skip
            out[name][rows] = facts[seed_at, j]
    stable = out["spectral_radius"] < 1.0
    verdict = verdicts(stable, out["fixed_point_loss"], out["limit"])
    columns = {
        **out,
        "run_id": pd.Series(runs["run_id"].to_numpy(dtype=object), dtype=object),
        "config_index": _config_index(runs),
        "method": pd.Series(runs["method"].to_numpy(dtype=object), dtype=object),
        "step_size": steps,
        "seed": seeds,
        "batch_size": batches,
        "stable": stable,
        "verdict": pd.Series(verdict, dtype=object),
    }
    return pd.DataFrame({name: columns[name] for name in THEORY_COLUMNS})


def _config_index(runs: pd.DataFrame) -> pd.Series:
    if "config_index" in runs:
        return pd.Series(runs["config_index"].to_numpy(), dtype="Int64")
    return pd.Series(pd.array([pd.NA] * len(runs), dtype="Int64"))


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
