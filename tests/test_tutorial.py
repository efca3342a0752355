"""gdexp's float32 runs are the tutorial's script, bit for bit.

The reference is the tutorial "Implementing Gradient Descent in PyTorch" as written (its BGD and
SGD loops, with `torch.manual_seed(seed)` first), run in a fresh Python process so that the global
random state is the one `torch.manual_seed` leaves. Its only additions record w and b after each
epoch and print the histories as JSON.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from gdexp.config import MethodConfig, RunConfig
from gdexp.data import make_run_data, make_x
from gdexp.train import train, train_many

TUTORIAL = """
import json, sys
import torch

seed, step_size = int(sys.argv[1]), float(sys.argv[2])
torch.manual_seed(seed)
X = torch.arange(-5, 5, 0.1).view(-1, 1)
func = -5 * X
Y = func + 0.4 * torch.randn(X.size())


def forward(x):
    return w * x + b


def criterion(y_pred, y):
    return torch.mean((y_pred - y) ** 2)


n_iter = 20
out = {"x": X.view(-1).tolist(), "y": Y.view(-1).tolist()}

w = torch.tensor(-10.0, requires_grad=True)
b = torch.tensor(-20.0, requires_grad=True)
loss_BGD, w_BGD, b_BGD = [], [], []
for i in range(n_iter):
    Y_pred = forward(X)
    loss = criterion(Y_pred, Y)
    loss_BGD.append(loss.item())
    loss.backward()
    w.data = w.data - step_size * w.grad.data
    b.data = b.data - step_size * b.grad.data
    w.grad.data.zero_()
    b.grad.data.zero_()
    w_BGD.append(w.item())
    b_BGD.append(b.item())
out["bgd"] = {"loss": loss_BGD, "w": w_BGD, "b": b_BGD}

w = torch.tensor(-10.0, requires_grad=True)
b = torch.tensor(-20.0, requires_grad=True)
loss_SGD, w_SGD, b_SGD = [], [], []
for i in range(n_iter):
    Y_pred = forward(X)
    loss_SGD.append(criterion(Y_pred, Y).tolist())
    for x, y in zip(X, Y):
        y_pred = forward(x)
        loss = criterion(y_pred, y)
        loss.backward()
        w.data = w.data - step_size * w.grad.data
        b.data = b.data - step_size * b.grad.data
        w.grad.data.zero_()
        b.grad.data.zero_()
    w_SGD.append(w.item())
    b_SGD.append(b.item())
out["sgd"] = {"loss": loss_SGD, "w": w_SGD, "b": b_SGD}
print(json.dumps(out))
"""

METHODS = {"bgd": None, "sgd": 1}


@functools.cache
def tutorial(seed: int, step_size: float) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", TUTORIAL, str(seed), repr(step_size)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout)


def config(method: str, **values) -> DictConfig:
    cfg = OmegaConf.structured(
        RunConfig(method=MethodConfig(name=method, batch_size=METHODS.get(method)))
    )
    for key, value in values.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


def histories(trajectory) -> dict:
    return {
        "loss": trajectory.epoch_loss.tolist(),
        "w": trajectory.w.tolist(),
        "b": trajectory.b.tolist(),
    }


@pytest.mark.parametrize("seed", [0, 3])
def test_the_data_is_the_tutorials(seed):
    reference = tutorial(seed, 0.1)
    data = make_run_data(config("bgd", seed=seed))
    assert data.x.dtype == data.y.dtype == torch.float32
    assert data.x.tolist() == reference["x"]
    assert data.y.tolist() == reference["y"]


@pytest.mark.parametrize("method", ["bgd", "sgd"])
@pytest.mark.parametrize(("seed", "step_size"), [(0, 0.1), (3, 0.1), (0, 0.05)])
def test_float32_runs_are_the_tutorials_script_bit_for_bit(method, seed, step_size):
    cfg = config(method, seed=seed, step_size=step_size)
    got = histories(train(cfg, make_run_data(cfg)))
    assert got == tutorial(seed, step_size)[method]  # exact floats, not approx


def test_in_a_grid_too():
    # Configs trained along the config axis next to others, here with 1,000 SGD configs (enough
    # for train_many to hand the work to every thread).
    cfgs = [config("sgd", seed=k % 7, step_size=0.01 + 0.0001 * k) for k in range(1000)]
    cfgs[3], cfgs[600] = config("sgd", seed=0), config("sgd", seed=3)
    grid = train_many(cfgs, [make_run_data(cfg) for cfg in cfgs])
    assert histories(grid[3]) == tutorial(0, 0.1)["sgd"]
    assert histories(grid[600]) == tutorial(3, 0.1)["sgd"]


# --- how x is built -----------------------------------------------------------------------------


def test_x_is_torchs_float32_arange_not_the_rounded_formula():
    x = make_x(100, -5.0, 0.1)
    assert torch.equal(x, torch.arange(-5, 5, 0.1))
    rounded = (-5.0 + 0.1 * torch.arange(100, dtype=torch.float64)).to(torch.float32)
    differ = (x != rounded).nonzero().flatten().tolist()
    assert len(differ) == 24
    # 23 of them 1 ulp apart; the 51st point, 0 in exact arithmetic, is -3e-9: its block of 8
    # starts at float32(-0.2) = -0.2 - 3e-9, and two steps of 0.1 from there miss 0 by that much.
    assert (rounded[50].item(), x[50].item()) == (0.0, -2.9802322831784522e-09)
    rest = [i for i in differ if i != 50]
    assert torch.equal(torch.nextafter(rounded[rest], x[rest]), x[rest])


@pytest.mark.parametrize(
    ("n_points", "x_start", "x_step"),
    [(100, -5.0, 0.1), (37, 0.3, 0.07), (250, 2.0, -0.013), (1, -5.0, 0.1), (20, 0.0, 0.1)],
)
def test_x_equals_the_tutorials_call_whenever_that_call_counts_n_points(n_points, x_start, x_step):
    literal = torch.arange(x_start, x_start + n_points * x_step, x_step)
    assert literal.numel() == n_points
    assert torch.equal(make_x(n_points, x_start, x_step), literal)


def test_x_has_n_points_where_the_tutorials_call_would_count_one_more():
    n, start, step = 122, -5.4, 0.18
    assert torch.arange(start, start + n * step, step).numel() == n + 1
    x = make_x(n, start, step)
    assert x.numel() == n
    # The values torch's arange gives for n points of this start and step.
    assert torch.equal(x, torch.arange(start, start + (n - 0.9) * step, step))


def test_x_without_a_step_is_the_start_repeated():
    assert make_x(3, 1.5, 0.0).tolist() == [1.5, 1.5, 1.5]


def test_x_does_not_depend_on_the_thread_count():
    # Above 32,768 points torch splits arange across threads, and where it splits shows in the
    # values; gdexp builds x on one thread.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        many = make_x(70_001, -5.0, 0.1)
        torch.set_num_threads(1)
        one = make_x(70_001, -5.0, 0.1)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(many, one)
    assert torch.get_num_threads() == before


# --- how y is built -----------------------------------------------------------------------------


def test_an_intercept_of_zero_changes_no_bit_and_others_come_before_the_noise():
    plain = make_run_data(config("bgd", seed=2))
    zero = make_run_data(config("bgd", seed=2, data__intercept=0.0))
    assert torch.equal(plain.y, zero.y)
    shifted = make_run_data(config("bgd", seed=2, data__intercept=1.5))
    eps = torch.randn(100, generator=torch.Generator().manual_seed(2))
    assert torch.equal(shifted.y, (-5.0 * plain.x + 1.5) + 0.4 * eps)


def test_float64_runs_get_the_float32_data_widened():
    for seed in (0, 3):
        single = make_run_data(config("sgd", seed=seed))
        double = make_run_data(config("sgd", seed=seed, dtype="float64"))
        assert double.x.dtype == double.y.dtype == torch.float64
        assert torch.equal(double.x, single.x.to(torch.float64))
        assert torch.equal(double.y, single.y.to(torch.float64))
    # Same numbers, different arithmetic: BGD agrees to float32's precision.
    a = train(config("bgd"), make_run_data(config("bgd")))
    b = train(config("bgd", dtype="float64"), make_run_data(config("bgd", dtype="float64")))
    np.testing.assert_allclose(a.w, b.w, rtol=1e-5)
