"""The math on small cases, the reference figures, and reproducibility. (How runs are judged,
converged or not, is tests/test_outcome.py's; that they equal the tutorial's script,
tests/test_tutorial.py's.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from gdexp.config import MethodConfig, RunConfig
from gdexp.data import Dataset, least_squares_fit, make_run_data
from gdexp.outcome import OUTCOMES, summarize_many
from gdexp.seeding import random_streams
from gdexp.train import TrainSettings, Trajectory, train, train_arrays, train_many


def config(method: str = "bgd", batch_size: int | None = None, **values) -> DictConfig:
    cfg = OmegaConf.structured(RunConfig(method=MethodConfig(name=method, batch_size=batch_size)))
    for key, value in values.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


def tiny() -> Dataset:
    return Dataset(
        x=torch.tensor([1.0, 2.0], dtype=torch.float64),
        y=torch.tensor([3.0, 5.0], dtype=torch.float64),
    )


def test_one_bgd_step_by_hand():
    # loss = mean((w x + b - y)^2); at w=0, b=0 on x=[1,2], y=[3,5]: residuals [-3,-5]
    # dL/dw = mean(2 r x) = (2*-3*1 + 2*-5*2)/2 = -13; dL/db = mean(2 r) = -8
    cfg = config(epochs=1, step_size=0.1, init__w=0.0, init__b=0.0, dtype="float64")
    t = train(cfg, tiny())
    assert t.epoch_loss[0] == pytest.approx((9 + 25) / 2)
    assert (t.w[0], t.b[0]) == (pytest.approx(1.3), pytest.approx(0.8))


def test_sgd_steps_one_sample_at_a_time_in_data_order():
    # Sample 1 (x=1,y=3): r=-3, grads (-6,-6) -> w=0.6, b=0.6. Sample 2 (x=2,y=5): r=1.2+0.6-5=-3.2,
    # grads (2*-3.2*2, 2*-3.2) = (-12.8, -6.4) -> w=0.6+1.28=1.88, b=0.6+0.64=1.24
    cfg = config("sgd", 1, epochs=1, step_size=0.1, init__w=0.0, init__b=0.0, dtype="float64")
    t = train(cfg, tiny())
    assert (t.w[0], t.b[0]) == (pytest.approx(1.88), pytest.approx(1.24))
    assert t.step_loss.tolist() == [pytest.approx(9.0), pytest.approx(3.2**2)]
    assert t.steps_per_epoch == 2


def test_minibatch_covers_a_partial_last_batch():
    cfg = config("minibatch", 30, method__shuffle=False, epochs=2)
    t = train(cfg, make_run_data(cfg))
    assert t.steps_per_epoch == 4  # 30 + 30 + 30 + 10
    assert len(t.step_loss) == 8


def test_batch_size_n_and_bgd_are_the_same_run():
    bgd = config("bgd", None)
    full = config("minibatch", 100, method__shuffle=False)
    a, b = train(bgd, make_run_data(bgd)), train(full, make_run_data(full))
    np.testing.assert_array_equal(a.epoch_loss, b.epoch_loss)
    np.testing.assert_array_equal(a.w, b.w)


def test_reference_bgd_converges_to_the_documented_figures():
    cfg = config()
    data = make_run_data(cfg)
    t = train(cfg, data)
    assert len(t.epoch_loss) == 20
    assert 550 < t.epoch_loss[0] < 650
    assert 0.2 < t.epoch_loss[-1] < 0.3
    assert np.all(np.diff(t.epoch_loss) < 0)
    assert t.final_w == pytest.approx(-5.0, abs=0.02)
    assert -0.35 < t.final_b < -0.2
    # Within 0.1 % of the excess loss it started with, above the least-squares loss.
    optimal = least_squares_fit(data)[2]
    assert t.final_loss - optimal < 1e-3 * (t.initial_loss - optimal)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reference_sgd_explodes_but_stays_finite(dtype):
    cfg = config("sgd", 1, dtype=dtype)
    t = train(cfg, make_run_data(cfg))
    assert len(t.step_loss) == 2000
    assert t.diverged_at_epoch is None
    assert np.all(np.isfinite(t.epoch_loss)) and np.all(np.isfinite(t.step_loss))
    assert np.all(t.epoch_loss[1:] > 1e13) and t.final_loss > 1e13


def test_non_finite_loss_stops_the_run_and_is_recorded():
    cfg = config("bgd", None, step_size=1.0, epochs=200)
    t = train(cfg, make_run_data(cfg))
    assert t.diverged_at_epoch is not None and t.diverged_at_epoch < 200
    assert len(t.epoch_loss) == t.diverged_at_epoch + 1
    assert not math.isfinite(t.epoch_loss[-1]) or not math.isfinite(t.w[-1])
    assert t.final_loss == math.inf


def test_same_config_same_trajectory_and_seeds_change_the_data():
    cfg = config("minibatch", 10, seed=7)
    first, again = train(cfg, make_run_data(cfg)), train(cfg, make_run_data(cfg))
    np.testing.assert_array_equal(first.step_loss, again.step_loss)
    np.testing.assert_array_equal(first.w, again.w)
    other = config("minibatch", 10, seed=8)
    assert not torch.equal(make_run_data(cfg).y, make_run_data(other).y)
    assert torch.equal(make_run_data(cfg).x, make_run_data(other).x)


def test_shuffle_changes_the_order_not_the_data():
    ordered = config("minibatch", 10, method__shuffle=False)
    shuffled = config("minibatch", 10, method__shuffle=True)
    assert torch.equal(make_run_data(ordered).y, make_run_data(shuffled).y)
    a, b = train(ordered, make_run_data(ordered)), train(shuffled, make_run_data(shuffled))
    assert a.epoch_loss[0] == b.epoch_loss[0]
    assert not np.array_equal(a.step_loss, b.step_loss)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_config_trains_the_same_alone_or_in_a_grid(dtype):
    cfgs = [
        config("sgd", 1, step_size=lr, seed=seed, dtype=dtype, data__noise_std=noise)
        for lr, seed, noise in [(0.01, 0, 0.4), (0.1, 1, 0.0), (2.0, 2, 0.4), (0.05, 3, 1.0)]
    ]
    grid = train_many(cfgs, [make_run_data(c) for c in cfgs])
    for cfg, together in zip(cfgs, grid, strict=True):
        alone = train(cfg, make_run_data(cfg))
        np.testing.assert_array_equal(alone.epoch_loss, together.epoch_loss)
        np.testing.assert_array_equal(alone.step_loss, together.step_loss)
        np.testing.assert_array_equal(alone.w, together.w)
        assert alone.diverged_at_epoch == together.diverged_at_epoch


def test_least_squares_fit_recovers_a_noise_free_line():
    cfg = config(data__noise_std=0.0, data__intercept=2.0)
    w, b, loss = least_squares_fit(make_run_data(cfg))
    assert (w, b) == (pytest.approx(-5.0, abs=1e-5), pytest.approx(2.0, abs=1e-5))
    assert loss < 1e-9


# --- large grids: shared shuffles, shared data, no step losses, other devices ---------------------


def assert_same_trajectory(a: Trajectory, b: Trajectory, steps: bool = True) -> None:
    for key in ("epoch_loss", "w", "b") + (("step_loss",) if steps else ()):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    for key in ("initial_loss", "final_loss", "final_w", "final_b"):
        x, y = getattr(a, key), getattr(b, key)
        assert x == y or (math.isnan(x) and math.isnan(y)), key
    assert (a.diverged_at_epoch, a.steps_per_epoch) == (b.diverged_at_epoch, b.steps_per_epoch)


def phase_grid(batch_size: int, shuffle: bool, dtype: str = "float32") -> list[TrainSettings]:
    """Step sizes 1e-3 … 10 (converging to blowing up, in float64 too) × seeds 0-3."""
    return [
        TrainSettings(float(lr), -10.0, -20.0, seed, 8, batch_size, shuffle, dtype, 100)
        for lr in np.geomspace(1e-3, 10.0, 9)
        for seed in range(4)
    ]


def seed_data(dtype: str = "float32") -> list[Dataset]:
    return [make_run_data(config(seed=seed, dtype=dtype)) for seed in range(4)]


def test_each_epoch_visits_the_samples_in_the_order_of_the_seeds_shuffle_stream():
    # At step size 0, SGD's step losses are each sample's squared residual, in visiting order:
    # for every seed, one torch.randperm a epoch from that seed's own shuffle stream.
    data = seed_data("float64")
    cfgs = [
        TrainSettings(0.0, -10.0, -20.0, seed, 3, 1, True, "float64", 100)
        for seed in (2, 0, 2, 3, 0)
    ]
    grid = train_many(cfgs, data, data_index=[c.seed for c in cfgs])
    for cfg, trajectory in zip(cfgs, grid, strict=True):
        d, stream = data[cfg.seed], random_streams(cfg.seed).shuffle
        orders = [torch.randperm(100, generator=stream) for _ in range(3)]
        residuals = [((-10.0 * d.x[o] - 20.0 - d.y[o]) ** 2).numpy() for o in orders]
        np.testing.assert_allclose(trajectory.step_loss, np.concatenate(residuals), rtol=1e-12)


@pytest.mark.parametrize("batch_size", [1, 5, 30, 100])
def test_configs_sharing_a_seed_shuffle_as_each_would_alone(batch_size):
    cfgs = phase_grid(batch_size, shuffle=True)
    data = seed_data()
    grid = train_many(cfgs, [data[c.seed] for c in cfgs])
    for cfg, together in zip(cfgs, grid, strict=True):
        assert_same_trajectory(train(cfg, data[cfg.seed]), together)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_data_shared_through_an_index_and_no_step_losses_change_no_bit(shuffle, dtype):
    cfgs = phase_grid(5, shuffle, dtype)
    data = seed_data(dtype)
    reference = train_many(cfgs, [data[c.seed] for c in cfgs])
    shared = train_many(cfgs, data, data_index=[c.seed for c in cfgs])
    unrecorded = train_many(cfgs, data, data_index=[c.seed for c in cfgs], record_steps=False)
    assert any(t.diverged_at_epoch is not None for t in reference)  # blow-ups are covered
    for a, b, c in zip(reference, shared, unrecorded, strict=True):
        assert_same_trajectory(a, b)
        assert_same_trajectory(a, c, steps=False)
        assert c.step_loss.size == 0 and c.steps_per_epoch == a.steps_per_epoch


def test_train_arrays_is_train_many_as_a_table():
    cfgs = phase_grid(10, shuffle=True)
    data = seed_data()
    seeds = np.array([c.seed for c in cfgs])
    batch = train_arrays(
        data, [c.step_size for c in cfgs], np.full(len(cfgs), -10.0), np.full(len(cfgs), -20.0),
        seeds, data_index=seeds, epochs=8, batch_size=10, shuffle=True, dtype=torch.float32,
    )  # fmt: skip
    assert batch.epoch_loss.shape == batch.w.shape == (len(cfgs), 8)
    assert batch.step_loss is not None and batch.step_loss.shape == (len(cfgs), 80)
    history = batch.loss_history()
    for c, trajectory in enumerate(train_many(cfgs, data, data_index=seeds)):
        assert_same_trajectory(batch.trajectory(c), trajectory)
        # The table's history is L_0 … L_E, padded with inf after a blow-up.
        own = np.append(trajectory.epoch_loss, trajectory.final_loss)
        np.testing.assert_array_equal(history[c, : own.size], own)
        assert np.all(history[c, own.size :] == math.inf)


def test_a_grid_and_its_data_must_agree():
    cfgs = phase_grid(10, shuffle=False)
    with pytest.raises(ValueError, match="36 configs but 4 datasets"):
        train_many(cfgs, seed_data())
    mixed = [cfgs[0], TrainSettings(0.1, -10.0, -20.0, 0, 8, 5, False, "float32", 100)]
    with pytest.raises(ValueError, match="differ in loop structure"):
        train_many(mixed, seed_data()[:2])


def test_the_cpu_by_name_or_device_is_the_default():
    cfgs = phase_grid(2, shuffle=True)
    data = [seed_data()[c.seed] for c in cfgs]
    default = train_many(cfgs, data)
    for device in ("cpu", torch.device("cpu")):
        for a, b in zip(default, train_many(cfgs, data, device=device), strict=True):
            assert_same_trajectory(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")
@pytest.mark.parametrize("shuffle", [False, True])
def test_cuda_runs_end_as_the_cpu_runs(shuffle):
    # A GPU sums in its own order, so its last bits differ from the CPU's, and runs that amplify
    # rounding (SGD at 0.1 by ~3e7 an epoch) drift apart, as do runs on the edge of blowing up:
    # the outcomes agree for all but 0.1 % of the runs, and the final losses of runs that
    # converge (contracting, so rounding stays rounding) agree to float32's precision.
    data = seed_data()
    optimal = np.array([least_squares_fit(d)[2] for d in data])
    step_sizes, seeds = (
        a.ravel() for a in np.meshgrid(np.geomspace(1e-3, 1.0, 100), range(4), indexing="ij")
    )
    for batch_size in (1, 2, 5, 10, 20, 50, 100):
        runs = {
            device: train_arrays(
                data, step_sizes, np.full(step_sizes.size, -10.0),
                np.full(step_sizes.size, -20.0), seeds, data_index=seeds, epochs=20,
                batch_size=batch_size, shuffle=shuffle, dtype="float32", record_steps=False,
                device=device,
            )
            for device in ("cpu", "cuda")
        }  # fmt: skip
        cpu, gpu = (summarize_many(runs[d], optimal[seeds], 1e-3) for d in ("cpu", "cuda"))
        assert set(gpu.outcome) <= set(OUTCOMES)
        assert np.mean(cpu.outcome == gpu.outcome) >= 0.999
        assert np.mean(np.isfinite(cpu.final_loss) == np.isfinite(gpu.final_loss)) >= 0.999
        settled = np.isin(cpu.outcome, ["converged", "converging"]) & (cpu.outcome == gpu.outcome)
        assert settled.any()
        np.testing.assert_allclose(
            gpu.final_loss[settled], cpu.final_loss[settled], rtol=1e-4, atol=0
        )
