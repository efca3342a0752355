"""Config composition: the schema catches typos, wrong types and bad values before anything runs."""

from __future__ import annotations

import logging

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from gdexp.config import (
    CHECKS,
    ConfigError,
    LaunchLines,
    close_keys,
    launch_lines,
    register_configs,
    schema_keys,
    type_name,
    validate,
    value_problems,
)

register_configs()


def composed(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_defaults_are_the_reference_experiment():
    cfg = composed()
    assert cfg.method.name == "bgd" and cfg.method.batch_size is None
    assert (cfg.step_size, cfg.epochs, cfg.seed) == (0.1, 20, 0)
    assert (cfg.data.n_points, cfg.data.x_start, cfg.data.x_step) == (100, -5.0, 0.1)
    assert (cfg.data.slope, cfg.data.noise_std) == (-5.0, 0.4)
    assert (cfg.init.w, cfg.init.b) == (-10.0, -20.0)
    assert cfg.tracking.experiment == "gdexp"


@pytest.mark.parametrize(
    ("method", "batch_size", "shuffle"),
    [("bgd", None, False), ("sgd", 1, False), ("minibatch", 10, True)],
)
def test_methods_are_batch_sizes_of_one_loop(method, batch_size, shuffle):
    cfg = composed(f"method={method}")
    assert (cfg.method.name, cfg.method.batch_size, cfg.method.shuffle) == (
        method,
        batch_size,
        shuffle,
    )


def test_overrides_reach_every_group():
    cfg = composed(
        "method=minibatch", "method.batch_size=25", "dtype=float64", "data.noise_std=0", "init.w=3"
    )
    assert cfg.method.batch_size == 25
    assert cfg.dtype.value == "float64"
    assert cfg.data.noise_std == 0.0
    assert cfg.init.w == 3.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stepsize=0.1", "Key 'stepsize' not in 'RunConfig'"),  # a typo at the top level
        ("method.batchsize=3", "Key 'batchsize' not in 'MethodConfig'"),  # a typo inside a group
        ("epochs=ten", "Value 'ten' of type 'str' could not be converted to Integer"),
        ("dtype=float16", "Invalid value 'float16', expected one of [float32, float64]"),
    ],
)
def test_typos_and_wrong_types_fail_at_composition(override, message):
    with pytest.raises(Exception) as failure:
        composed(override)
    text = f"{failure.value} {failure.value.__cause__}"
    assert message in text, text


def test_unknown_method_lists_the_allowed_ones():
    with pytest.raises(Exception, match=r"(?s)Could not find 'method/adam'.*bgd.*minibatch.*sgd"):
        composed("method=adam")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("step_size=0", "step_size"),
        ("step_size=-0.1", "step_size"),
        ("step_size=inf", "step_size"),
        ("step_size=nan", "step_size"),
        ("epochs=0", "epochs"),
        ("method.batch_size=0", "method.batch_size"),
        ("data.n_points=0", "data.n_points"),
        ("data.noise_std=-1", "data.noise_std"),
        ("init.w=inf", "init.w"),
    ],
)
def test_bad_values_are_named_with_what_is_allowed(override, field):
    with pytest.raises(ConfigError) as failure:
        validate(composed(override))
    assert f"{field}=" in str(failure.value)
    assert "must be" in str(failure.value)


def test_keys_forced_in_with_plus_are_still_typos():
    # Hydra lets `+key=value` add keys a struct config does not have; gdexp refuses them.
    with pytest.raises(ConfigError, match=r"stepsize=0.1 is invalid: it must be .*not a gdexp key"):
        validate(composed("+stepsize=0.1"))
    with pytest.raises(ConfigError, match=r"method.lr=0.1 is invalid"):
        validate(composed("+method.lr=0.1"))


def test_valid_extremes_pass():
    validate(
        composed(
            "step_size=1e-12",
            "epochs=1",
            "data.noise_std=0",
            "data.n_points=1",
            "method.batch_size=1000",
        )
    )


def test_every_key_of_the_schema_has_a_type_a_default_and_a_line_of_help():
    keys = schema_keys()
    assert {k.key for k in keys} >= {"step_size", "method.batch_size", "tracking.uri"}
    assert all(k.help for k in keys), [k.key for k in keys if not k.help]
    assert set(CHECKS) <= {k.key for k in keys}  # every range check is of a real key
    kinds = {k.key: type_name(k.type) for k in keys}
    assert kinds["seed"] == "int" and kinds["method.batch_size"] == "int|null"
    assert kinds["dtype"] == "float32|float64"


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("epoch", ["epochs"]),
        ("stepsize", ["step_size"]),
        ("method.batchsize", ["method.batch_size"]),
        ("batch_size", ["method.batch_size"]),  # the group left out
        ("noise", ["data.noise_std"]),  # the start of a key
        ("init.W", ["init.w"]),
        ("method.lr", []),  # nothing close: no guess
        ("lr", []),
    ],
)
def test_close_keys_finds_what_was_meant(typed, meant):
    assert close_keys(typed, {k.key for k in schema_keys()}) == meant


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("seed", 1.5, "seed is an int (a whole number), not 1.5"),
        ("epochs", None, "epochs is an int (a whole number), not null"),
        ("dtype", "float16", "dtype is one of float32, float64, not 'float16'"),
        ("step_size", -1, "step_size=-1.0 is invalid: it must be a finite number > 0"),
        ("data", {"n_pints": 3}, "gdexp has no key 'data.n_pints'; did you mean data.n_points?"),
        ("data", {"noise_std": -1}, "data.noise_std=-1.0 is invalid"),
    ],
)
def test_a_typed_value_is_checked_against_the_schema_alone(key, value, problem):
    [found] = value_problems(f"{key}=…", key, [value])
    assert problem in found


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("step_size", 1),  # an int where a float goes: converted, as composition does
        ("method.batch_size", None),
        ("tracking.uri", "sqlite:///x.db"),
        ("step_size", "${data.x_step}"),  # interpolations are composition's to check
        ("data", {"n_points": 5, "noise_std": 0}),
    ],
)
def test_valid_typed_values_pass(key, value):
    assert value_problems(f"{key}=…", key, [value]) == []


def test_launcher_lines_are_dropped_unless_their_logger_is_verbose():
    quiet = launch_lines()
    assert isinstance(quiet, LaunchLines) and launch_lines() is quiet  # one filter object
    launcher = logging.getLogger("hydra._internal.core_plugins.basic_launcher")

    def record(name: str, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "Launching 1 jobs locally", None, None)

    old = launcher.level
    try:
        launcher.setLevel(logging.INFO)
        assert not quiet.filter(record(launcher.name))
        assert quiet.filter(record(launcher.name, logging.ERROR))  # errors always pass
        launcher.setLevel(logging.DEBUG)  # what hydra.verbose=true / =hydra does
        assert quiet.filter(record(launcher.name))
    finally:
        launcher.setLevel(old)
