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

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

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
    starts = np.arange(0, n, batch)
    sizes = np.diff(np.append(starts, n)).astype(np.float64)
    # Batch k: Hessian (2/n_k)·[[Σx², Σx], [Σx, n_k]], gradient at θ = H_k θ − g_k with
    # g_k = (2/n_k)·[Σxy, Σy]; a step is θ ↦ (I − η H_k) θ + η g_k.
    h00 = 2.0 / sizes * np.add.reduceat(xs * xs, starts)
    h01 = 2.0 / sizes * np.add.reduceat(xs, starts)
    h11 = 2.0 / sizes * sizes
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
            m00, m01, m10, m11 = (
                s00 * m00 + s01 * m10,
                s00 * m01 + s01 * m11,
                s01 * m00 + s11 * m10,
                s01 * m01 + s11 * m11,
            )
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


def _verdict(stable: bool, fixed_point_loss: float, optimal_loss: float, y: np.ndarray) -> str:
    if not stable:
        return DIVERGES
    floor = _OPTIMUM_FLOOR * float(np.mean(y**2))
    if fixed_point_loss <= SETTLES_HIGH_FACTOR * max(optimal_loss, floor):
        return CONVERGES
    return SETTLES_HIGH


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
