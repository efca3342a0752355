"""Exact stability theory of gradient descent on y = w·x + b with MSE loss.

The loss is quadratic in θ = (w, b), so every update is affine in θ, and one epoch of any batch
schedule is an affine map θ ↦ M θ + c. Whether a run converges, and where it settles, follows from
that map: if ρ(M) < 1 the epoch-start parameters approach the fixed point θ* = (I − M)⁻¹ c. For BGD
θ* is the least-squares fit; for SGD at a large step size it can be far from it, because inside
an epoch the partial products of (I − η Hᵢ) grow huge before the later samples shrink them again.

Everything is computed in float64 with numpy from the run's own data and settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from gdexp.data import effective_batch_size, make_run_data
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


def _epoch(
    x: np.ndarray, y: np.ndarray, step_size: float, batch_size: int, order: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """(M, c, transient gain) of one epoch, batches sliced exactly as gdexp.train slices them."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if order is not None:
        order = np.asarray(order)
        x, y = x[order], y[order]
    n = len(x)
    batch = min(int(batch_size), n)
    m, c, gain = np.eye(2), np.zeros(2), 0.0
    for start in range(0, n, batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        z = _design(xb)
        # Batch MSE gradient = H_k θ − g_k, so a step is θ ↦ (I − η H_k) θ + η g_k.
        step = np.eye(2) - step_size * hessian(xb)
        m = step @ m
        c = step @ c + step_size * (2.0 / len(xb)) * (z.T @ yb)
        gain = max(gain, float(np.linalg.norm(m, 2)))
    return m, c, gain


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
    m, c, _ = _epoch(x, y, step_size, batch_size, order)
    return m, c


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
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m, c, gain = _epoch(x, y, step_size, batch_size, order)
    radius = float(np.abs(np.linalg.eigvals(m)).max())
    i_minus_m = np.eye(2) - m
    if np.linalg.cond(i_minus_m) < 1.0 / np.finfo(np.float64).eps:
        theta = np.linalg.solve(i_minus_m, c)
        loss = float(np.mean((_design(x) @ theta - y) ** 2))
    else:
        theta, loss = np.full(2, np.nan), float("nan")
    return EpochMapAnalysis(
        step_size=float(step_size),
        batch_size=min(int(batch_size), len(x)),
        spectral_radius=radius,
        transient_gain=gain,
        fixed_point_w=float(theta[0]),
        fixed_point_b=float(theta[1]),
        fixed_point_loss=loss,
        stable=radius < 1.0,
    )


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


def run_data(cfg: DictConfig) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a run, built by gdexp's own data code in float64.

    Always float64, also for float32 runs: with a transient gain of ~3e7 even the float32
    rounding of x moves ρ(M) visibly (0.53 instead of 0.56 for SGD at 0.1 on the reference data).
    """
    cfg64 = OmegaConf.merge(cfg, {"dtype": "float64"})
    data = make_run_data(cfg64)
    return data.x.numpy().astype(np.float64), data.y.numpy().astype(np.float64)


def first_epoch_order(cfg: DictConfig, n: int) -> np.ndarray | None:
    """The sample order of a run's first epoch, drawn exactly as gdexp.train draws it."""
    if not cfg.method.shuffle:
        return None
    return torch.randperm(n, generator=random_streams(int(cfg.seed)).shuffle).numpy()


def _optimal_loss(x: np.ndarray, y: np.ndarray) -> float:
    z = _design(x)
    theta = np.linalg.lstsq(z, y, rcond=None)[0]
    return float(np.mean((z @ theta - y) ** 2))


def _verdict(analysis: EpochMapAnalysis, optimal_loss: float, y: np.ndarray) -> str:
    if not analysis.stable:
        return DIVERGES
    floor = _OPTIMUM_FLOOR * float(np.mean(y**2))
    if analysis.fixed_point_loss <= SETTLES_HIGH_FACTOR * max(optimal_loss, floor):
        return CONVERGES
    return SETTLES_HIGH


def _predict(cfg: DictConfig, x: np.ndarray, y: np.ndarray, optimal_loss: float) -> Prediction:
    n = len(x)
    batch = effective_batch_size(cfg.method.batch_size, n)
    analysis = analyze_epoch_map(x, y, float(cfg.step_size), batch, first_epoch_order(cfg, n))
    return Prediction(
        method=str(cfg.method.name),
        step_size=float(cfg.step_size),
        batch_size=batch,
        bgd_threshold=bgd_threshold(x),
        sgd_threshold=sgd_threshold(x),
        epoch_map=analysis,
        verdict=_verdict(analysis, optimal_loss, y),
    )


def predict(cfg: DictConfig) -> Prediction:
    """Theory's verdict for a run config, from the run's own data, batch size and order.

    "converges": ρ(M) < 1 and the fixed-point loss within 10× the least-squares optimum;
    "settles high": ρ(M) < 1 but the fixed-point loss above that (e.g. SGD at η = 0.1);
    "diverges": ρ(M) ≥ 1.

    Exact for unshuffled runs. Shuffled runs draw a new order every epoch; this analyses the
    first epoch's order only (drawn as gdexp.train draws it), so for them it is an estimate.
    """
    x, y = run_data(cfg)
    return _predict(cfg, x, y, _optimal_loss(x, y))


def predict_many(cfgs: Sequence[DictConfig]) -> list[Prediction]:
    """`predict` for each config, building each distinct data set (data settings, seed) once."""
    cache: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    predictions = []
    for cfg in cfgs:
        key = repr((OmegaConf.to_container(cfg.data), int(cfg.seed)))
        if key not in cache:
            x, y = run_data(cfg)
            cache[key] = (x, y, _optimal_loss(x, y))
        predictions.append(_predict(cfg, *cache[key]))
    return predictions
