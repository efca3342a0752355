"""The regression data of a run, y = slope * x + intercept + noise_std * N(0, 1), built exactly as
the tutorial builds it in float32, and the facts that follow from data alone: the batch a method
really uses and the least-squares fit."""

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


def make_x(n_points: int, x_start: float, x_step: float) -> torch.Tensor:
    """x in float32 as the tutorial builds it, `torch.arange(x_start, x_start + n_points * x_step,
    x_step)`, but always exactly n_points values.

    torch's float32 arange is not x_start + i·x_step rounded: it rounds the start of each block of
    8 values to float32 and steps on from there (the last n mod 16 values are x_start + i·x_step
    rounded), so 24 of the tutorial's 100 points differ from the rounded formula (23 by 1 ulp; the
    51st is -3e-9, not 0). Its values depend only on start, step and their count, not on the end:
    asked for the end x_start + (n_points - 1/2)·x_step it gives exactly n_points values, the very
    ones the tutorial's call gives whenever that call gives n_points (it counts
    ceil((end - start) / step) in float64, which rounding pushes to n_points + 1 for about 1 in 14
    random settings, e.g. 122 points from -5.4 by 0.18). Above 32,768 points torch splits the work
    across threads and the values depend on where it splits, so this runs on one thread. Where
    torch cannot count n_points values (x_step = 0, or an end beyond float64's range), x is
    x_start + i·x_step in float64, rounded to float32.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        end = x_start + (n_points - 0.5) * x_step
        x = torch.arange(x_start, end, x_step, dtype=torch.float32) if x_step else None
    except RuntimeError:  # torch refuses a non-finite end
        x = None
    finally:
        torch.set_num_threads(before)
    if x is None or x.numel() != n_points:
        x = (x_start + x_step * torch.arange(n_points, dtype=torch.float64)).to(torch.float32)
    return x


def make_dataset(data: DataConfig, noise: torch.Generator, dtype: torch.dtype) -> Dataset:
    """The tutorial's data, computed as it computes it, all in float32:

        X = torch.arange(-5, 5, 0.1); Y = -5 * X + 0.4 * torch.randn(X.size())

    with the noise from `noise` instead of the global generator (`torch.manual_seed(s)` and
    `torch.Generator().manual_seed(s)` draw the same numbers), and the intercept, if any, added to
    slope·x before the noise (an intercept of 0 is not added at all, so it changes no bit).
    float64 runs get this float32 data widened: a float32 and a float64 run of one seed train on
    identical numbers and differ only in the arithmetic of training.
    """
    x = make_x(data.n_points, data.x_start, data.x_step)
    eps = torch.randn(data.n_points, generator=noise, dtype=torch.float32)
    y = data.slope * x
    if data.intercept != 0:
        y = y + data.intercept
    y = y + data.noise_std * eps
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
