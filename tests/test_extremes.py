"""Extreme but valid configs: every run ends with an outcome, no traceback, nothing non-finite
logged (huge and non-finite numbers are data, not crashes)."""

from __future__ import annotations

import math
import sys

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from gdexp.config import MethodConfig, RunConfig, validate
from gdexp.outcome import OUTCOMES
from gdexp.run import run_experiment
from gdexp.store import Destination, Tracker

configs = st.builds(
    dict,
    step_size=st.floats(-12, 6).map(lambda e: 10.0**e),
    epochs=st.integers(1, 3_000),
    n_points=st.integers(1, 150),
    batch_size=st.one_of(st.none(), st.integers(1, 400)),
    shuffle=st.booleans(),
    noise_std=st.sampled_from([0.0, 0.4, 1e3]),
    dtype=st.sampled_from(["float32", "float64"]),
    init_w=st.floats(-1e6, 1e6),
    seed=st.integers(0, 2**31 - 1),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=configs)
def test_every_extreme_run_ends_with_an_outcome_and_logs_only_finite_values(
    values, tmp_path_factory
):
    n, batch = values["n_points"], values["batch_size"]
    updates = values["epochs"] * math.ceil(n / min(batch or n, n))
    assume(updates <= 5_000)  # keeps the suite quick; the loop itself has no such limit
    cfg = OmegaConf.structured(
        RunConfig(
            method=MethodConfig(name="minibatch", batch_size=batch, shuffle=values["shuffle"]),
            step_size=values["step_size"],
            epochs=values["epochs"],
            seed=values["seed"],
            dtype=values["dtype"],
        )
    )
    cfg.data.n_points = n
    cfg.data.noise_std = values["noise_std"]
    cfg.init.w = values["init_w"]
    uri = f"sqlite:///{tmp_path_factory.getbasetemp()}/extremes.db"
    validate(cfg)

    summary = run_experiment(cfg, destination=Destination(Tracker(uri, "gdexp")))

    assert summary.outcome in OUTCOMES
    client = MlflowClient(uri)
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["outcome"] == summary.outcome
    assert all(math.isfinite(v) and abs(v) < sys.float_info.max for v in run.data.metrics.values())
    for key in ("loss", "w", "b", "step_loss"):
        history = client.get_metric_history(summary.run_id, key)
        assert all(math.isfinite(m.value) and abs(m.value) < sys.float_info.max for m in history), (
            key
        )
    if summary.outcome == "diverged" and summary.diverged_at_epoch is not None:
        assert run.data.metrics["diverged_at_epoch"] == summary.diverged_at_epoch
