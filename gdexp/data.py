"""The regression data of a run: y = slope * x + intercept + noise_std * N(0, 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gdexp.config import DataConfig


@dataclass(frozen=True)
class Dataset:
    x: torch.Tensor  # shape (n_points,)
    y: torch.Tensor  # shape (n_points,)


def dtype_name(value: object) -> str:
    """`float32` / `float64`, from a string or the config's DType enum."""
    return str(getattr(value, "value", value))


def torch_dtype(value: object) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[dtype_name(value)]


def make_dataset(data: DataConfig, noise: torch.Generator, dtype: torch.dtype) -> Dataset:
    # The noise is drawn in float32 (as torch.randn draws it by default) and y built in float64,
    # then rounded: float32 and float64 runs of one seed share their data.
    x = data.x_start + data.x_step * torch.arange(data.n_points, dtype=torch.float64)
    eps = torch.randn(data.n_points, generator=noise, dtype=torch.float32).to(torch.float64)
    y = data.slope * x + data.intercept + data.noise_std * eps
    return Dataset(x=x.to(dtype), y=y.to(dtype))
