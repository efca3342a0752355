"""Refusing, helping, composing and validating load neither torch nor MLflow: checked on the
modules a real `gdexp` process holds when it exits (timings: benchmarks/startup.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Store, clean_env

HEAVY = ("torch", "mlflow", "pandas", "matplotlib")

# gdexp's own entry point, run as the `gdexp` command would be; at exit (sys.exit included) it
# writes the names of every module the process imported.
WRAPPER = textwrap.dedent(
    """\
    import atexit, json, sys

    out = sys.argv.pop(1)
    atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))

    from gdexp.__main__ import cli

    cli()
    """
)


def modules_after(store: Store, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    wrapper, out = store.folder / "gdexp_wrapper.py", store.folder / "modules.json"
    wrapper.write_text(WRAPPER)
    done = subprocess.run(
        [sys.executable, str(wrapper), str(out), *args],
        cwd=store.folder, env=clean_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return done, set(json.loads(out.read_text()))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def blocked_store(folder: Path) -> str:
    """A SQLite URI whose folder is a file: a store that cannot be created."""
    (folder / "not_a_folder").write_text("a file where the store's folder should be")
    return f"tracking.uri=sqlite:///{folder}/not_a_folder/mlflow.db"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["step_size=-1"], 2),  # refused by the command-line check
        (["epoch=5"], 2),
        (["seed=1.5"], 2),
        (["method=adam"], 2),
        (["-m", "step_size=0.1,-1", "seed=0,1"], 2),
        (["data.noise_std=0", "step_size=${data.noise_std}"], 2),  # by the composed config's
        (["-m", "data.noise_std=0", "step_size=0.1,${data.noise_std}"], 1),  # by the sweeper
        (["--help"], 0),
        (["-cn", "config", "--help"], 0),  # Hydra's help path, gdexp's template
        (["--cfg", "job"], 0),
        (["-m", "--cfg", "job"], 2),
    ],
)
def test_refusals_help_and_composition_load_no_heavy_module(store, args, code):
    done, modules = modules_after(store, *args)
    assert done.returncode == code, done.stderr
    assert "gdexp.config" in modules  # the probe saw gdexp's own process
    assert heavy(modules) == []
    assert not (store.folder / "mlflow.db").exists()


def test_an_unusable_store_is_refused_before_torch_or_mlflow_load(store):
    done, modules = modules_after(store, blocked_store(store.folder))
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr and "HYDRA_FULL_ERROR" not in done.stderr
    assert heavy(modules) == []


def test_the_probe_sees_torch_once_a_run_happens(store):
    # The check above can fail: a run (untracked, one epoch) does load torch.
    done, modules = modules_after(store, "tracking.enabled=false", "epochs=1")
    assert done.returncode == 0, done.stderr
    assert "torch" in modules
