"""Gradient descent on y = w·x + b with MSE loss: configs and data in, trajectories out.

BGD, SGD and mini-batch GD are one loop at batch sizes N, 1 and anything between. The loop is
written over a leading "config" dimension, so that a grid of configs that differ only in values
(step size, seed, init, data) trains as one tensor computation; a single run is a grid of one.
`train_many` takes configs and gives a `Trajectory` each; `train_arrays`, under it, takes the grid
as arrays and gives one `TrajectoryBatch`, a table, for grids of 10^5 configs and more. Nothing
here knows about MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from omegaconf import DictConfig

from gdexp.data import Dataset, dtype_name, effective_batch_size, torch_dtype
from gdexp.seeding import random_streams


@dataclass(frozen=True)
class Trajectory:
    """What one run did. Epoch arrays stop at the epoch where the run diverged, if it did."""

    epoch_loss: np.ndarray  # full-data loss at the start of each epoch, before its updates
    w: np.ndarray  # w after each epoch whose updates ran
    b: np.ndarray  # b after each epoch whose updates ran
    step_loss: np.ndarray  # every update's batch loss (empty if trained with record_steps=False)
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
    cfg: DictConfig | TrainSettings,
    data: Dataset,
    on_epoch: EpochCallback | None = None,
    *,
    record_steps: bool = True,
    device: torch.device | str = "cpu",
) -> Trajectory:
    """Train one config on its data."""
    return train_many([cfg], [data], on_epoch, record_steps=record_steps, device=device)[0]


def train_many(
    cfgs: Sequence[DictConfig | TrainSettings],
    datasets: Sequence[Dataset],
    on_epoch: EpochCallback | None = None,
    *,
    data_index: ArrayLike | None = None,
    record_steps: bool = True,
    device: torch.device | str = "cpu",
) -> list[Trajectory]:
    """Train configs that share a `TrainSettings.signature` together, one row of every tensor
    each. Config c trains on `datasets[c]`, or on `datasets[data_index[c]]` when given (configs
    that share data, e.g. one dataset per seed, then share one Dataset object). See
    `train_arrays` for `record_steps` and `device`."""
    cfgs = [TrainSettings.of(cfg) for cfg in cfgs]
    signatures = {cfg.signature for cfg in cfgs}
    if len(signatures) != 1:
        raise ValueError(f"configs differ in loop structure; cannot train together: {signatures}")
    first = cfgs[0]
    return train_arrays(
        datasets,
        step_size=[cfg.step_size for cfg in cfgs],
        init_w=[cfg.init_w for cfg in cfgs],
        init_b=[cfg.init_b for cfg in cfgs],
        seed=[cfg.seed for cfg in cfgs],
        data_index=data_index,
        epochs=first.epochs,
        batch_size=first.batch_size,
        shuffle=first.shuffle,
        dtype=first.dtype,
        on_epoch=on_epoch,
        record_steps=record_steps,
        device=device,
    ).trajectories()


@dataclass(frozen=True)
class TrajectoryBatch:
    """What a grid of configs did, as arrays with one row per config (numpy, on the CPU): the
    table form of `Trajectory`, for grids too large for one Python object per config. Entries
    after a config diverged are NaN in the epoch arrays; `trajectory(c)` cuts them off."""

    epoch_loss: np.ndarray  # (configs, epochs): full-data loss at the start of each epoch
    w: np.ndarray  # (configs, epochs): w after each epoch
    b: np.ndarray  # (configs, epochs): b after each epoch
    step_loss: np.ndarray | None  # (configs, epochs · steps_per_epoch) in the training dtype,
    # or None if not recorded
    steps_per_epoch: int
    epochs_measured: np.ndarray  # (configs,): epochs whose starting loss was measured
    epochs_updated: np.ndarray  # (configs,): epochs whose updates ran while still finite
    initial_loss: np.ndarray  # (configs,)
    final_loss: np.ndarray  # (configs,): inf for a config that diverged
    final_w: np.ndarray  # (configs,)
    final_b: np.ndarray  # (configs,)
    diverged_at_epoch: np.ndarray  # (configs,): -1 for a config that did not diverge

    def __len__(self) -> int:
        return len(self.final_loss)

    def loss_history(self) -> np.ndarray:
        """(configs, epochs + 1): L_0 … L_E of every config, `gdexp.outcome.loss_history` for
        all at once. A diverged config's history is padded with inf after it stopped: its first
        non-finite entry, all that the outcome rules read of it, stays where it was."""
        configs, epochs = self.epoch_loss.shape
        history = np.empty((configs, epochs + 1))
        history[:, :epochs] = self.epoch_loss
        history[:, epochs] = self.final_loss
        history[:, :epochs][np.arange(epochs) >= self.epochs_measured[:, None]] = math.inf
        return history

    def trajectory(self, c: int) -> Trajectory:
        measured, updated = int(self.epochs_measured[c]), int(self.epochs_updated[c])
        diverged = int(self.diverged_at_epoch[c])
        steps = updated * self.steps_per_epoch
        return Trajectory(
            epoch_loss=self.epoch_loss[c, :measured],
            w=self.w[c, :updated],
            b=self.b[c, :updated],
            step_loss=(
                self.step_loss[c, :steps].astype(np.float64)
                if self.step_loss is not None
                else np.empty(0)
            ),
            steps_per_epoch=self.steps_per_epoch,
            initial_loss=float(self.initial_loss[c]),
            final_loss=float(self.final_loss[c]),
            final_w=float(self.final_w[c]),
            final_b=float(self.final_b[c]),
            diverged_at_epoch=diverged if diverged >= 0 else None,
        )

    def trajectories(self) -> list[Trajectory]:
        return [self.trajectory(c) for c in range(len(self))]


def train_arrays(
    datasets: Sequence[Dataset],
    step_size: ArrayLike,
    init_w: ArrayLike,
    init_b: ArrayLike,
    seed: ArrayLike,
    *,
    epochs: int,
    batch_size: int | None,
    shuffle: bool,
    dtype: str | torch.dtype,
    data_index: ArrayLike | None = None,
    on_epoch: EpochCallback | None = None,
    record_steps: bool = True,
    device: torch.device | str = "cpu",
) -> TrajectoryBatch:
    """Train a grid given as arrays, one entry per config (`step_size`, `init_w`, `init_b`, and
    `seed`, which only orders the samples of shuffled epochs), all sharing one loop structure
    (`epochs`, `batch_size`, `shuffle`, `dtype`, the data's size). Config c trains on
    `datasets[data_index[c]]`, or on `datasets[c]` without an index. Each config's numbers are
    the same as `train` gives it alone.

    `record_steps=False` keeps no per-update losses (configs × epochs × steps numbers, most of
    the memory of a large grid). `device`: where to train. The data is built and cast on the
    CPU and then moved, so a config's data never depends on the device; results come back to
    the CPU.
    """
    device = torch.device(device)
    dtype = dtype if isinstance(dtype, torch.dtype) else torch_dtype(dtype)
    step_size = np.asarray(step_size, dtype=np.float64)
    n_configs = len(step_size)
    n = int(datasets[0].x.shape[0])
    batch = effective_batch_size(batch_size, n)
    # Each step works on configs × batch numbers; below ~1e5 of them, handing work to other
    # threads costs more than it saves (measured: 1,000 SGD configs train 2-4× faster on one).
    threads = 1 if n_configs * batch < 100_000 else torch.get_num_threads()
    with torch_threads(threads if device.type == "cpu" else torch.get_num_threads()):
        return _train_arrays(
            datasets,
            step_size,
            np.asarray(init_w, dtype=np.float64),
            np.asarray(init_b, dtype=np.float64),
            np.asarray(seed, dtype=np.int64),
            None if data_index is None else np.asarray(data_index, dtype=np.int64),
            epochs=int(epochs),
            batch=batch,
            shuffle=bool(shuffle),
            dtype=dtype,
            on_epoch=on_epoch,
            record_steps=record_steps,
            device=device,
        )


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's CPU threads set to `n` inside the block (as it was after it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batches(
    x: torch.Tensor, y: torch.Tensor, batch: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each step's (x, y) of an epoch, (configs, batch) each, laid out contiguously: a column
    slice of (configs, n) would be read with a stride of n by every elementwise op of every
    step. Only the layout differs: the ops and their values are the same."""
    return [
        (x[:, start : start + batch].contiguous(), y[:, start : start + batch].contiguous())
        for start in range(0, x.shape[1], batch)
    ]


class _Shuffler:
    """Each config's samples in this epoch's order: `torch.randperm` from its seed's shuffle
    stream, once per epoch. The order depends on the seed alone, so each distinct seed draws it
    once (the same numbers as a generator per config, at the cost of one per seed), and each
    distinct (data, seed) pair is gathered once, then copied to the configs that share it."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        data_rows: np.ndarray,
        seeds: np.ndarray,
        device: torch.device,
    ) -> None:
        distinct, seed_rank = np.unique(seeds, return_inverse=True)
        self.generators = [random_streams(int(s)).shuffle for s in distinct]
        self.n, self.device = x.shape[1], device
        pairs, first, inverse = np.unique(
            np.stack([data_rows, seed_rank.reshape(-1)], axis=1),
            axis=0,
            return_index=True,
            return_inverse=True,
        )
        # Pairs in the order configs first use them: configs that each have a pair of their own
        # (data per config, as run_grid passes it) then need no copy at the end.
        by_first = np.argsort(first, kind="stable")
        rank = np.empty_like(by_first)
        rank[by_first] = np.arange(len(by_first))
        pairs, inverse = pairs[by_first], rank[inverse.reshape(-1)]
        rows = torch.from_numpy(pairs[:, 0]).to(device)
        self.x, self.y = x.index_select(0, rows), y.index_select(0, rows)
        self.pair_seed = torch.from_numpy(pairs[:, 1]).to(device)
        identity = len(pairs) == len(seeds) and bool((inverse == np.arange(len(seeds))).all())
        self.spread = None if identity else torch.from_numpy(inverse).to(device)

    def next_epoch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (configs, n): every config's samples in this epoch's order."""
        orders = torch.stack([torch.randperm(self.n, generator=g) for g in self.generators])
        order = orders.to(self.device).index_select(0, self.pair_seed)
        xs, ys = self.x.gather(1, order), self.y.gather(1, order)
        if self.spread is not None:
            xs, ys = xs.index_select(0, self.spread), ys.index_select(0, self.spread)
        return xs, ys


def _train_arrays(
    datasets: Sequence[Dataset],
    step_sizes: np.ndarray,
    init_w: np.ndarray,
    init_b: np.ndarray,
    seeds: np.ndarray,
    data_index: np.ndarray | None,
    *,
    epochs: int,
    batch: int,
    shuffle: bool,
    dtype: torch.dtype,
    on_epoch: EpochCallback | None,
    record_steps: bool,
    device: torch.device,
) -> TrajectoryBatch:
    x_data = torch.stack([d.x for d in datasets]).to(dtype).to(device)
    y_data = torch.stack([d.y for d in datasets]).to(dtype).to(device)
    if data_index is None:
        data_rows = np.arange(len(datasets))
        x, y = x_data, y_data
    else:
        data_rows = data_index
        rows = torch.from_numpy(data_index).to(device)
        x, y = x_data.index_select(0, rows), y_data.index_select(0, rows)
    n_configs, n = x.shape
    if n_configs != len(step_sizes):
        raise ValueError(f"{len(step_sizes)} configs but {n_configs} datasets for them")
    steps_per_epoch = -(-n // batch)
    shuffler = _Shuffler(x_data, y_data, data_rows, seeds, device) if shuffle else None
    batches = _batches(x, y, batch) if shuffler is None else []

    def tensor(values: np.ndarray, **kwargs: object) -> torch.Tensor:
        # Python floats rounded to `dtype` one by one, as torch.tensor([...], dtype=...) does.
        return torch.tensor(values.tolist(), dtype=dtype, **kwargs).to(device)

    step_size = tensor(step_sizes)
    w = tensor(init_w).requires_grad_(True)
    b = tensor(init_b).requires_grad_(True)

    nan = float("nan")
    epoch_loss = torch.full((n_configs, epochs), nan, dtype=dtype, device=device)
    w_after = torch.full((n_configs, epochs), nan, dtype=dtype, device=device)
    b_after = torch.full((n_configs, epochs), nan, dtype=dtype, device=device)
    step_loss = (
        torch.full((n_configs, epochs * steps_per_epoch), nan, dtype=dtype, device=device)
        if record_steps
        else None
    )
    diverged_at = torch.full((n_configs,), -1, dtype=torch.long, device=device)
    # Per config: epochs whose starting loss was measured, and epochs whose updates it went through
    # while still finite. Rows that diverge early keep computing garbage in the shared tensors;
    # these counts cut it off, so a config's trajectory is the same alone or in a grid.
    epochs_measured = torch.zeros(n_configs, dtype=torch.long, device=device)
    epochs_updated = torch.zeros(n_configs, dtype=torch.long, device=device)

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

        if shuffler is not None:
            batches = _batches(*shuffler.next_epoch(), batch)
        for k, (xs, ys) in enumerate(batches):
            batch_loss = _mse(w, b, xs, ys)
            # Rows are independent, so the gradient of the sum is each config's own gradient.
            batch_loss.sum().backward()
            with torch.no_grad():
                w -= step_size * w.grad
                b -= step_size * b.grad
            w.grad = None
            b.grad = None
            if step_loss is not None:
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
        # Widened to float64 (exact) on the device, then to the CPU.
        return t.detach().to(torch.float64).cpu().numpy()

    measured, updated = epochs_measured.cpu().numpy(), epochs_updated.cpu().numpy()
    diverged = diverged_at.cpu().numpy()
    epoch_axis = np.arange(epochs)

    def cut(t: torch.Tensor, count: np.ndarray) -> np.ndarray:
        """Entries a config did not reach while finite, as NaN."""
        values = as_numpy(t)
        values[epoch_axis >= count[:, None]] = nan
        return values

    w64, b64 = cut(w_after, updated), cut(b_after, updated)
    last = np.maximum(updated - 1, 0)[:, None]
    ran = updated > 0
    steps = None
    if step_loss is not None:
        # Kept in the training dtype (float64 would double the largest array of a grid); each
        # trajectory widens its own row.
        steps = step_loss.cpu().numpy()
        steps[np.arange(steps.shape[1]) >= (updated * steps_per_epoch)[:, None]] = nan
    return TrajectoryBatch(
        epoch_loss=cut(epoch_loss, measured),
        w=w64,
        b=b64,
        step_loss=steps,
        steps_per_epoch=steps_per_epoch,
        epochs_measured=measured,
        epochs_updated=updated,
        initial_loss=as_numpy(epoch_loss[:, 0]),
        # A diverged run has no meaningful final loss: inf stands for "blew up".
        final_loss=np.where(diverged < 0, as_numpy(final_loss), math.inf),
        final_w=np.where(ran, np.take_along_axis(w64, last, 1)[:, 0], init_w),
        final_b=np.where(ran, np.take_along_axis(b64, last, 1)[:, 0], init_b),
        diverged_at_epoch=diverged,
    )
