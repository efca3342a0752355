"""The regression data of a run, y = slope * x + intercept + noise_std * N(0, 1), and the facts
that follow from data alone: the batch a method really uses and the least-squares fit."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from gdexp.config import DataConfig
from gdexp.seeding import random_streams


@dataclass(frozen=True)
class Dataset:
    x: torch.Tensor  # shape (n_points,)
    y: torch.Tensor  # shape (n_points,)


def dtype_name(value: object) -> str:
    """`float32` / `float64`, from a string or the config's DType enum."""
    return str(getattr(value, "value", value))


def torch_dtype(value: object) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[dtype_name(value)]


def effective_batch_size(batch_size: int | None, n_points: int) -> int:
    """The samples one update sees: `null` (BGD) and anything above n_points mean all of them."""
    return min(batch_size or n_points, n_points)


def make_dataset(data: DataConfig, noise: torch.Generator, dtype: torch.dtype) -> Dataset:
    # The noise is drawn in float32 (as torch.randn draws it by default) and y built in float64,
    # then rounded: float32 and float64 runs of one seed share their data.
    x = data.x_start + data.x_step * torch.arange(data.n_points, dtype=torch.float64)
    eps = torch.randn(data.n_points, generator=noise, dtype=torch.float32).to(torch.float64)
    y = data.slope * x + data.intercept + data.noise_std * eps
    return Dataset(x=x.to(dtype), y=y.to(dtype))


def make_run_data(cfg: DictConfig) -> Dataset:
    """A run's data, from its data settings, seed and dtype."""
    return make_dataset(cfg.data, random_streams(cfg.seed).data, torch_dtype(cfg.dtype))


def least_squares_fit(data: Dataset) -> tuple[float, float, float]:
    """(w, b, loss) of the least-squares line, in closed form and float64. Plain sums, not a
    LAPACK solve, so the figure is bit-for-bit the same in every process."""
    x, y = data.x.to(torch.float64), data.y.to(torch.float64)
    dx, dy = x - x.mean(), y - y.mean()
    spread = float((dx * dx).sum())
    # With all x equal (or one point) any slope fits equally well; take the flat line.
    w = float((dx * dy).sum()) / spread if spread > 0 else 0.0
    b = float(y.mean()) - w * float(x.mean())
    loss = float(torch.mean((w * x + b - y) ** 2))
    return w, b, loss
