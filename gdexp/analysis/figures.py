"""Figures of a sweep: frames from gdexp.analysis.load in, matplotlib Figures out.

Figures are built on the Agg canvas directly (no pyplot): nothing is ever shown, no global
backend is switched, and a figure is freed as soon as it is dropped. Save one with
`fig.savefig("name.png")`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from gdexp.analysis.load import run_config, theory_table

METHOD_ORDER = ("bgd", "sgd", "minibatch")
METHOD_TITLES = {
    "bgd": "Batch Gradient Descent",
    "sgd": "Stochastic Gradient Descent",
    "minibatch": "Mini-batch Gradient Descent",
}
METHOD_SHORT = {"bgd": "BGD", "sgd": "SGD", "minibatch": "Mini-batch"}
METHOD_COLORS = {"bgd": "tab:blue", "sgd": "tab:orange", "minibatch": "tab:green"}
LOSS_LABEL = "Cost/Total loss"
THEORY_COLOR = "purple"  # everything theory predicts (lines, fixed points)
THEORY_SGD_LABEL = "SGD theory: fixed-point loss"
THEORY_SGD_CURVE_LABEL = "SGD theory between swept step sizes"
DIVERGED_TOP = 0.96  # height (axes fraction) where runs whose loss went to infinity are marked


def methods_in(frame: pd.DataFrame) -> list[str]:
    """The methods present, bgd, sgd, minibatch first, then any other in name order."""
    present = set(frame["method"])
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def method_title(method: str) -> str:
    return METHOD_TITLES.get(method, method)


def method_color(method: str) -> str:
    return METHOD_COLORS.get(method, "tab:gray")


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 4.2) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def step_size_colors(step_sizes: Sequence[float]) -> dict[float, tuple]:
    """One colour per step size, the same in every panel (small: dark, large: light)."""
    values = sorted(set(step_sizes))
    cmap = colormaps["viridis"]
    if len(values) == 1:
        return {values[0]: cmap(0.35)}
    return {v: cmap(0.85 * i / (len(values) - 1)) for i, v in enumerate(values)}


def _history(histories: pd.DataFrame, key: str, runs: pd.DataFrame) -> pd.DataFrame:
    found = histories[(histories["key"] == key) & histories["run_id"].isin(runs["run_id"])]
    if found.empty:
        raise ValueError(
            f"No {key!r} history for these runs: load it with load_histories(runs, keys=[{key!r}])"
        )
    return found


def loss_curves(
    runs: pd.DataFrame, histories: pd.DataFrame, key: str = "loss", log_y: bool = True
) -> Figure:
    """Loss against epoch, a panel per method (bgd, sgd, minibatch), a line per step size.

    Each line is the median over the runs (seeds) of its step size, with a band from the lowest
    to the highest of them. A run that overflowed stops where its loss stopped being finite, so
    later epochs are the median of the runs left. The dotted line is the least-squares loss (the
    best any run can reach; median over the runs' data).
    """
    history = _history(histories, key, runs).merge(
        runs[["run_id", "method", "step_size"]], on="run_id"
    )
    methods = methods_in(history)
    colors = step_size_colors(history["step_size"])
    fig, axes = new_figure(len(methods))
    for ax, method in zip(axes, methods, strict=True):
        of_method = history[history["method"] == method]
        for step_size, cell in of_method.groupby("step_size", sort=True):
            table = cell.pivot_table(index="step", columns="run_id", values="value", aggfunc="last")
            table = table.sort_index()
            color = colors[step_size]
            ax.fill_between(
                table.index,
                table.min(axis=1),
                table.max(axis=1),
                color=color,
                alpha=0.22,
                linewidth=0,
            )
            n = table.shape[1]
            ax.plot(
                table.index,
                table.median(axis=1),
                color=color,
                marker="o" if len(table) <= 40 else None,
                markersize=3,
                label=f"step size {step_size:g} ({n} run{'s' if n != 1 else ''})",
            )
        optimal = runs.loc[runs["method"] == method, "optimal_loss"].median()
        if key == "loss" and np.isfinite(optimal) and optimal > 0:
            ax.axhline(optimal, color="0.4", linestyle=":", linewidth=1, label="least-squares loss")
        if log_y:
            ax.set_yscale("log")
        ax.set_title(method_title(method))
        ax.set_xlabel("Epoch")
        ax.set_ylabel(LOSS_LABEL)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def _theory_lines(ax: Axes, theory: pd.DataFrame) -> None:
    thresholds = (
        ("bgd", "bgd_threshold", "BGD threshold 2/λmax(H)"),
        ("sgd", "sgd_threshold", "SGD threshold min 1/(xᵢ²+1)"),
    )
    text_at = blended_transform_factory(ax.transData, ax.transAxes)
    for method, column, words in thresholds:
        for value in np.unique(theory[column].round(12)):
            ax.axvline(
                value,
                color=method_color(method),
                linestyle="--",
                linewidth=1.2,
                label=f"{words} = {value:.3g}",
            )
            ax.text(
                value,
                0.03,
                f" {METHOD_SHORT[method]} {value:.3g}",
                transform=text_at,
                rotation=90,
                va="bottom",
                ha="right",
                fontsize="small",
                color=method_color(method),
            )


def sgd_theory_curve(
    runs: pd.DataFrame, step_sizes: np.ndarray, max_seeds: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """(step sizes, SGD fixed-point loss) from gdexp.theory at every step size given: the median
    over the data of the first `max_seeds` seeds of the SGD runs, NaN where ρ(M) >= 1."""
    from omegaconf import OmegaConf

    from gdexp import theory

    sgd = runs[runs["method"] == "sgd"].sort_values("seed").drop_duplicates("seed")
    losses = []
    for _, row in sgd.head(max_seeds).iterrows():
        base = run_config(row)
        cfgs = [OmegaConf.merge(base, {"step_size": float(s)}) for s in step_sizes]
        losses.append(
            [
                p.epoch_map.fixed_point_loss if p.epoch_map.stable else np.nan
                for p in theory.predict_many(cfgs)
            ]
        )
    if not losses:
        return step_sizes, np.full(len(step_sizes), np.nan)
    table = np.array(losses, dtype=float)
    with np.errstate(all="ignore"):
        curve = np.where(np.isnan(table).any(axis=0), np.nan, np.median(table, axis=0))
    return step_sizes, curve


def step_size_map(
    runs: pd.DataFrame, theory: pd.DataFrame | None = None, theory_curve: bool = True
) -> Figure:
    """Final loss against step size (log-log): a line per method through the median over seeds,
    each run a point, runs whose loss went to infinity as an × at the top of the axes.

    Markers: filled circle converged or converging, hollow triangle "diverged" with a finite
    final loss (it ended above where it started), × at the top a run whose loss overflowed.
    Dashed vertical lines: theory's stability thresholds (BGD 2/λmax(H); SGD's strictest single
    sample, min 1/(xᵢ²+1)). Dashed purple line with stars: theory's fixed-point loss for SGD
    at each swept step size where its epoch map is stable (ρ < 1), the level an SGD run settles
    on; with `theory_curve`, a thin purple line gives the same at every step size of the axis
    (`sgd_theory_curve`), ending where ρ reaches 1. `theory`: `load.theory_table(runs)`,
    computed when not given.
    """
    theory = theory_table(runs) if theory is None else theory
    fig, (ax,) = new_figure(1, width=9.0, height=5.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    top = blended_transform_factory(ax.transData, ax.transAxes)
    finite_values = []
    top_rows: list[str] = []  # methods with × at the top so far: each method gets its own row
    for method in methods_in(runs):
        color = method_color(method)
        short = METHOD_SHORT.get(method, method)
        of_method = runs[runs["method"] == method]
        medians = of_method.groupby("step_size")["final_loss"].median().sort_index()
        ax.plot(
            medians.index,
            medians.where(np.isfinite(medians)),
            color=color,
            linewidth=1.5,
            label=f"{short} median over seeds",
        )
        loss = of_method["final_loss"]
        blew_up = np.isposinf(loss)
        grew = np.isfinite(loss) & (of_method["outcome"] == "diverged")
        settled = np.isfinite(loss) & ~grew
        finite_values.extend(loss[np.isfinite(loss)])
        if settled.any():
            ax.scatter(
                of_method.loc[settled, "step_size"],
                loss[settled],
                color=color,
                s=22,
                zorder=3,
                label=f"{short} runs (converged or converging)",
            )
        if grew.any():
            ax.scatter(
                of_method.loc[grew, "step_size"],
                loss[grew],
                facecolors="none",
                edgecolors=color,
                marker="^",
                s=40,
                zorder=3,
                label=f"{short} runs diverged (loss grew, stayed finite)",
            )
        if blew_up.any():
            ax.scatter(
                of_method.loc[blew_up, "step_size"],
                np.full(int(blew_up.sum()), DIVERGED_TOP - 0.04 * len(top_rows)),
                transform=top,
                color=color,
                marker="x",
                s=45,
                zorder=3,
                clip_on=False,
                label=f"{short} runs diverged to ∞ (at top)",
            )
            top_rows.append(method)

    sgd = theory[(theory["method"] == "sgd") & theory["stable"]]
    if not sgd.empty:
        predicted = sgd.groupby("step_size")["fixed_point_loss"].median().sort_index()
        ax.plot(
            predicted.index,
            predicted.values,
            color=THEORY_COLOR,
            linestyle="--",
            marker="*",
            markersize=10,
            label=THEORY_SGD_LABEL,
        )
        finite_values.extend(predicted[np.isfinite(predicted)])
    optimal = runs["optimal_loss"].median()
    if np.isfinite(optimal) and optimal > 0:
        ax.axhline(optimal, color="0.4", linestyle=":", linewidth=1, label="least-squares loss")
        finite_values.append(optimal)
    _theory_lines(ax, theory)

    xs = [*runs["step_size"], *theory["bgd_threshold"], *theory["sgd_threshold"]]
    x_lim = (min(xs) / 1.8, max(xs) * 1.8)
    ax.set_xlim(*x_lim)
    if theory_curve and (runs["method"] == "sgd").any():
        grid, curve = sgd_theory_curve(runs, np.geomspace(*x_lim, 120))
        ax.plot(
            grid,
            curve,
            color=THEORY_COLOR,
            linewidth=1,
            alpha=0.45,
            label=THEORY_SGD_CURVE_LABEL,
        )
        finite_values.extend(curve[np.isfinite(curve)])
    positive = [v for v in finite_values if v > 0]
    if positive:
        # Headroom at the top for the × of runs that went to infinity.
        ax.set_ylim(min(positive) / 5, max(positive) * 1e3)
    ax.set_title("Final loss against step size")
    ax.set_xlabel("Step size")
    ax.set_ylabel(f"Final {LOSS_LABEL.lower()}")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def default_path_runs(runs: pd.DataFrame) -> list[str]:
    """One run per method for `parameter_path`: the lowest seed at the largest step size whose
    loss stayed finite (any step size if none did)."""
    chosen = []
    for method in methods_in(runs):
        of_method = runs[runs["method"] == method]
        finite = of_method[np.isfinite(of_method["final_loss"])]
        pool = finite if not finite.empty else of_method
        largest = pool[pool["step_size"] == pool["step_size"].max()]
        chosen.append(largest.sort_values(["seed", "start_time"])["run_id"].iloc[0])
    return chosen


def _loss_grid(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full-data MSE at every (w, b) of a grid, from the data's moments."""
    sxx, sx, sy, sxy, syy = (np.mean(v) for v in (x * x, x, y, x * y, y * y))
    return w * w * sxx + 2 * w * b * sx + b * b - 2 * w * sxy - 2 * b * sy + syy


def _axis_grid(ax: Axes, axis: str, lo: float, hi: float, n: int = 240) -> np.ndarray:
    """n values from lo to hi, evenly spaced on the axis's own scale (linear or symlog)."""
    transform = (ax.xaxis if axis == "x" else ax.yaxis).get_transform()
    ends = transform.transform(np.array([lo, hi]))
    return transform.inverted().transform(np.linspace(ends[0], ends[1], n))


def _padded(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    span = max(hi - lo, 1e-3 * max(abs(lo), abs(hi), 1.0))
    return lo - 0.08 * span, hi + 0.08 * span


def parameter_path(
    runs: pd.DataFrame,
    histories: pd.DataFrame,
    run_ids: Sequence[str] | None = None,
    scale: str = "linear",
    theory: pd.DataFrame | None = None,
) -> Figure:
    """(w, b) after each epoch over the loss contours of the run's own data, a panel per run.

    The path starts at (init_w, init_b) (square) and follows the `w` and `b` histories; the star
    is the least-squares fit. Each panel zooms to its own path, so BGD's zig-zag in w and SGD's
    escape to ~1e7 are both readable; for a run whose epoch map is stable but whose fixed point
    is not the fit (SGD at a large step size), a diamond marks theory's fixed point θ*, the point
    its path circles. `scale`: "linear" or "symlog" (both axes). `run_ids`: default one run per
    method (`default_path_runs`). `theory`: `load.theory_table` rows for these runs, computed
    when not given.
    """
    from gdexp.experiment import make_run_data  # imported late: it loads torch

    if scale not in ("linear", "symlog"):
        raise ValueError(f"scale must be 'linear' or 'symlog', not {scale!r}")
    run_ids = list(run_ids) if run_ids is not None else default_path_runs(runs)
    missing = [r for r in run_ids if r not in set(runs["run_id"])]
    if missing or not run_ids:
        raise ValueError(f"Pick runs of the runs frame; not in it: {missing}")
    if not histories["key"].isin(["w", "b"]).any():
        raise ValueError(
            "No 'w' and 'b' histories: load them with load_histories(runs, keys=['loss', 'w', 'b'])"
        )
    by_id = runs.set_index("run_id")
    if theory is None:
        theory = theory_table(runs[runs["run_id"].isin(run_ids)])
    theory_by_id = theory.set_index("run_id")
    fig, axes = new_figure(len(run_ids), width=5.0, height=4.6)
    for ax, run_id in zip(axes, run_ids, strict=True):
        row = by_id.loc[run_id]
        path = {}
        for key in ("w", "b"):
            # A run that blew up in its first epoch has no finite (w, b) to show: just its start.
            found = histories[(histories["run_id"] == run_id) & (histories["key"] == key)]
            path[key] = found.sort_values("step").set_index("step")["value"]
        steps = path["w"].index.intersection(path["b"].index)
        w = np.concatenate([[row["init_w"]], path["w"].loc[steps].to_numpy()])
        b = np.concatenate([[row["init_b"]], path["b"].loc[steps].to_numpy()])

        data = make_run_data(run_config(row))
        x = data.x.numpy().astype(np.float64)
        y = data.y.numpy().astype(np.float64)
        fit_w, fit_b = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)[0]
        points_w, points_b = [*w, fit_w], [*b, fit_b]
        fixed = theory_by_id.loc[run_id] if run_id in theory_by_id.index else None
        show_fixed = (
            fixed is not None
            and bool(fixed["stable"])
            and np.isfinite(fixed["fixed_point_w"])
            and np.hypot(fixed["fixed_point_w"] - fit_w, fixed["fixed_point_b"] - fit_b)
            > 1e-3 * max(1.0, np.hypot(fit_w, fit_b))
        )
        if show_fixed:
            points_w.append(fixed["fixed_point_w"])
            points_b.append(fixed["fixed_point_b"])

        if scale == "symlog":
            ax.set_xscale("symlog", linthresh=max(abs(row["init_w"]), abs(fit_w), 1.0))
            ax.set_yscale("symlog", linthresh=max(abs(row["init_b"]), abs(fit_b), 1.0))
        w_lim, b_lim = _padded(np.array(points_w)), _padded(np.array(points_b))
        grid_w, grid_b = np.meshgrid(_axis_grid(ax, "x", *w_lim), _axis_grid(ax, "y", *b_lim))
        loss = _loss_grid(x, y, grid_w, grid_b)
        low, high = max(float(loss.min()), 1e-12), float(loss.max())
        ax.contour(
            grid_w,
            grid_b,
            loss,
            levels=np.geomspace(low * 1.05, high, 14),
            norm=LogNorm(low, high),
            cmap="Greys_r",
            linewidths=0.7,
            alpha=0.8,
        )
        color = method_color(str(row["method"]))
        ax.plot(
            w, b, "-o", color=color, markersize=3.5, linewidth=1, label="(w, b) after each epoch"
        )
        ax.plot(w[0], b[0], "s", color="black", markersize=6, label="start")
        ax.plot(fit_w, fit_b, "*", color="crimson", markersize=12, label="least-squares fit")
        if show_fixed:
            ax.plot(
                fixed["fixed_point_w"],
                fixed["fixed_point_b"],
                "D",
                color=THEORY_COLOR,
                markerfacecolor="none",
                markersize=9,
                markeredgewidth=1.5,
                label="theory: fixed point θ*",
            )
        ax.set_xlim(*w_lim)
        ax.set_ylim(*b_lim)
        ax.set_title(
            f"{method_title(str(row['method']))}\nstep size {row['step_size']:g}, "
            f"seed {row['seed']}: {row['outcome']}",
            fontsize="medium",
        )
        ax.set_xlabel("w")
        ax.set_ylabel("b")
        if scale == "linear":
            ax.ticklabel_format(axis="both", style="sci", scilimits=(-3, 4))
        ax.legend(fontsize="small", loc="best")
    return fig
