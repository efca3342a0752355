"""Gradient descent on y = w·x + b with MSE loss: configs and data in, trajectories out.

BGD, SGD and mini-batch GD are one loop at batch sizes N, 1 and anything between. The loop is
written over a leading "config" dimension, so that a grid of configs that differ only in values
(step size, seed, init, data) trains as one tensor computation; a single run is a grid of one.
Nothing here knows about MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig

from gdexp.data import Dataset, dtype_name, effective_batch_size, torch_dtype
from gdexp.seeding import random_streams


@dataclass(frozen=True)
class Trajectory:
    """What one run did. Epoch arrays stop at the epoch where the run diverged, if it did."""

    epoch_loss: np.ndarray  # full-data loss at the start of each epoch, before its updates
    w: np.ndarray  # w after each epoch whose updates ran
    b: np.ndarray  # b after each epoch whose updates ran
    step_loss: np.ndarray  # every update's batch loss
    steps_per_epoch: int
    initial_loss: float
    final_loss: float  # full-data loss after the last epoch run (inf or nan if diverged)
    final_w: float
    final_b: float
    diverged_at_epoch: int | None  # the epoch in which the loss or a parameter turned non-finite


# Called after each epoch with (epoch, loss at its start, w, b), each of shape (configs,).
EpochCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class TrainSettings:
    """What training reads from a run config, read once (a DictConfig lookup costs ~20 µs, which
    adds up over a grid of thousands of configs)."""

    step_size: float
    init_w: float
    init_b: float
    seed: int
    # These must agree for configs to train together (shapes and loop structure):
    epochs: int
    batch_size: int | None
    shuffle: bool
    dtype: str
    n_points: int

    @classmethod
    def of(cls, cfg: DictConfig | TrainSettings) -> TrainSettings:
        if isinstance(cfg, TrainSettings):
            return cfg
        method, init = cfg.method, cfg.init
        return cls(
            step_size=cfg.step_size,
            init_w=init.w,
            init_b=init.b,
            seed=cfg.seed,
            epochs=cfg.epochs,
            batch_size=method.batch_size,
            shuffle=method.shuffle,
            dtype=dtype_name(cfg.dtype),
            n_points=cfg.data.n_points,
        )

    @property
    def signature(self) -> tuple:
        """Settings with equal signatures can train together in `train_many`."""
        return (self.epochs, self.batch_size, self.shuffle, self.dtype, self.n_points)


def _mse(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-config mean squared error: w, b of shape (C,), x, y of shape (C, n).

    The tutorial's own ops in its order (w·x, + b, − y, ** 2, mean), and autograd's gradient of
    them: each row's sums run over that row alone, as the tutorial's run over its one data set, so
    a float32 run reproduces the tutorial's script bit for bit (tests/test_tutorial.py). A
    hand-written gradient or a fused formula would be equal in exact arithmetic only.
    """
    return ((w[:, None] * x + b[:, None] - y) ** 2).mean(dim=1)


def train(
    cfg: DictConfig | TrainSettings, data: Dataset, on_epoch: EpochCallback | None = None
) -> Trajectory:
    """Train one config on its data."""
    return train_many([cfg], [data], on_epoch)[0]


def train_many(
    cfgs: Sequence[DictConfig | TrainSettings],
    datasets: Sequence[Dataset],
    on_epoch: EpochCallback | None = None,
) -> list[Trajectory]:
    """Train configs that share a `TrainSettings.signature` together, one row of every tensor
    each."""
    cfgs = [TrainSettings.of(cfg) for cfg in cfgs]
    batch = effective_batch_size(cfgs[0].batch_size, cfgs[0].n_points)
    # Each step works on configs × batch numbers; below ~1e5 of them, handing work to other
    # threads costs more than it saves (measured: 1,000 SGD configs train 2-4× faster on one).
    threads = 1 if len(cfgs) * batch < 100_000 else torch.get_num_threads()
    with _torch_threads(threads):
        return _train_many(cfgs, datasets, on_epoch)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_many(
    cfgs: list[TrainSettings], datasets: Sequence[Dataset], on_epoch: EpochCallback | None
) -> list[Trajectory]:
    signatures = {cfg.signature for cfg in cfgs}
    if len(signatures) != 1:
        raise ValueError(f"configs differ in loop structure; cannot train together: {signatures}")
    first = cfgs[0]
    dtype = torch_dtype(first.dtype)
    epochs = int(first.epochs)
    x = torch.stack([d.x for d in datasets]).to(dtype)
    y = torch.stack([d.y for d in datasets]).to(dtype)
    n_configs, n = x.shape
    batch = effective_batch_size(first.batch_size, n)
    batch_starts = range(0, n, batch)
    steps_per_epoch = len(batch_starts)
    shufflers = [random_streams(cfg.seed).shuffle for cfg in cfgs] if first.shuffle else []

    step_size = torch.tensor([cfg.step_size for cfg in cfgs], dtype=dtype)
    w = torch.tensor([cfg.init_w for cfg in cfgs], dtype=dtype, requires_grad=True)
    b = torch.tensor([cfg.init_b for cfg in cfgs], dtype=dtype, requires_grad=True)

    nan = float("nan")
    epoch_loss = torch.full((n_configs, epochs), nan, dtype=dtype)
    w_after = torch.full((n_configs, epochs), nan, dtype=dtype)
    b_after = torch.full((n_configs, epochs), nan, dtype=dtype)
    step_loss = torch.full((n_configs, epochs * steps_per_epoch), nan, dtype=dtype)
    diverged_at = torch.full((n_configs,), -1, dtype=torch.long)
    # Per config: epochs whose starting loss was measured, and epochs whose updates it went through
    # while still finite. Rows that diverge early keep computing garbage in the shared tensors;
    # these counts cut it off, so a config's trajectory is the same alone or in a grid.
    epochs_measured = torch.zeros(n_configs, dtype=torch.long)
    epochs_updated = torch.zeros(n_configs, dtype=torch.long)

    def mark_diverged(finite: torch.Tensor, epoch: int) -> bool:
        """Record configs that just turned non-finite; True while any config is still going."""
        newly = (diverged_at < 0) & ~finite
        diverged_at[newly] = epoch
        return bool((diverged_at < 0).any())

    for epoch in range(epochs):
        with torch.no_grad():
            loss = _mse(w, b, x, y)
        epoch_loss[:, epoch] = loss
        epochs_measured[diverged_at < 0] = epoch + 1
        if not mark_diverged(torch.isfinite(loss), epoch):
            break
        epochs_updated[diverged_at < 0] = epoch + 1

        if shufflers:
            order = torch.stack([torch.randperm(n, generator=g) for g in shufflers])
            xs, ys = x.gather(1, order), y.gather(1, order)
        else:
            xs, ys = x, y
        for k, start in enumerate(batch_starts):
            batch_loss = _mse(w, b, xs[:, start : start + batch], ys[:, start : start + batch])
            # Rows are independent, so the gradient of the sum is each config's own gradient.
            batch_loss.sum().backward()
            with torch.no_grad():
                w -= step_size * w.grad
                b -= step_size * b.grad
            w.grad = None
            b.grad = None
            step_loss[:, epoch * steps_per_epoch + k] = batch_loss.detach()

        w_after[:, epoch] = w.detach()
        b_after[:, epoch] = b.detach()
        if on_epoch is not None:
            on_epoch(epoch, loss, w.detach(), b.detach())
        if not mark_diverged(torch.isfinite(w) & torch.isfinite(b), epoch):
            break

    with torch.no_grad():
        final_loss = _mse(w, b, x, y)

    def as_numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().to(torch.float64).numpy()

    trajectories = []
    for c, cfg in enumerate(cfgs):
        measured, updated, diverged = (
            int(epochs_measured[c]),
            int(epochs_updated[c]),
            int(diverged_at[c]),
        )
        w_c, b_c = as_numpy(w_after[c, :updated]), as_numpy(b_after[c, :updated])
        trajectories.append(
            Trajectory(
                epoch_loss=as_numpy(epoch_loss[c, :measured]),
                w=w_c,
                b=b_c,
                step_loss=as_numpy(step_loss[c, : updated * steps_per_epoch]),
                steps_per_epoch=steps_per_epoch,
                initial_loss=float(epoch_loss[c, 0]),
                # A diverged run has no meaningful final loss: inf stands for "blew up".
                final_loss=float(final_loss[c]) if diverged < 0 else math.inf,
                final_w=float(w_c[-1]) if updated else float(cfg.init_w),
                final_b=float(b_c[-1]) if updated else float(cfg.init_b),
                diverged_at_epoch=diverged if diverged >= 0 else None,
            )
        )
    return trajectories
