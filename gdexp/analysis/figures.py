"""Figures of a sweep: frames in (gdexp.analysis.load, gdexp.analysis.tables), Figures out.

Figures are built on the Agg canvas directly (no pyplot): nothing is ever shown, no global
backend is switched, and a figure is freed as soon as it is dropped. Save one with
`fig.savefig("name.png")`.

Conventions, the same in every figure: the y axis says `loss` (log scale when the values span
decades); legends sit outside the panels; every legend entry names drawn data: the artists it
stands for carry its label as their gid (`legend_groups` finds them), and its mark (line, marker)
is what they draw; many step sizes get a colour bar with a block per step size instead of one
legend entry each; a curve that leaves a panel ends at its frame with a ▲, and no drawn point lies
outside the axes; theory (thresholds, fixed points, the optimum) is drawn thin, dashed or faint
and beneath the measurements, which carry markers; no text is drawn inside a panel. Fits and
theory are not computed here: they come in as `tables.theory_table` / `tables.sgd_theory_curve`
frames (computed when not given).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib import patheffects as pe
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colorbar import Colorbar
from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import (
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullLocator,
)
from matplotlib.transforms import blended_transform_factory

from gdexp.names import METHOD_ORDER, method_short, method_title
from gdexp.outcome import CONVERGED, CONVERGING, DIVERGED, OSCILLATING, STALLED

METHOD_COLORS = {"bgd": "tab:blue", "sgd": "tab:orange", "minibatch": "tab:green"}
LOSS_LABEL = "loss"
THEORY_COLOR = "purple"  # everything theory predicts (lines, fixed points)
THEORY_SGD_LABEL = "theory: SGD fixed-point loss (★ at swept step sizes)"
THEORY_SGD_CURVE_LABEL = "theory: SGD fixed-point loss"  # no swept step size is stable: no ★
LEAST_SQUARES_LABEL = "least-squares loss (the optimum)"
LEFT_FRAME_LABEL = "diverged (left the frame)"
OVERFLOW_LABEL = "a seed's loss overflowed to ∞ (× at top)"
MEDIAN_LABEL = "line: median over seeds; band: lowest to highest"
DIVERGED_TOP = 0.96  # height (axes fraction) of the first row of × for runs that overflowed
TOP_ROW_STEP = 0.045  # each further row of × sits this much lower
LEGEND_MAX_STEPS = 5  # more step sizes than this get a colour bar instead of legend entries
LOG_SPAN = 100.0  # a loss axis is logarithmic when its values span more than this factor
# Step sizes are ordered, so one map from small to large; turbo runs through the hues (blue,
# cyan, green, yellow, orange, red), so that 13 neighbouring step sizes differ in hue, where a
# single-hue map like viridis gives 13 shades nobody can tell apart. Its ends are cut: the
# near-black blue and red would read as black.
STEP_SIZE_CMAP = "turbo"
STEP_SIZE_CMAP_RANGE = (0.05, 0.95)
# Drawing order: theory beneath what was measured, so that a prediction never hides a run.
THEORY_Z = 1.5
MEASURED_Z = 3.0
POINTS_Z = 3.5
FRAME_MARK_Z = 5.0

# Marker of a run's outcome (gdexp.outcome's vocabulary) in `step_size_map`: (marker, filled).
OUTCOME_MARKERS = {
    CONVERGED: ("o", True),
    CONVERGING: ("o", False),
    STALLED: ("s", True),
    OSCILLATING: ("D", False),
    DIVERGED: ("^", True),  # still growing, finite; overflowed runs are × at the top
}


def methods_in(frame: pd.DataFrame) -> list[str]:
    """The methods present, bgd, sgd, minibatch first, then any other in name order."""
    present = set(frame["method"])
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def method_color(method: str) -> str:
    return METHOD_COLORS.get(method, "tab:gray")


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 4.2) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


GID_SEPARATOR = "\n"  # between the legend labels in an artist's gid


def _tag(artist: Artist, *labels: str) -> Artist:
    """Mark `artist` as drawing data of the legend entries `labels`."""
    artist.set_gid(GID_SEPARATOR.join(labels))
    return artist


def legend_groups(fig: Figure) -> dict[str, list[Artist]]:
    """Legend entry label -> the drawn artists (outside legends) it stands for."""
    groups: dict[str, list[Artist]] = {}
    for artist in fig.findobj(lambda a: a.get_gid() is not None):
        for label in artist.get_gid().split(GID_SEPARATOR):
            groups.setdefault(label, []).append(artist)
    return groups


def _proxy(label: str, **style) -> Line2D:
    """A legend handle: a line and/or marker in `style`, drawn nowhere."""
    style.setdefault("linestyle", "none" if "marker" in style else "-")
    return Line2D([], [], label=label, **style)


def _outside_legend(fig: Figure, handles: list[Line2D], ncols: int | None = None) -> Legend:
    """One legend below all panels."""
    ncols = ncols or min(len(handles), 4)
    return fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize="small")


def step_size_colors(step_sizes: Sequence[float]) -> dict[float, tuple[float, float, float, float]]:
    """A colour per step size, the same in every panel: small blue, large red.

    Spread evenly by rank over `STEP_SIZE_CMAP`, not by value: neighbouring step sizes then
    differ as much as the map allows however they are spaced (3 step sizes get its two ends and
    its middle; a 1-2-5 grid, evenly spaced on a log scale, comes out log-scaled).
    """
    values = sorted({float(s) for s in step_sizes})
    lo, hi = STEP_SIZE_CMAP_RANGE
    positions = np.linspace(lo, hi, len(values)) if len(values) > 1 else [lo]
    cmap = colormaps[STEP_SIZE_CMAP]
    return {v: tuple(cmap(p)) for v, p in zip(values, positions, strict=True)}


def step_size_bar(fig: Figure, axes: Sequence[Axes], colors: dict[float, tuple]) -> Colorbar:
    """A colour bar with a block per step size, in the lines' own colours, each labelled with its
    step size: a line's colour is matched to one labelled block, not read off a continuous
    scale between two end labels."""
    n = len(colors)
    mappable = ScalarMappable(
        BoundaryNorm(np.arange(n + 1) - 0.5, n), ListedColormap(list(colors.values()))
    )
    bar = fig.colorbar(mappable, ax=axes, pad=0.01, aspect=30, ticks=np.arange(n))
    bar.set_ticklabels([f"{s:g}" for s in colors])
    bar.ax.tick_params(labelsize="small")
    bar.set_label("step size")
    return bar


def _joins(values: np.ndarray) -> bool:
    """Whether a line through `values` draws a segment: two neighbours both finite."""
    finite = np.isfinite(np.asarray(values, dtype=float))
    return bool((finite[1:] & finite[:-1]).any())


def _isolated(values: np.ndarray) -> list[int]:
    """Indices of the finite values with no finite neighbour: a line does not reach them."""
    finite = np.isfinite(np.asarray(values, dtype=float))
    before = np.concatenate([[False], finite[:-1]])
    after = np.concatenate([finite[1:], [False]])
    return [int(i) for i in np.flatnonzero(finite & ~before & ~after)]


def _history(histories: pd.DataFrame, key: str, runs: pd.DataFrame) -> pd.DataFrame:
    found = histories[(histories["key"] == key) & histories["run_id"].isin(runs["run_id"])]
    if found.empty:
        raise ValueError(
            f"No {key!r} history for these runs: load it with load_histories(runs, keys=[{key!r}])"
        )
    return found


def _thin_log_ticks(ax: Axes) -> None:
    """No minor ticks on a log y axis spanning many decades: unreadable there, and costly
    (every tick is a few artists to lay out)."""
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log" and lo > 0 and hi / lo > 1e6:
        ax.yaxis.set_minor_locator(NullLocator())


def _is_log(values: np.ndarray) -> bool:
    positive = values[np.isfinite(values) & (values > 0)]
    return positive.size > 0 and positive.max() > LOG_SPAN * positive.min()


def _overflowed(runs: pd.DataFrame) -> pd.Series:
    """Runs whose loss went to infinity: a non-finite final loss or an epoch where it diverged."""
    return np.isposinf(runs["final_loss"]) | runs["diverged_at_epoch"].notna()


def _loss_limits(
    history: pd.DataFrame, runs: pd.DataFrame, log_y: bool, floor: float = np.nan
) -> tuple[float, float] | None:
    """y limits of a loss panel: from the lowest finite value of any run (and `floor`, the
    optimum) to the highest of the runs that did not diverge, with room above (log: 1000×) for
    diverging runs to show their rise before they reach the frame.

    The bottom takes every run, so that nothing drawn lies below the panel; the top only the runs
    that did not diverge, so that one run growing to 1e36 does not squash the others into a
    line: a curve above the top is cut where it meets the frame and marked there (`_to_frame`).
    """
    values = history["value"].to_numpy()
    usable = np.isfinite(values) & ((values > 0) if log_y else True)
    calm = (
        usable & history["run_id"].isin(runs.loc[runs["outcome"] != DIVERGED, "run_id"]).to_numpy()
    )
    lows = np.append(values[usable], floor)
    lows = lows[np.isfinite(lows) & ((lows > 0) if log_y else True)]
    highs = np.append(values[calm if calm.any() else usable], floor)
    highs = highs[np.isfinite(highs) & ((highs > 0) if log_y else True)]
    if not lows.size:
        return None
    lo, hi = float(lows.min()), float(highs.max())
    if not calm.any() or calm.sum() == usable.sum():
        return (lo / 2, hi * 4) if log_y else (lo - 0.05 * (hi - lo), hi + 0.15 * (hi - lo))
    return (lo / 2, hi * 1e3) if log_y else (lo - 0.05 * (hi - lo), hi + 2 * (hi - lo))


def _to_frame(
    xs: np.ndarray, ys: np.ndarray, top: float, log_y: bool, overflow_at: float | None = None
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """The part of a curve a panel with top `top` can show, and where it left the panel.

    The curve runs up to its first point that is above the top or not finite, and ends there on
    the frame: at the height of the top, where the segment to that point crosses it
    (interpolated on the axis's own scale), or at that point's epoch when it is not finite.
    `overflow_at`: the epoch after the last point at which the runs' loss overflowed (no point
    logged); the curve meets the frame there. Returns xs, ys and the x where the curve met the
    frame (None when it stays inside).
    """
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    out = ~np.isfinite(ys) | (ys > top)
    if not out.any():
        if overflow_at is None:
            return xs, ys, None
        return np.append(xs, overflow_at), np.append(ys, top), float(overflow_at)
    i = int(np.argmax(out))
    if i == 0:
        return xs[:1], np.array([top]), float(xs[0])
    x = xs[i]
    if np.isfinite(ys[i]):
        scale = np.log10 if log_y else (lambda v: v)
        y0, y1 = scale(ys[i - 1]), scale(ys[i])
        x = xs[i - 1] + (scale(top) - y0) / (y1 - y0) * (xs[i] - xs[i - 1])
    return np.append(xs[:i], x), np.append(ys[:i], top), float(x)


def loss_curves(
    runs: pd.DataFrame, histories: pd.DataFrame, key: str = "loss", log_y: bool | None = None
) -> Figure:
    """Loss against epoch, a panel per method (bgd, sgd, minibatch), a line per step size.

    Each line is the median over the runs (seeds) of its step size, with a band from the lowest
    to the highest of them. A run that overflowed stops where its loss stopped being finite (later
    epochs are the median of the runs left). The top of a panel is set by the runs that did not
    diverge: a line that rises above it, or whose runs all overflowed, ends on the frame with a ▲
    ("diverged (left the frame)") where it left; nothing drawn lies outside the panel. A run that
    overflowed while its line stayed inside gets a × at the top at the epoch it overflowed. The
    dotted line is the least-squares loss (the best any run can reach; median over the runs'
    data), beneath the runs. Colour is step size, blue to red: a legend entry each for up to
    `LEGEND_MAX_STEPS` of them, else a colour bar with a labelled block per step size. `log_y`:
    None takes a log axis when the values span more than `LOG_SPAN`.
    """
    history = _history(histories, key, runs).merge(
        runs[["run_id", "method", "step_size"]], on="run_id"
    )
    stats = (
        history.groupby(["method", "step_size", "step"])["value"]
        .agg(["median", "min", "max"])
        .reset_index()
    )
    values = history["value"].to_numpy()
    log_y = _is_log(values) if log_y is None else log_y
    step_sizes = sorted(set(runs["step_size"]))
    colors = step_size_colors(step_sizes)
    legend_steps = len(step_sizes) <= LEGEND_MAX_STEPS
    # Markers on the medians only where they can be told apart: few lines, few epochs.
    with_markers = legend_steps and stats.groupby(["method", "step_size"]).size().max() <= 40

    last_step = history.groupby("run_id")["step"].max()
    runs = runs.assign(_last=runs["run_id"].map(last_step), _over=_overflowed(runs))
    methods = methods_in(runs[runs["run_id"].isin(history["run_id"])])
    fig, axes = new_figure(len(methods), height=4.6 if legend_steps else 4.2)
    shown_overflow = shown_optimum = shown_left = False
    for ax, method in zip(axes, methods, strict=True):
        of_method = runs[runs["method"] == method]
        if log_y:
            ax.set_yscale("log")
        optimal = of_method["optimal_loss"].median() if key == "loss" else np.nan
        limits = _loss_limits(history[history["method"] == method], of_method, log_y, optimal)
        if limits is not None:
            ax.set_ylim(*limits)
        top = ax.get_ylim()[1]
        rows = 0  # rows of × at the top used so far
        for step_size, cell in stats[stats["method"] == method].groupby("step_size", sort=True):
            color = colors[float(step_size)]
            label = f"step size {step_size:g}"
            # The band's edges stop at the frame, like the lines.
            band = ax.fill_between(
                cell["step"],
                np.fmin(cell["min"], top),
                np.fmin(cell["max"], top),
                color=color,
                alpha=0.18,
                linewidth=0,
            )
            cell_runs = of_method[of_method["step_size"] == step_size]
            over = cell_runs[cell_runs["_over"]]
            all_over = len(over) > 0 and len(over) == len(cell_runs)
            xs, ys, left_at = _to_frame(
                cell["step"].to_numpy(),
                cell["median"].to_numpy(),
                top,
                log_y,
                overflow_at=float(over["_last"].max()) + 1 if all_over else None,
            )
            line = ax.plot(
                xs,
                ys,
                color=color,
                linewidth=1.4,
                marker="o" if with_markers else None,
                markersize=2.5,
                zorder=MEASURED_Z,
            )[0]
            _tag(line, label, MEDIAN_LABEL)
            _tag(band, label, MEDIAN_LABEL)
            if left_at is not None:
                # On the frame, not beyond it: half the marker would be cut off by the panel.
                left = ax.scatter(
                    [left_at],
                    [top],
                    marker="^",
                    s=55,
                    color=color,
                    edgecolors="0.1",
                    linewidths=0.6,
                    zorder=FRAME_MARK_Z,
                    clip_on=False,
                )
                _tag(left, label, LEFT_FRAME_LABEL)
                shown_left = True
            elif len(over):
                marks = ax.scatter(
                    (over["_last"] + 1).unique(),
                    np.full(over["_last"].nunique(), DIVERGED_TOP - TOP_ROW_STEP * rows),
                    transform=blended_transform_factory(ax.transData, ax.transAxes),
                    color=color,
                    marker="x",
                    s=40,
                    zorder=FRAME_MARK_Z,
                    clip_on=False,
                )
                _tag(marks, OVERFLOW_LABEL)
                rows += 1
                shown_overflow = True
        if np.isfinite(optimal) and (optimal > 0 or not log_y):
            optimum = ax.axhline(
                optimal, color="0.35", linestyle=":", linewidth=1.2, zorder=THEORY_Z
            )
            _tag(optimum, LEAST_SQUARES_LABEL)
            shown_optimum = True
        ax.set_xlim(-0.5, max(float(stats["step"].max()) + 1.5, 1.5))
        _thin_log_ticks(ax)
        n = len(of_method)
        ax.set_title(f"{method_title(method)} ({n} run{'s' if n != 1 else ''})", fontsize="medium")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(LOSS_LABEL if key == "loss" else key)
        ax.grid(True, which="major", alpha=0.3)

    handles = []
    if legend_steps:
        drawn = legend_groups(fig)
        marker = {"marker": "o", "markersize": 4} if with_markers else {}
        handles += [
            _proxy(f"step size {s:g}", color=colors[s], linestyle="-", **marker)
            for s in colors
            if drawn.get(f"step size {s:g}")
        ]
    else:
        step_size_bar(fig, axes, colors)
    handles.append(_proxy(MEDIAN_LABEL, color="0.3", linewidth=1.4))
    if shown_optimum:
        handles.append(_proxy(LEAST_SQUARES_LABEL, color="0.35", linestyle=":", linewidth=1.2))
    if shown_left:
        handles.append(
            _proxy(
                LEFT_FRAME_LABEL,
                marker="^",
                markersize=7,
                color="0.5",
                markeredgecolor="0.1",
                markeredgewidth=0.6,
            )
        )
    if shown_overflow:
        handles.append(_proxy(OVERFLOW_LABEL, color="0.2", marker="x", markersize=6))
    _outside_legend(fig, handles)
    return fig


OUTCOME_WORDS = {
    CONVERGED: "converged",
    CONVERGING: "converging (still falling)",
    STALLED: "stalled (flat above the optimum)",
    OSCILLATING: "oscillating (up and down)",
    DIVERGED: "diverged (still growing)",
}
OVERFLOWED_RUNS_LABEL = "diverged to ∞ (× at top)"
OTHER_OUTCOME_LABEL = "other outcome"


def _threshold_lines(ax: Axes, theory: pd.DataFrame) -> list[Line2D]:
    """Theory's stability thresholds as dashed vertical lines; their legend handles."""
    thresholds = (
        ("bgd", "bgd_threshold", "BGD stable below 2/λmax(H)"),
        ("sgd", "sgd_threshold", "every SGD step contracts below min 1/(xᵢ²+1)"),
    )
    handles = []
    for method, column, words in thresholds:
        for value in np.unique(theory[column].round(12)):
            label = f"{words} = {value:.3g}"
            style = {"color": method_color(method), "linestyle": "--", "linewidth": 1.2}
            _tag(ax.axvline(value, zorder=THEORY_Z, **style), label)
            handles.append(_proxy(label, **style))
    return handles


def step_size_map(
    runs: pd.DataFrame,
    theory: pd.DataFrame | None = None,
    curve: pd.DataFrame | None = None,
    theory_curve: bool = True,
) -> Figure:
    """Final loss against step size (log-log): a line per method through the median over seeds
    (a bar marks a median no line reaches, e.g. at a single step size), each run a point whose
    marker is its outcome, runs whose loss went to infinity as a × at the top (a row per method).

    Theory is drawn beneath the runs, thin and dashed: theory's stability thresholds as vertical
    lines (BGD 2/λmax(H); SGD's strictest single sample, min 1/(xᵢ²+1)); in faint purple,
    theory's fixed-point loss for SGD, the level an SGD run settles on where its epoch map is
    stable (ρ < 1): stars at the swept step sizes (median over seeds), and with `theory_curve` a
    dashed line at every step size of the axis, ending where ρ reaches 1 (without it, the stars
    joined). `theory`: `tables.theory_table(runs)`; `curve`: `tables.sgd_theory_curve` on the
    axis's step sizes; each computed when not given.
    """
    from gdexp.analysis import tables

    theory = tables.theory_table(runs) if theory is None else theory
    fig, (ax,) = new_figure(1, width=10.0, height=5.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    top = blended_transform_factory(ax.transData, ax.transAxes)
    finite_values: list[float] = []
    method_handles, outcome_handles = [], {}
    rows = 0  # rows of × at the top: a row per method with overflowed runs
    for method in methods_in(runs):
        color = method_color(method)
        of_method = runs[runs["method"] == method]
        medians = of_method.groupby("step_size")["final_loss"].median().sort_index()
        label = f"{method_short(method)}: median over seeds"
        shown = medians.where(np.isfinite(medians))
        if shown.notna().any():
            # A bar at a median no line reaches (a single step size, or one between step sizes
            # whose runs went to infinity): a line through one point draws nothing.
            alone = _isolated(shown.to_numpy())
            style = {"color": color, "linewidth": 1.5}
            if alone:
                style.update(marker="_", markersize=14, markeredgewidth=2.0)
            line = ax.plot(shown.index, shown, zorder=MEASURED_Z, markevery=alone or None, **style)
            _tag(line[0], label)
            if not _joins(shown.to_numpy()):
                style["linestyle"] = "none"
            method_handles.append(_proxy(label, **style))
        loss = of_method["final_loss"]
        known = of_method["outcome"].isin(list(OUTCOME_MARKERS))
        groups = [(o, of_method["outcome"] == o, *OUTCOME_MARKERS[o]) for o in OUTCOME_MARKERS]
        groups.append((None, ~known, ".", True))
        for outcome, chosen, marker, filled in groups:
            chosen = chosen & np.isfinite(loss)
            if not chosen.any():
                continue
            words = OUTCOME_WORDS[outcome] if outcome else OTHER_OUTCOME_LABEL
            points = ax.scatter(
                of_method.loc[chosen, "step_size"],
                loss[chosen],
                marker=marker,
                s=30,
                zorder=POINTS_Z,
                facecolors=color if filled else "none",
                edgecolors=color,
                linewidths=1.2,
            )
            _tag(points, words)
            outcome_handles[words] = _proxy(
                words,
                marker=marker,
                markersize=6,
                color="0.25",
                markerfacecolor="0.25" if filled else "none",
            )
        finite_values.extend(loss[np.isfinite(loss)])
        blew_up = np.isposinf(loss)
        if blew_up.any():
            marks = ax.scatter(
                of_method.loc[blew_up, "step_size"],
                np.full(int(blew_up.sum()), DIVERGED_TOP - TOP_ROW_STEP * rows),
                transform=top,
                color=color,
                marker="x",
                s=45,
                zorder=POINTS_Z,
                clip_on=False,
            )
            _tag(marks, OVERFLOWED_RUNS_LABEL)
            outcome_handles[OVERFLOWED_RUNS_LABEL] = _proxy(
                OVERFLOWED_RUNS_LABEL, marker="x", markersize=6, color="0.25"
            )
            rows += 1

    # Theory beneath the runs, faint and dashed: where runs and theory agree (SGD at 0.05 and
    # 0.1) the measured median must stay in sight on top of the prediction.
    theory_handles = []
    star_style = {
        "color": THEORY_COLOR,
        "marker": "*",
        "markersize": 11,
        "alpha": 0.6,
        "markeredgewidth": 0,
    }
    theory_line = {"color": THEORY_COLOR, "linestyle": "--", "linewidth": 1.0, "alpha": 0.6}
    sgd = theory[(theory["method"] == "sgd") & theory["stable"]]
    predicted = sgd.groupby("step_size")["fixed_point_loss"].median().sort_index()
    predicted = predicted[np.isfinite(predicted)]
    drawn_theory_line = False
    theory_label = THEORY_SGD_LABEL if not predicted.empty else THEORY_SGD_CURVE_LABEL
    if not predicted.empty:
        stars = ax.plot(predicted.index, predicted.values, linestyle="none", **star_style)[0]
        _tag(stars, THEORY_SGD_LABEL).set_zorder(THEORY_Z)
        finite_values.extend(predicted)
    optimal = runs["optimal_loss"].median()
    if np.isfinite(optimal) and optimal > 0:
        style = {"color": "0.35", "linestyle": ":", "linewidth": 1.2}
        _tag(ax.axhline(optimal, zorder=THEORY_Z, **style), LEAST_SQUARES_LABEL)
        theory_handles.append(_proxy(LEAST_SQUARES_LABEL, **style))
        finite_values.append(optimal)
    theory_handles += _threshold_lines(ax, theory)

    xs = [*runs["step_size"], *theory["bgd_threshold"], *theory["sgd_threshold"]]
    x_lim = (min(xs) / 1.8, max(xs) * 1.8)
    ax.set_xlim(*x_lim)
    if theory_curve and (runs["method"] == "sgd").any():
        if curve is None:
            curve = tables.sgd_theory_curve(runs, np.geomspace(*x_lim, 120))
        shown = curve["fixed_point_loss"].to_numpy(dtype=float)
        if _joins(shown):
            drawn = ax.plot(curve["step_size"], shown, zorder=THEORY_Z, **theory_line)[0]
            _tag(drawn, theory_label)
            finite_values.extend(shown[np.isfinite(shown)])
            drawn_theory_line = True
    elif len(predicted) > 1:  # no curve: the stars joined, as the curve would join them
        joined = ax.plot(predicted.index, predicted.values, zorder=THEORY_Z, **theory_line)[0]
        _tag(joined, THEORY_SGD_LABEL)
        drawn_theory_line = True
    if drawn_theory_line or not predicted.empty:
        style = {**(theory_line if drawn_theory_line else {"linestyle": "none"})}
        style.update(star_style if not predicted.empty else {})
        theory_handles.insert(0, _proxy(theory_label, **style))
    positive = [v for v in finite_values if v > 0]
    if positive:
        # Headroom at the top for the rows of × of runs that went to infinity.
        ax.set_ylim(min(positive) / 5, max(positive) * 10 ** (1 + rows))
    _thin_log_ticks(ax)
    ax.set_title("Final loss against step size", fontsize="medium")
    ax.set_xlabel("step size")
    ax.set_ylabel(f"final {LOSS_LABEL}")
    ax.grid(True, which="major", alpha=0.3)
    order = [*(OUTCOME_WORDS[o] for o in OUTCOME_MARKERS), OVERFLOWED_RUNS_LABEL]
    rank = {label: i for i, label in enumerate(order)}  # best to worst; anything else last
    outcomes = sorted(outcome_handles.items(), key=lambda kv: rank.get(kv[0], len(order)))
    handles = [*method_handles, *(h for _, h in outcomes), *theory_handles]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        fontsize="small",
    )
    return fig


def default_path_runs(runs: pd.DataFrame) -> list[str]:
    """One run per method for `parameter_path`: the lowest seed at the largest step size whose
    runs did not diverge (else whose loss stayed finite, else any)."""
    chosen = []
    for method in methods_in(runs):
        of_method = runs[runs["method"] == method]
        finite = of_method[np.isfinite(of_method["final_loss"])]
        settled = finite[finite["outcome"] != DIVERGED]
        pool = settled if not settled.empty else finite if not finite.empty else of_method
        largest = pool[pool["step_size"] == pool["step_size"].max()]
        chosen.append(largest.sort_values(["seed", "start_time"])["run_id"].iloc[0])
    return chosen


def _loss_grid(moments: pd.Series, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full-data MSE at every (w, b) of a grid, from the data's moments."""
    m = moments
    return (
        w * w * m["mean_xx"]
        + 2 * w * b * m["mean_x"]
        + b * b
        - 2 * w * m["mean_xy"]
        - 2 * b * m["mean_y"]
        + m["mean_yy"]
    )


def _axis_grid(ax: Axes, axis: str, lo: float, hi: float, n: int = 200) -> np.ndarray:
    """n values from lo to hi, evenly spaced on the axis's own scale (linear or symlog)."""
    transform = (ax.xaxis if axis == "x" else ax.yaxis).get_transform()
    ends = transform.transform(np.array([lo, hi]))
    return transform.inverted().transform(np.linspace(ends[0], ends[1], n))


def _padded(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    span = max(hi - lo, 1e-3 * max(abs(lo), abs(hi), 1.0))
    return lo - 0.08 * span, hi + 0.08 * span


PATH_LABEL = "(w, b) after each epoch"
START_LABEL = "start"
FIT_LABEL = "least-squares fit"
FIXED_POINT_LABEL = "theory: fixed point θ* of the epoch map"
CONTOUR_LABEL = "loss contours (log-spaced)"


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
    method (`default_path_runs`). `theory`: `tables.theory_table` rows for these runs (the fit,
    the data's moments, the fixed point), computed when not given.
    """
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
        from gdexp.analysis.tables import theory_table

        theory = theory_table(runs[runs["run_id"].isin(run_ids)])
    theory_by_id = theory.set_index("run_id")
    fig, axes = new_figure(len(run_ids), width=5.0, height=5.0)
    shown_fixed = joined_path = False
    for ax, run_id in zip(axes, run_ids, strict=True):
        row = by_id.loc[run_id]
        facts = theory_by_id.loc[run_id]
        path = {}
        for key in ("w", "b"):
            # A run that blew up in its first epoch has no finite (w, b) to show: just its start.
            found = histories[(histories["run_id"] == run_id) & (histories["key"] == key)]
            path[key] = found.sort_values("step").set_index("step")["value"]
        steps = path["w"].index.intersection(path["b"].index)
        w = np.concatenate([[row["init_w"]], path["w"].loc[steps].to_numpy()])
        b = np.concatenate([[row["init_b"]], path["b"].loc[steps].to_numpy()])

        fit_w, fit_b = float(facts["fit_w"]), float(facts["fit_b"])
        points_w, points_b = [*w, fit_w], [*b, fit_b]
        show_fixed = (
            bool(facts["stable"])
            and np.isfinite(facts["fixed_point_w"])
            and np.hypot(facts["fixed_point_w"] - fit_w, facts["fixed_point_b"] - fit_b)
            > 1e-3 * max(1.0, np.hypot(fit_w, fit_b))
        )
        if show_fixed:
            points_w.append(facts["fixed_point_w"])
            points_b.append(facts["fixed_point_b"])

        if scale == "symlog":
            ax.set_xscale("symlog", linthresh=max(abs(row["init_w"]), abs(fit_w), 1.0))
            ax.set_yscale("symlog", linthresh=max(abs(row["init_b"]), abs(fit_b), 1.0))
        w_lim, b_lim = _padded(np.array(points_w)), _padded(np.array(points_b))
        grid_w, grid_b = np.meshgrid(_axis_grid(ax, "x", *w_lim), _axis_grid(ax, "y", *b_lim))
        loss = _loss_grid(facts, grid_w, grid_b)
        low, high = max(float(loss.min()), 1e-12), float(loss.max())
        contours = ax.contour(
            grid_w,
            grid_b,
            loss,
            levels=np.geomspace(low * 1.05, high, 14),
            norm=LogNorm(low, high),
            cmap="Greys_r",
            linewidths=0.7,
            alpha=0.8,
            zorder=1,
        )
        _tag(contours, CONTOUR_LABEL)
        color = method_color(str(row["method"]))
        # The path on top: the fit and theory's fixed point, where a converging path ends,
        # are drawn beneath it, so its last iterates stay in sight.
        path_line = ax.plot(
            w, b, "-o", color=color, markersize=3.5, linewidth=1, zorder=MEASURED_Z
        )[0]
        _tag(path_line, PATH_LABEL)
        joined_path = joined_path or _joins(w)
        _tag(ax.plot(w[0], b[0], "s", color="black", markersize=6, zorder=POINTS_Z)[0], START_LABEL)
        fit = ax.plot(fit_w, fit_b, "*", color="crimson", markersize=13, alpha=0.7, zorder=THEORY_Z)
        _tag(fit[0], FIT_LABEL)
        if show_fixed:
            fixed = ax.plot(
                facts["fixed_point_w"],
                facts["fixed_point_b"],
                "D",
                color=THEORY_COLOR,
                markerfacecolor="none",
                markersize=9,
                markeredgewidth=1.5,
                zorder=THEORY_Z,
            )[0]
            _tag(fixed, FIXED_POINT_LABEL)
            shown_fixed = True
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
    handles = [
        _proxy(
            PATH_LABEL,
            color="0.3",
            marker="o",
            markersize=3.5,
            linestyle="-" if joined_path else "none",  # a run that blew up at once: its start
            linewidth=1,
        ),
        _proxy(START_LABEL, marker="s", color="black", markersize=6),
        _proxy(FIT_LABEL, marker="*", color="crimson", markersize=12, alpha=0.7),
        _proxy(CONTOUR_LABEL, color="0.5", linewidth=0.7),
    ]
    if shown_fixed:
        handles.append(
            _proxy(
                FIXED_POINT_LABEL,
                marker="D",
                color=THEORY_COLOR,
                markerfacecolor="none",
                markersize=8,
                markeredgewidth=1.5,
            )
        )
    _outside_legend(fig, handles, ncols=min(len(handles), 3))
    return fig


# --- Phase map: step size × batch size, a panel per order --------------------------------------

PHASE_COLOR_LABEL = "fraction of seeds diverged"
# The colour bar's blocks: a cell is in the last block whose lower end its fraction reaches.
# "none" and "all" are blocks of their own (a single seed of 100 diverging must not look like
# none), and one block starts at exactly half: the measured edge (edges.measured_edges) is the
# first step size whose cell is in that block or above.
PHASE_BLOCKS = (
    (0.0, "none"),
    (1e-9, "> 0"),
    (0.25, "≥ ¼"),
    (0.5, "≥ ½"),
    (0.75, "≥ ¾"),
    (1.0 - 1e-9, "all"),
)
# Light (none) to dark red (all): YlOrRd sampled; the first block is nearly white, so that the
# calm region recedes and the edges drawn over it stand out.
PHASE_CMAP = "YlOrRd"
PHASE_CMAP_POSITIONS = (0.0, 0.22, 0.4, 0.58, 0.76, 1.0)
NO_DATA_COLOR = "0.62"  # a grey the colour map does not contain
NO_DATA_LABEL = "no data (no run judged)"
ORDER_TITLES = {
    "data order": "data order (the same every epoch)",
    "shuffled": "shuffled each epoch",
}
THEORY_DIVERGE_LABEL = "theory: diverges from here, ρ(M) = 1 (exact)"
THEORY_DIVERGE_ESTIMATE_LABEL = "theory, shuffled: diverges from here (an estimate)"
THEORY_SETTLE_HIGH_LABEL = "theory: settles high from here (exact; median over the seeds' data)"
WORST_BATCH_LABEL = "proven: no run diverges below (worst batch's 2/λmax)"
MEASURED_NOT_CONVERGED_LABEL = "measured: ≥ ½ of the seeds not converged from here"
EDGE_HALF_HEIGHT = 0.4  # a row is 1 high; an edge's segment leaves a gap to the next row
# Over the colour map: the mesh lowest, theory over it (thin, dashed, a white halo, so that it
# shows on pale and dark cells alike), measured edges over theory.
MESH_Z = 1.0
HALO = (pe.Stroke(linewidth=3.2, foreground="white", alpha=0.85), pe.Normal())
# label -> style of theory's edges (segments) and measured edges (markers)
PHASE_THEORY_STYLES = {
    THEORY_DIVERGE_LABEL: {"color": THEORY_COLOR, "linestyle": "--", "linewidth": 1.5},
    THEORY_DIVERGE_ESTIMATE_LABEL: {
        "color": THEORY_COLOR,
        "linestyle": (0, (1.5, 1.2)),
        "linewidth": 1.8,
    },
    THEORY_SETTLE_HIGH_LABEL: {"color": "tab:blue", "linestyle": "--", "linewidth": 1.5},
    WORST_BATCH_LABEL: {"color": "0.15", "linestyle": ":", "linewidth": 1.2},
}
PHASE_MEASURED_STYLES = {
    MEASURED_NOT_CONVERGED_LABEL: {"marker": "o", "facecolor": "white", "edgecolor": "black"},
}


def phase_colors() -> list[tuple[float, float, float, float]]:
    """The colour of each of `PHASE_BLOCKS`."""
    cmap = colormaps[PHASE_CMAP]
    return [tuple(cmap(p)) for p in PHASE_CMAP_POSITIONS]


def phase_norm() -> BoundaryNorm:
    """Fraction of seeds -> block of `PHASE_BLOCKS` (the colour map's index)."""
    lows = [low for low, _ in PHASE_BLOCKS]
    return BoundaryNorm([*lows, 1.0 + 1e-9], len(lows))


def _log_cell_edges(values: np.ndarray) -> np.ndarray:
    """Edges of cells centred (on a log scale) on sorted positive `values`: midway between
    neighbours; the outer cells as wide as their neighbour's half; a single value gets half a
    decade."""
    logs = np.log10(values)
    if len(logs) == 1:
        return 10.0 ** (logs[0] + np.array([-0.25, 0.25]))
    mids = (logs[1:] + logs[:-1]) / 2
    return 10.0 ** np.concatenate(
        [[logs[0] - (mids[0] - logs[0])], mids, [logs[-1] + (logs[-1] - mids[-1])]]
    )


def _edge_segments(xs: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    return [
        np.array([[x, r - EDGE_HALF_HEIGHT], [x, r + EDGE_HALF_HEIGHT]])
        for x, r in zip(xs, rows, strict=True)
    ]


def _phase_edges(edges: pd.DataFrame, row_of: dict[int, int], order: str, x_lim) -> dict:
    """label -> (step sizes, rows) of the edges to draw in the panel of `order`, each inside the
    panel's step sizes `x_lim`; labels with nothing to draw left out."""
    from gdexp.analysis import edges as edge_module
    from gdexp.theory import ESTIMATE, EXACT

    of_order = edges[(edges["order"] == order) & edges["batch_size"].isin(list(row_of))]
    by_event = {
        e: of_order[of_order["event"] == e].set_index("batch_size") for e in edge_module.EVENTS
    }
    diverged = by_event[edge_module.DIVERGED_EVENT]
    not_converged = by_event[edge_module.NOT_CONVERGED_EVENT]
    found: dict[str, list[tuple[float, int]]] = {}

    def add(label: str, value, batch) -> None:
        value = float(value)
        if np.isfinite(value) and x_lim[0] <= value <= x_lim[1]:
            found.setdefault(label, []).append((value, row_of[int(batch)]))

    if "theory_kind" in of_order:
        for batch, row in diverged.iterrows():
            if row["theory_kind"] == EXACT:
                add(THEORY_DIVERGE_LABEL, row["theory_step_size"], batch)
            elif row["theory_kind"] == ESTIMATE:
                add(THEORY_DIVERGE_ESTIMATE_LABEL, row["theory_step_size"], batch)
        for batch, row in not_converged.iterrows():
            # Settling high is an edge of its own only below divergence; where theory's
            # verdict goes from "converges" straight to "diverges" the two coincide.
            settle = float(row["theory_step_size"])
            diverge = float(diverged["theory_step_size"].get(batch, np.inf))
            if row["theory_kind"] == EXACT and settle < diverge * (1 - 1e-9):
                add(THEORY_SETTLE_HIGH_LABEL, settle, batch)
        for batch, bound in of_order.groupby("batch_size")["worst_batch_bound"].min().items():
            add(WORST_BATCH_LABEL, bound, batch)
    if "measured_step_size" in of_order:
        # Only "not converged": the measured divergence edge is the colour's own step into ≥ ½.
        for batch, row in not_converged.iterrows():
            add(MEASURED_NOT_CONVERGED_LABEL, row["measured_step_size"], batch)
    return {label: np.array(points).T for label, points in found.items()}


def phase_map(results: pd.DataFrame, edges: pd.DataFrame | None = None) -> Figure:
    """The phase map: step size (log, x) × batch size (a row each, y), a panel per order (data
    order; shuffled each epoch), each cell coloured by the fraction of its seeds that diverged.

    Colour is the fraction of seeds diverged, not the median final loss over the optimum: it is
    bounded (0 to 1, one scale for every cell and any number of seeds), the measured edge is
    defined on it (the first step size where at least half the seeds diverged: the colour bar has
    a block starting at ½, so the edge is where the row turns into it), and it shows the spread of
    seeds at the edge. The loss ratio is inf wherever half the seeds overflow, spans 1 to 1e30
    below that, and is high at both ends of a row: BGD at step 0.001 ends 3000× above the optimum
    after 20 epochs (too few epochs), the same colour as SGD settling high at 0.07 (too large a
    step) — it mixes up the two. (`edges.phase_grid` computes it, and the fraction not converged,
    for a table.) Fractions are over a cell's judged seeds; a cell without any (absent from the
    grid, or every run failed) is grey, "no data", never 0.

    `edges`: an `edges.edge_table` frame (or `measured_edges`, or `theory_edge_summary`: what
    it has is drawn); None draws the map alone, no edges at all — the measured divergence edge
    is still there to see, as the colour's step into "≥ ½". Drawn per row, over the colour:
    theory's edges as dashed or dotted segments with a white halo (seen on pale and dark cells
    alike, thin enough to leave them readable) — where a run diverges (ρ(M) = 1: exact in data
    order and for BGD; shuffled, an estimate from sampled orders; a bracket has none), where it
    settles high (its fixed point's loss leaves the optimum: exact, data order only, the median
    over the seeds' data, drawn only where it comes before divergence), and the proven bound
    below which no run diverges (the worst batch's 2/λmax); over them, as ○ on its cell, the
    measured edge of not converging (the first step size where at least half the seeds
    stalled, oscillated or diverged), theory's settle-high edge's counterpart, which the colour
    does not show. An edge outside the measured step sizes is not drawn. Every kind drawn has a
    legend entry below the panels, and nothing else has one.

    Rows are the batch sizes present, evenly spaced (1 is SGD; all of the data, BGD); columns
    the step sizes present in any panel, each cell reaching midway (log) to its neighbours.
    Plotting aggregates first (`edges.phase_grid`) and draws one mesh per panel: 140,000 runs
    draw as fast as 1,400.
    """
    from gdexp.analysis.edges import phase_grid
    from gdexp.theory import DATA_ORDER, SHUFFLED

    grid = phase_grid(results)
    orders = [o for o in (DATA_ORDER, SHUFFLED) if (grid["order"] == o).any()]
    batches = sorted(int(b) for b in grid["batch_size"].unique())
    row_of = {b: i for i, b in enumerate(batches)}
    steps = np.unique(grid["step_size"].to_numpy(dtype=np.float64))
    x_edges = _log_cell_edges(steps)
    y_edges = np.arange(len(batches) + 1) - 0.5
    x_lim = (float(x_edges[0]), float(x_edges[-1]))
    full = set(grid.loc[grid["full_batch"], "batch_size"].astype(int))

    colors = phase_colors()
    cmap = ListedColormap(colors)
    norm = phase_norm()
    fig = Figure(figsize=(5.6 * len(orders) + 1.4, 2.4 + 0.45 * len(batches)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(1, len(orders), squeeze=False, sharey=True)[0])
    drawn: set[str] = set()
    for ax, order in zip(axes, orders, strict=True):
        cells = grid[grid["order"] == order]
        # The panel's array: (batch sizes, step sizes), nan where no cell or no judged seed.
        fraction = np.full((len(batches), len(steps)), np.nan)
        rows = cells["batch_size"].map(row_of).to_numpy()
        columns = np.searchsorted(steps, cells["step_size"].to_numpy())
        fraction[rows, columns] = cells["diverged_fraction"].to_numpy()
        missing = np.isnan(fraction)
        mesh = ax.pcolormesh(
            x_edges, y_edges, np.ma.masked_invalid(fraction), cmap=cmap, norm=norm, zorder=MESH_Z
        )
        _tag(mesh, PHASE_COLOR_LABEL)
        if missing.any():
            gaps = ax.pcolormesh(
                x_edges,
                y_edges,
                np.ma.masked_array(np.zeros_like(fraction), mask=~missing),
                cmap=ListedColormap([NO_DATA_COLOR]),
                zorder=MESH_Z,
            )
            _tag(gaps, NO_DATA_LABEL)
            drawn.add(NO_DATA_LABEL)
        for i in range(1, len(batches)):  # white rules between the rows
            ax.axhline(i - 0.5, color="white", linewidth=1.0, zorder=MESH_Z + 0.1)
        if edges is not None:
            for label, (xs, ys) in _phase_edges(edges, row_of, order, x_lim).items():
                if label in PHASE_THEORY_STYLES:
                    lines = LineCollection(
                        _edge_segments(xs, ys), zorder=THEORY_Z, **PHASE_THEORY_STYLES[label]
                    )
                    lines.set_path_effects(HALO)
                    ax.add_collection(lines, autolim=False)
                    _tag(lines, label)
                else:
                    style = PHASE_MEASURED_STYLES[label]
                    points = ax.scatter(xs, ys, s=28, linewidths=1.0, zorder=MEASURED_Z, **style)
                    _tag(points, label)
                drawn.add(label)
        ax.set_xscale("log")
        # Labels at 1, 2, 5 of each decade (every digit on a narrow grid).
        decades = np.log10(x_lim[1] / x_lim[0])
        subs = (1.0, 2.0, 5.0) if decades >= 1.5 else np.arange(1.0, 10.0)
        ax.xaxis.set_major_locator(LogLocator(subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        # No minor ticks: 1, 2, 5 mark the scale, and each tick is artists to lay out.
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(*x_lim)
        ax.set_ylim(y_edges[0], y_edges[-1])
        seeds = cells["seeds"]
        per_cell = (
            f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
        )
        ax.set_title(
            f"{ORDER_TITLES.get(order, order)}\n{int(cells['runs'].sum()):,} configs, "
            f"{per_cell} seeds a cell",
            fontsize="medium",
        )
        ax.set_xlabel("step size")
        ax.tick_params(axis="y", length=0)
    labels = []
    for b in batches:
        words = [w for w, on in (("SGD", b == 1), ("BGD", b in full)) if on]
        labels.append(f"{b} ({', '.join(words)})" if words else f"{b}")
    axes[0].set_yticks(range(len(batches)), labels)
    axes[0].set_ylabel("batch size")

    mappable = ScalarMappable(BoundaryNorm(np.arange(len(colors) + 1) - 0.5, len(colors)), cmap)
    bar = fig.colorbar(mappable, ax=axes, pad=0.01, aspect=25, ticks=np.arange(len(colors)))
    bar.set_ticklabels([label for _, label in PHASE_BLOCKS])
    bar.ax.tick_params(labelsize="small")
    bar.minorticks_off()
    bar.set_label(PHASE_COLOR_LABEL)

    handles = []
    for label, style in PHASE_THEORY_STYLES.items():
        if label in drawn:
            handles.append(_proxy(label, path_effects=HALO, **style))
    for label, style in PHASE_MEASURED_STYLES.items():
        if label in drawn:
            handles.append(
                _proxy(
                    label,
                    marker=style["marker"],
                    markersize=6,
                    markerfacecolor=style["facecolor"],
                    markeredgecolor=style["edgecolor"],
                    markeredgewidth=1.0,
                    color=style["facecolor"],
                )
            )
    if NO_DATA_LABEL in drawn:
        handles.append(Patch(facecolor=NO_DATA_COLOR, label=NO_DATA_LABEL))
    if handles:
        _outside_legend(fig, handles, ncols=min(len(handles), 2))
    return fig
