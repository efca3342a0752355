"""Exact stability theory of gradient descent on y = w·x + b with MSE loss.

The loss is quadratic in θ = (w, b), so every update is affine in θ, and one epoch of any batch
schedule is an affine map θ ↦ M θ + c. Whether a run converges, and where it settles, follows from
that map: if ρ(M) < 1 the epoch-start parameters approach the fixed point θ* = (I − M)⁻¹ c. For BGD
θ* is the least-squares fit; for SGD at a large step size it can be far from it, because inside
an epoch the partial products of (I − η Hᵢ) grow huge before the later samples shrink them again.

Everything is computed in float64 with numpy from the run's own data and settings. M depends on
x, the step size and the batches only, c also on y: `epoch_maps` computes both for many step
sizes and many data sets sharing x at once (2x2 algebra written out elementwise, so a config's
numbers do not depend on what it is computed with), and `predict_settings` computes each
distinct (data, batches, order) once for a whole grid of runs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from omegaconf import DictConfig

from gdexp.config import DataConfig
from gdexp.data import Dataset, effective_batch_size, least_squares_fit, make_dataset
from gdexp.seeding import random_streams

CONVERGES = "converges"
SETTLES_HIGH = "settles high"
DIVERGES = "diverges"
VERDICTS = (CONVERGES, SETTLES_HIGH, DIVERGES)

# A stable run "converges" if its fixed-point loss is within this factor of the optimum.
SETTLES_HIGH_FACTOR = 10.0
# Floor for that optimum, as a share of the zero model's loss mean(y²): on noise-free data the
# optimum is ~0 and θ* carries float64 rounding, which must not read as "settles high".
_OPTIMUM_FLOOR = 1e-12
_EPS = np.finfo(np.float64).eps


def _design(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.stack([x, np.ones_like(x)], axis=1)


def hessian(x: np.ndarray) -> np.ndarray:
    """MSE Hessian on the data, H = (2/N)·Σᵢ [[xᵢ², xᵢ], [xᵢ, 1]] (2x2, float64)."""
    z = _design(x)
    return 2.0 / len(z) * z.T @ z


def bgd_threshold(x: np.ndarray) -> float:
    """BGD converges iff step_size < 2/λ_max(H)."""
    return float(2.0 / np.linalg.eigvalsh(hessian(x))[-1])


def sample_thresholds(x: np.ndarray) -> np.ndarray:
    """Per sample i: a step on sample i alone is stable iff step_size < 1/(xᵢ² + 1).

    The per-sample Hessian 2·[[x², x], [x, 1]] has rank one, with eigenvalue 2(x² + 1).
    """
    x = np.asarray(x, dtype=np.float64)
    return 1.0 / (x**2 + 1.0)


def sgd_threshold(x: np.ndarray) -> float:
    """The strictest sample's threshold, min of `sample_thresholds`.

    Below it every single SGD step contracts; above it an epoch can still be stable overall
    (ρ(M) < 1), which is what `analyze_epoch_map` decides.
    """
    return float(sample_thresholds(x).min())


def _norm2(a, b, c, d):
    """Spectral norm of [[a, b], [c, d]], elementwise over arrays (the larger singular value)."""
    return 0.5 * (np.hypot(a + d, c - b) + np.hypot(a - d, b + c))


def _radius(a, b, c, d):
    """Spectral radius of [[a, b], [c, d]], elementwise; inf where the entries overflowed."""
    half_trace = 0.5 * (a + d)
    disc = (0.5 * (a - d)) ** 2 + b * c
    real = np.abs(half_trace) + np.sqrt(np.maximum(disc, 0.0))
    complex_pair = np.sqrt(np.maximum(a * d - b * c, 0.0))  # |λ|² = det for a conjugate pair
    radius = np.where(disc >= 0, real, complex_pair)
    return np.where(np.isfinite(radius), radius, np.inf)


def _batch_hessians(
    xs: np.ndarray, batch: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(starts, sizes, h00, h01, h11) of consecutive batches of `batch` samples along the last
    axis of `xs` (the last one shorter if N is not a multiple), as gdexp.train slices them.

    Batch k's MSE Hessian is H_k = (2/n_k)·[[Σx², Σx], [Σx, n_k]] = [[h00, h01], [h01, h11]];
    a step is θ ↦ (I − η H_k) θ + η g_k.
    """
    n = xs.shape[-1]
    starts = np.arange(0, n, batch)
    sizes = np.diff(np.append(starts, n)).astype(np.float64)
    h00 = 2.0 / sizes * np.add.reduceat(xs * xs, starts, axis=-1)
    h01 = 2.0 / sizes * np.add.reduceat(xs, starts, axis=-1)
    h11 = np.broadcast_to(2.0 / sizes * sizes, h00.shape)
    return starts, sizes, h00, h01, h11


def _step_times(s00, s01, s11, m00, m01, m10, m11):
    """[[s00, s01], [s01, s11]] @ [[m00, m01], [m10, m11]], elementwise over arrays: a step
    matrix I − η H_k (symmetric) applied to a running product."""
    return (
        s00 * m00 + s01 * m10,
        s00 * m01 + s01 * m11,
        s01 * m00 + s11 * m10,
        s01 * m01 + s11 * m11,
    )


@dataclass(frozen=True)
class EpochMaps:
    """One epoch's affine map θ ↦ M θ + c at S step sizes on D data sets that share x and the
    batches: M is (S, 2, 2), c is (S, D, 2); the rest as named, per step size (S,) or per step
    size and data set (S, D)."""

    step_sizes: np.ndarray  # (S,)
    batch_size: int
    m: np.ndarray  # (S, 2, 2)
    c: np.ndarray  # (S, D, 2)
    spectral_radius: np.ndarray  # (S,) ρ(M); inf if M overflowed
    transient_gain: np.ndarray  # (S,) largest spectral norm of a partial product Π_{k≤j}(I − η H_k)
    fixed_point_w: np.ndarray  # (S, D) θ* = (I − M)⁻¹ c, nan where I − M is singular
    fixed_point_b: np.ndarray  # (S, D)
    fixed_point_loss: np.ndarray  # (S, D) full-data MSE at θ*

    @property
    def stable(self) -> np.ndarray:
        return self.spectral_radius < 1.0


def epoch_maps(
    x: np.ndarray,
    ys: np.ndarray,
    step_sizes: Sequence[float] | np.ndarray,
    batch_size: int = 1,
    order: np.ndarray | None = None,
) -> EpochMaps:
    """One epoch's map, its spectral radius, transient gain and fixed point, for every step size
    in `step_sizes` and every row of `ys` (data sets that share `x`; one 1-D y is one data set).

    Batches are sliced exactly as gdexp.train slices them: consecutive batches of `batch_size`
    samples (the last one shorter if N is not a multiple) in `order` (default: data order).
    """
    x = np.asarray(x, dtype=np.float64)
    ys = np.atleast_2d(np.asarray(ys, dtype=np.float64))
    eta = np.atleast_1d(np.asarray(step_sizes, dtype=np.float64))
    if order is not None:
        order = np.asarray(order)
        xs, yo = x[order], ys[:, order]
    else:
        xs, yo = x, ys
    n = len(xs)
    batch = min(int(batch_size), n)
    starts, sizes, h00, h01, h11 = _batch_hessians(xs, batch)
    # g_k = (2/n_k)·[Σxy, Σy]: the gradient of batch k at θ is H_k θ − g_k.
    g0 = 2.0 / sizes * np.add.reduceat(xs * yo, starts, axis=1)  # (D, K)
    g1 = 2.0 / sizes * np.add.reduceat(yo, starts, axis=1)

    shape = (len(eta), len(ys))
    m00, m01, m10, m11 = (
        np.ones_like(eta),
        np.zeros_like(eta),
        np.zeros_like(eta),
        np.ones_like(eta),
    )
    c0, c1 = np.zeros(shape), np.zeros(shape)
    gain = np.zeros_like(eta)
    col = eta[:, None]
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(len(starts)):
            s00, s01, s11 = 1.0 - eta * h00[k], -eta * h01[k], 1.0 - eta * h11[k]
            m00, m01, m10, m11 = _step_times(s00, s01, s11, m00, m01, m10, m11)
            c0, c1 = (
                s00[:, None] * c0 + s01[:, None] * c1 + col * g0[:, k],
                s01[:, None] * c0 + s11[:, None] * c1 + col * g1[:, k],
            )
            gain = np.fmax(gain, _norm2(m00, m01, m10, m11))
        radius = _radius(m00, m01, m10, m11)
        # θ* solves (I − M) θ = c; where I − M is singular to float64 precision there is none.
        p, q, r, s = 1.0 - m00, -m01, -m10, 1.0 - m11
        det = p * s - q * r
        singular = ~(_norm2(p, q, r, s) ** 2 < np.abs(det) / _EPS)  # cond₂ = σ_max² / |det|
        det = np.where(singular, np.nan, det)[:, None]
        w = (s[:, None] * c0 - q[:, None] * c1) / det
        b = (p[:, None] * c1 - r[:, None] * c0) / det
        residual = w[:, :, None] * x + b[:, :, None] - ys[None, :, :]
        loss = np.mean(residual**2, axis=2)
    return EpochMaps(
        step_sizes=eta,
        batch_size=batch,
        m=np.stack([np.stack([m00, m01], -1), np.stack([m10, m11], -1)], -2),
        c=np.stack([c0, c1], -1),
        spectral_radius=radius,
        transient_gain=np.where(np.isnan(gain), np.inf, gain),
        fixed_point_w=w,
        fixed_point_b=b,
        fixed_point_loss=loss,
    )


def epoch_map(
    x: np.ndarray,
    y: np.ndarray,
    step_size: float,
    batch_size: int = 1,
    order: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(M, c) of one epoch as the affine map θ ↦ M θ + c, θ = (w, b).

    The epoch runs over consecutive batches of `batch_size` samples (the last one shorter if N
    is not a multiple) in `order` (default: data order); M = Π_k (I − η·H_k) with later batches
    on the left, H_k the MSE Hessian of batch k. batch_size >= N gives BGD's map.
    """
    maps = epoch_maps(x, y, [step_size], batch_size, order)
    return maps.m[0], maps.c[0, 0]


@dataclass(frozen=True)
class EpochMapAnalysis:
    step_size: float
    batch_size: int
    spectral_radius: float  # ρ(M)
    transient_gain: float  # largest spectral norm of a partial product Π_{k≤j}(I − η H_k)
    fixed_point_w: float  # θ* = (I − M)⁻¹ c (nan if I − M is singular)
    fixed_point_b: float
    fixed_point_loss: float  # full-data MSE at θ*: the epoch-start loss a run settles on
    stable: bool  # ρ(M) < 1


def _analysis(maps: EpochMaps, i: int, j: int) -> EpochMapAnalysis:
    return EpochMapAnalysis(
        step_size=float(maps.step_sizes[i]),
        batch_size=maps.batch_size,
        spectral_radius=float(maps.spectral_radius[i]),
        transient_gain=float(maps.transient_gain[i]),
        fixed_point_w=float(maps.fixed_point_w[i, j]),
        fixed_point_b=float(maps.fixed_point_b[i, j]),
        fixed_point_loss=float(maps.fixed_point_loss[i, j]),
        stable=bool(maps.stable[i]),
    )


def analyze_epoch_map(
    x: np.ndarray,
    y: np.ndarray,
    step_size: float,
    batch_size: int = 1,
    order: np.ndarray | None = None,
) -> EpochMapAnalysis:
    """Spectral radius, transient gain and fixed point of one epoch's map.

    The transient gain says how much an epoch can amplify anything (including rounding) before
    its end: at SGD η = 0.1 on the reference data it is ~3e7, so float32 runs (ε ≈ 6e-8) only
    loosely follow θ*, while float64 runs track it closely.
    """
    return _analysis(epoch_maps(x, y, [step_size], batch_size, order), 0, 0)


@dataclass(frozen=True)
class Prediction:
    """Theory's verdict for one run config."""

    method: str
    step_size: float
    batch_size: int  # effective (N for bgd)
    bgd_threshold: float
    sgd_threshold: float
    epoch_map: EpochMapAnalysis
    verdict: str  # "converges", "settles high" or "diverges"


@dataclass(frozen=True)
class RunSettings:
    """What theory reads from a run config (read once: a DictConfig lookup costs ~20 µs)."""

    method: str
    step_size: float
    batch_size: int | None  # as configured; None for bgd
    shuffle: bool
    seed: int
    data: tuple[int, float, float, float, float, float]  # DataConfig's fields, in order

    @classmethod
    def of(cls, cfg: DictConfig) -> RunSettings:
        method, data = cfg.method, cfg.data
        return cls(
            method=str(method.name),
            step_size=float(cfg.step_size),
            batch_size=None if method.batch_size is None else int(method.batch_size),
            shuffle=bool(method.shuffle),
            seed=int(cfg.seed),
            data=(
                int(data.n_points),
                float(data.x_start),
                float(data.x_step),
                float(data.slope),
                float(data.intercept),
                float(data.noise_std),
            ),
        )


def settings_data(data: tuple, seed: int) -> Dataset:
    """A run's data from its data settings and seed, built by gdexp's own data code, in float64.

    float64 runs train on this; float32 runs on the same numbers in float32 (gdexp.data builds
    the data in float32 and widens it), so theory sees exactly the data every run sees.
    """
    return make_dataset(DataConfig(*data), random_streams(seed).data, torch.float64)


def run_data(cfg: DictConfig) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a run config, in float64 (see `settings_data`)."""
    settings = RunSettings.of(cfg)
    data = settings_data(settings.data, settings.seed)
    return data.x.numpy(), data.y.numpy()


def _first_epoch_order(seed: int, n: int) -> np.ndarray:
    return torch.randperm(n, generator=random_streams(seed).shuffle).numpy()


def first_epoch_order(cfg: DictConfig, n: int) -> np.ndarray | None:
    """The sample order of a run's first epoch, drawn exactly as gdexp.train draws it."""
    return _first_epoch_order(int(cfg.seed), n) if cfg.method.shuffle else None


def settles_high_loss(optimal_loss: float, y: np.ndarray) -> float:
    """The fixed-point loss above which a stable run "settles high" rather than "converges":
    `SETTLES_HIGH_FACTOR` times the optimum (floored, see `_OPTIMUM_FLOOR`)."""
    floor = _OPTIMUM_FLOOR * float(np.mean(np.asarray(y, dtype=np.float64) ** 2))
    return SETTLES_HIGH_FACTOR * max(optimal_loss, floor)


def verdicts(stable: np.ndarray, fixed_point_loss: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Theory's verdict per config, as words: "diverges" unless the epoch map is stable
    (ρ(M) < 1); then "converges" if its fixed point's loss is at most `limit`
    (`settles_high_loss`), else "settles high"."""
    return np.where(
        ~np.asarray(stable, dtype=bool),
        DIVERGES,
        np.where(np.asarray(fixed_point_loss) <= np.asarray(limit), CONVERGES, SETTLES_HIGH),
    ).astype(object)


def _verdict(stable: bool, fixed_point_loss: float, optimal_loss: float, y: np.ndarray) -> str:
    return str(verdicts(stable, fixed_point_loss, settles_high_loss(optimal_loss, y))[()])


@dataclass(frozen=True)
class _Data:
    x: np.ndarray
    y: np.ndarray
    optimal_loss: float


def predict_settings(settings: Sequence[RunSettings]) -> list[Prediction]:
    """Theory's prediction for each run, computing each distinct data set once and each distinct
    (data, batch size, order) once for all its step sizes and seeds (`epoch_maps`)."""
    datasets: dict[tuple, _Data] = {}
    thresholds: dict[tuple, tuple[float, float]] = {}
    # (data settings, batch, order seed or None) -> the seeds and step sizes it needs
    groups: dict[tuple, tuple[dict[int, None], dict[float, None]]] = defaultdict(lambda: ({}, {}))
    for s in settings:
        if (s.data, s.seed) not in datasets:
            data = settings_data(s.data, s.seed)
            datasets[s.data, s.seed] = _Data(
                data.x.numpy(), data.y.numpy(), least_squares_fit(data)[2]
            )
        if s.data not in thresholds:
            x = datasets[s.data, s.seed].x
            thresholds[s.data] = (bgd_threshold(x), sgd_threshold(x))
        batch = effective_batch_size(s.batch_size, s.data[0])
        seeds, steps = groups[s.data, batch, s.seed if s.shuffle else None]
        seeds[s.seed] = None
        steps[s.step_size] = None

    results: dict[tuple, EpochMaps] = {}
    where: dict[tuple, tuple[int, dict[int, int], dict[float, int]]] = {}
    for key, (seeds, steps) in groups.items():
        data_key, batch, order_seed = key
        first = datasets[data_key, next(iter(seeds))]
        ys = np.stack([datasets[data_key, seed].y for seed in seeds])
        order = None if order_seed is None else _first_epoch_order(order_seed, len(first.x))
        results[key] = epoch_maps(first.x, ys, list(steps), batch, order)
        where[key] = (
            batch,
            {seed: j for j, seed in enumerate(seeds)},
            {step: i for i, step in enumerate(steps)},
        )

    predictions = []
    for s in settings:
        batch = effective_batch_size(s.batch_size, s.data[0])
        key = (s.data, batch, s.seed if s.shuffle else None)
        _, seed_index, step_index = where[key]
        analysis = _analysis(results[key], step_index[s.step_size], seed_index[s.seed])
        data = datasets[s.data, s.seed]
        predictions.append(
            Prediction(
                method=s.method,
                step_size=s.step_size,
                batch_size=batch,
                bgd_threshold=thresholds[s.data][0],
                sgd_threshold=thresholds[s.data][1],
                epoch_map=analysis,
                verdict=_verdict(
                    analysis.stable, analysis.fixed_point_loss, data.optimal_loss, data.y
                ),
            )
        )
    return predictions


def predict(cfg: DictConfig) -> Prediction:
    """Theory's verdict for a run config, from the run's own data, batch size and order.

    "converges": ρ(M) < 1 and the fixed-point loss within 10× the least-squares optimum;
    "settles high": ρ(M) < 1 but the fixed-point loss above that (e.g. SGD at η = 0.1);
    "diverges": ρ(M) ≥ 1.

    Exact for unshuffled runs. Shuffled runs draw a new order every epoch; this analyses the
    first epoch's order only (drawn as gdexp.train draws it), so for them it is an estimate.
    """
    return predict_settings([RunSettings.of(cfg)])[0]


def predict_many(cfgs: Sequence[DictConfig]) -> list[Prediction]:
    """`predict` for each config, computed together (see `predict_settings`)."""
    return predict_settings([RunSettings.of(cfg) for cfg in cfgs])


# --- Step-size edges: where, as the step size grows, a batch schedule stops converging -------

DATA_ORDER = "data order"
SHUFFLED = "shuffled"  # reshuffled every epoch, as gdexp.train does with shuffle=true
# What an edge's diverge_step_size is:
EXACT = "exact"  # from the epoch map itself (data order, or one batch of all the data)
ESTIMATE = "estimate"  # from sampled epoch orders (shuffled)
BRACKET = "bracket"  # none: only the bounds (shuffled, nothing sampled)
EDGE_KINDS = (EXACT, ESTIMATE, BRACKET)

PHASE_MAP_BATCH_SIZES = (1, 2, 5, 10, 20, 50, 100)

# Crossings are looked for on a log grid of step sizes, then narrowed down inside the grid step
# where they happen. A window narrower than a grid step (1.2 %) can be missed; on the tutorial
# data the narrowest is batch 10's stable window 0.146-0.152, 3 grid steps wide.
_SCAN_PER_DECADE = 200
_SCAN_DECADES_BELOW = 3  # the scan starts this far below the worst-batch bound ...
_SCAN_DECADES_ABOVE = 1  # ... ends this far above the larger bound, ...
_SCAN_MAX_DECADES_ABOVE = 4  # ... and goes on decade by decade up to here while ρ(M) < 1
_REFINE_POINTS = 15  # points per bracket in each narrowing round (shrinks it 16-fold)
_REFINE_RTOL = 1e-12  # narrowed until hi/lo − 1 is below this
# The reshuffled estimate's grid: the growth rate averages over many orders, so it is smooth.
_SHUFFLED_SCAN_PER_DECADE = 50
_SHUFFLED_BURN_IN = 5  # epochs left out of the growth rate while the direction settles
# Above this many samples the exact worst subset costs O(N³); the per-sample bound stands in.
_EXACT_WORST_SUBSET_MAX_N = 300


@dataclass(frozen=True)
class StepSizeEdge:
    """Theory's critical step sizes for one batch schedule on one data set: as the step size η
    grows from 0, where the verdict (`predict`) stops being "converges".

    `diverge_step_size` is, by `kind`: EXACT, the smallest η at which the epoch map's spectral
    radius ρ(M(η)) reaches 1 (inf if none up to 10⁴ times the larger bound); ESTIMATE
    (shuffled), the smallest η at which the growth rate of a product of independently reshuffled
    epochs, averaged over sampled orders, reaches 0; BRACKET, nan (only the bounds).
    """

    seed: int | None  # the data's seed (None: data given as arrays)
    batch_size: int  # effective: at most N
    order: str  # DATA_ORDER or SHUFFLED
    kind: str  # EXACT, ESTIMATE or BRACKET
    diverge_step_size: float
    # EXACT only: the smallest η above the edge where ρ(M) < 1 again (nan: none in the scan).
    # Runs there are stable again: ρ is not monotone in η.
    restable_step_size: float
    # The smallest η at which the verdict is "settles high" (ρ(M) < 1, fixed-point loss above
    # `settles_high_loss`); nan if the verdict goes from "converges" straight to "diverges".
    # EXACT only: a reshuffled run has no fixed point (nan for ESTIMATE and BRACKET).
    settle_high_step_size: float
    # Proven: below it no step of any batch the schedule can take expands (‖I − ηH_B‖ ≤ 1),
    # so no run diverges; the edge is at or above it.
    worst_batch_bound: float
    # 2/λmax(H), BGD's exact edge. For smaller batches a reference, not a proven bound: in data
    # order, batches of 2-20 stay stable up to ~8 % past it on the tutorial data.
    full_batch_bound: float

    @property
    def not_converging_step_size(self) -> float:
        """The smallest η whose verdict is not "converges" (nan where theory cannot say: a
        reshuffled schedule has no fixed point to settle high on)."""
        if self.kind != EXACT:
            return math.nan
        return float(np.fmin(self.settle_high_step_size, self.diverge_step_size))


def _largest_batch_curvature(x: np.ndarray, size: int) -> float:
    """max over every subset S of `size` samples of λmax(H_S), exactly.

    λmax(H_S) = max over unit v of (2/|S|)·Σ_S (v·zᵢ)², zᵢ = (xᵢ, 1); for a given v the worst S
    is the `size` largest (v·zᵢ)². That set changes only at directions where |v·zᵢ| = |v·zⱼ|
    (v ⟂ zᵢ ∓ zⱼ), so one v between each two neighbouring such directions finds every candidate.
    """
    z = _design(x)
    n = len(z)
    size = min(size, n)
    if size == n:
        return float(2.0 / bgd_threshold(x))  # λmax(H)
    if n > _EXACT_WORST_SUBSET_MAX_N:
        # No batch's λmax exceeds the largest per-sample one, 2·(xᵢ² + 1): a looser bound.
        return float(2.0 / sgd_threshold(x))
    i, j = np.triu_indices(n, 1)
    normals = np.concatenate([z[i] - z[j], z[i] + z[j]])
    critical = np.unique(np.arctan2(normals[:, 0], -normals[:, 1]) % np.pi)
    between = 0.5 * (critical + np.append(critical[1:], critical[0] + np.pi))
    v = np.stack([np.cos(between), np.sin(between)], axis=1)
    worst = np.argpartition(-((v @ z.T) ** 2), size - 1, axis=1)[:, :size]
    xs = x[worst]
    h00 = 2.0 / size * (xs * xs).sum(axis=1)
    h01 = 2.0 / size * xs.sum(axis=1)
    return float(_radius(h00, h01, h01, np.full_like(h00, 2.0)).max())  # H is PSD: ρ = λmax


def worst_batch_bound(x: np.ndarray, batch_size: int, shuffled: bool) -> float:
    """The largest step size at which no step of the schedule expands: 2/λmax of the worst
    batch Hessian, over the batches data order takes, or over every batch a shuffle can draw
    (all subsets of the batch size, and of the shorter last batch's). Below it ‖M‖ ≤ 1 in any
    order, so no run diverges. Batch 1 gives `sgd_threshold`, batch N `bgd_threshold`."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    batch = min(int(batch_size), n)
    if not shuffled:
        _, _, h00, h01, h11 = _batch_hessians(x, batch)
        return float(2.0 / _radius(h00, h01, h01, h11).max())
    sizes = {batch, n % batch} - {0}
    return float(2.0 / max(_largest_batch_curvature(x, size) for size in sizes))


def _log_grid(lo: float, hi: float, per_decade: int) -> np.ndarray:
    return np.geomspace(lo, hi, max(2, math.ceil(per_decade * math.log10(hi / lo)) + 1))


def _first_true(values: np.ndarray) -> int | None:
    """Index of the first True in a 1-D array, None if there is none."""
    return int(np.argmax(values)) if values.any() else None


def _narrow_onsets(
    evaluate: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """The step size where each predicate q first turns true inside (lo[q], hi[q]], given that
    it is false at lo[q] and true at hi[q]: returns the narrowed hi (to `_REFINE_RTOL`).

    `evaluate(step_sizes)` returns every predicate at every step size, shape (P, Q): all the
    brackets share each round's one evaluation (one `epoch_maps` call), which costs about as much
    for 100 step sizes as for one. Each round keeps the first true point and the one before it.
    """
    lo, hi = lo.astype(np.float64), hi.astype(np.float64)
    fractions = np.arange(1, _REFINE_POINTS + 1) / (_REFINE_POINTS + 1)
    todo = np.isfinite(lo) & np.isfinite(hi) & (lo > 0)
    while True:
        todo &= hi / np.where(todo, lo, 1.0) - 1.0 > _REFINE_RTOL
        q = np.flatnonzero(todo)
        if not q.size:
            return hi
        points = lo[q, None] * (hi[q] / lo[q])[:, None] ** fractions  # (A, P)
        values = evaluate(points.ravel()).reshape(len(q), _REFINE_POINTS, -1)
        values = values[np.arange(len(q)), :, q]  # predicate q at its own bracket's points
        for a, bracket in enumerate(q):
            first = _first_true(values[a])
            if first is None:
                lo[bracket] = points[a, -1]
            else:
                hi[bracket] = points[a, first]
                lo[bracket] = points[a, first - 1] if first else lo[bracket]


@dataclass(frozen=True)
class _OrderedEdges:
    diverge: float
    restable: float
    settle_high: np.ndarray  # per data set


def _data_order_edges(
    x: np.ndarray, ys: np.ndarray, batch: int, limits: np.ndarray, start: float, stop: float
) -> _OrderedEdges:
    """The EXACT edges of one batch size in data order, for every data set in `ys`."""

    def evaluate(step_sizes: np.ndarray) -> np.ndarray:
        # Columns: ρ ≥ 1, ρ < 1, then "settles high" per data set, as `_verdict` decides it
        # (a nan fixed-point loss is not within the limit either).
        maps = epoch_maps(x, ys, step_sizes, batch)
        stable = maps.stable
        high = stable[:, None] & ~(maps.fixed_point_loss <= limits)
        return np.column_stack([~stable, stable, high])

    grid = _log_grid(start, stop, _SCAN_PER_DECADE)
    values = evaluate(grid)
    while not values[:, 0].any() and grid[-1] < stop * 10.0**_SCAN_MAX_DECADES_ABOVE:
        more = _log_grid(grid[-1], grid[-1] * 10.0, _SCAN_PER_DECADE)[1:]
        grid, values = np.append(grid, more), np.vstack([values, evaluate(more)])

    n_columns = values.shape[1]
    lo, hi = np.full(n_columns, np.nan), np.full(n_columns, np.nan)
    onset = np.full(n_columns, np.nan)
    unstable = _first_true(values[:, 0])
    # Grid index where each predicate first holds (above the edge for ρ < 1, below it for
    # "settles high"), or None.
    firsts: list[int | None] = [unstable, None]
    if unstable is not None:
        again = _first_true(values[unstable:, 1])
        firsts[1] = None if again is None else unstable + again
    for column in range(2, n_columns):
        high = _first_true(values[: len(grid) if unstable is None else unstable, column])
        firsts.append(high)
    for column, first in enumerate(firsts):
        if first == 0:
            onset[column] = 0.0  # already at the scan's start, 3 decades below the bound
        elif first is not None:
            lo[column], hi[column] = grid[first - 1], grid[first]
    narrowed = _narrow_onsets(evaluate, lo, hi)
    onset = np.where(np.isnan(onset), narrowed, onset)
    diverge = math.inf if unstable is None else float(onset[0])
    return _OrderedEdges(diverge, float(onset[1]), onset[2:])


def _reshuffled_growth_rate(
    x: np.ndarray, batch: int, step_sizes: np.ndarray, orders: np.ndarray
) -> np.ndarray:
    """Per step size, the mean log growth per epoch of a direction carried through a product of
    reshuffled epochs: orders (K, T, N) are K chains of T epoch orders. The linear part alone
    decides stability; a chain's first `_SHUFFLED_BURN_IN` epochs are left out while the
    direction settles. Negative: the product shrinks (stable), positive: it grows. The same
    orders at every step size make the rate continuous in η, so its zero can be narrowed down.
    """
    _, _, h00, h01, h11 = _batch_hessians(x[orders], batch)  # (K, T, batches)
    eta = np.asarray(step_sizes, dtype=np.float64)[:, None, None]
    shape = (len(eta), *orders.shape[:2])
    m00, m01, m10, m11 = np.ones(shape), np.zeros(shape), np.zeros(shape), np.ones(shape)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for k in range(h00.shape[-1]):
            s00, s01, s11 = 1.0 - eta * h00[..., k], -eta * h01[..., k], 1.0 - eta * h11[..., k]
            m00, m01, m10, m11 = _step_times(s00, s01, s11, m00, m01, m10, m11)
        v0, v1 = np.ones(shape[:2]), np.ones(shape[:2])
        growth = np.zeros(shape[:2])
        for t in range(shape[2]):
            v0, v1 = m00[..., t] * v0 + m01[..., t] * v1, m10[..., t] * v0 + m11[..., t] * v1
            norm = np.hypot(v0, v1)
            if t >= _SHUFFLED_BURN_IN:
                growth += np.log(norm)
            v0, v1 = v0 / norm, v1 / norm
        rate = growth.mean(axis=1) / (shape[2] - _SHUFFLED_BURN_IN)
    return np.where(np.isnan(rate), np.inf, rate)


def _reshuffled_edge(
    x: np.ndarray, batch: int, start: float, stop: float, orders: np.ndarray
) -> float:
    """The ESTIMATE: the smallest η at which `_reshuffled_growth_rate` reaches 0."""

    def evaluate(step_sizes: np.ndarray) -> np.ndarray:
        return (_reshuffled_growth_rate(x, batch, step_sizes, orders) >= 0)[:, None]

    grid = _log_grid(start, stop * 10.0**_SCAN_MAX_DECADES_ABOVE, _SHUFFLED_SCAN_PER_DECADE)
    grid = grid[grid <= stop * 1.0001]
    values = evaluate(grid)[:, 0]
    while not values.any() and grid[-1] < stop * 10.0**_SCAN_MAX_DECADES_ABOVE:
        more = _log_grid(grid[-1], grid[-1] * 10.0, _SHUFFLED_SCAN_PER_DECADE)[1:]
        grid, values = np.append(grid, more), np.append(values, evaluate(more)[:, 0])
    first = _first_true(values)
    if first is None:
        return math.inf
    if first == 0:
        return float(grid[0])
    return float(_narrow_onsets(evaluate, grid[first - 1 : first], grid[first : first + 1])[0])


def step_size_edges(
    x: np.ndarray,
    ys: np.ndarray,
    batch_sizes: Sequence[int] = PHASE_MAP_BATCH_SIZES,
    *,
    shuffled: str | None = ESTIMATE,
    seeds: Sequence[int | None] | None = None,
    chains: int = 8,
    epochs: int = 30,
    orders_seed: int = 0,
) -> list[StepSizeEdge]:
    """Theory's edges for each batch size, in data order and (unless `shuffled` is None)
    reshuffled every epoch, on each data set: the rows of `ys` share `x` (one 1-D y is one data
    set). One `StepSizeEdge` per (data set, batch size, order), data sets outermost.

    `shuffled`: ESTIMATE samples `chains` chains of `epochs` epoch orders each
    (numpy's default_rng(`orders_seed`): a property of the data, not of any run's shuffle
    stream); BRACKET gives the bounds only. A batch of all the data is EXACT in any order.
    `seeds` labels the data sets (default: None each).
    """
    x = np.asarray(x, dtype=np.float64)
    ys = np.atleast_2d(np.asarray(ys, dtype=np.float64))
    seeds = [None] * len(ys) if seeds is None else list(seeds)
    if len(seeds) != len(ys):
        raise ValueError(f"{len(seeds)} seeds for {len(ys)} data sets")
    if shuffled not in (None, ESTIMATE, BRACKET):
        raise ValueError(f"shuffled is {ESTIMATE!r}, {BRACKET!r} or None, not {shuffled!r}")
    n = len(x)
    full_batch = bgd_threshold(x)
    limits = np.array(
        [
            settles_high_loss(
                least_squares_fit(Dataset(torch.from_numpy(x), torch.from_numpy(y)))[2], y
            )
            for y in ys
        ]
    )
    orders = np.random.default_rng(orders_seed).permuted(
        np.broadcast_to(np.arange(n), (chains, epochs, n)), axis=2
    )
    rows: list[list[StepSizeEdge]] = [[] for _ in ys]
    for batch in dict.fromkeys(min(int(b), n) for b in batch_sizes):
        bound = worst_batch_bound(x, batch, shuffled=False)
        start = bound * 10.0**-_SCAN_DECADES_BELOW
        stop = max(bound, full_batch) * 10.0**_SCAN_DECADES_ABOVE
        exact = _data_order_edges(x, ys, batch, limits, start, stop)
        for j, seed in enumerate(seeds):
            ordered = StepSizeEdge(
                seed=seed,
                batch_size=batch,
                order=DATA_ORDER,
                kind=EXACT,
                diverge_step_size=exact.diverge,
                restable_step_size=exact.restable,
                settle_high_step_size=float(exact.settle_high[j]),
                worst_batch_bound=bound,
                full_batch_bound=full_batch,
            )
            rows[j].append(ordered)
        if shuffled is None:
            continue
        if batch == n:  # one batch of all the data: the order changes nothing but rounding
            for j in range(len(ys)):
                rows[j].append(replace(rows[j][-1], order=SHUFFLED))
            continue
        any_bound = worst_batch_bound(x, batch, shuffled=True)
        estimate = math.nan
        if shuffled == ESTIMATE:
            stop = max(any_bound, full_batch) * 10.0**_SCAN_DECADES_ABOVE
            estimate = _reshuffled_edge(x, batch, any_bound, stop, orders)
        for j, seed in enumerate(seeds):
            rows[j].append(
                StepSizeEdge(
                    seed=seed,
                    batch_size=batch,
                    order=SHUFFLED,
                    kind=shuffled,
                    diverge_step_size=estimate,
                    restable_step_size=math.nan,
                    settle_high_step_size=math.nan,
                    worst_batch_bound=any_bound,
                    full_batch_bound=full_batch,
                )
            )
    return [edge for per_data in rows for edge in per_data]


def settings_step_size_edges(
    data: DataConfig | DictConfig | tuple,
    seeds: Sequence[int],
    batch_sizes: Sequence[int] = PHASE_MAP_BATCH_SIZES,
    **options,
) -> list[StepSizeEdge]:
    """`step_size_edges` on the runs' own data: `data` is the runs' data settings (a DataConfig
    or its fields in order, as `RunSettings.data`), each seed one data set built as the runs
    build it (`settings_data`). All seeds share x; only the noise in y differs."""
    if not isinstance(data, tuple):
        data = tuple(getattr(data, field.name) for field in fields(DataConfig))
    datasets = [settings_data(data, int(seed)) for seed in seeds]
    x = datasets[0].x.numpy()
    ys = np.stack([d.y.numpy() for d in datasets])
    return step_size_edges(x, ys, batch_sizes, seeds=[int(s) for s in seeds], **options)
