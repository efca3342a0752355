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
from gdexp.train import train, train_many


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
