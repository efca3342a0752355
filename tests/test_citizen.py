"""gdexp as a good citizen of Hydra: its plugins cost other apps nothing and change nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, clean_env

APP = REPO / "tests" / "apps" / "unrelated" / "app.py"
HEAVY = ("torch", "mlflow", "pandas", "matplotlib")


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*args], cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=120
    )


def test_importing_gdexps_plugin_modules_loads_nothing_heavy(tmp_path):
    # What Hydra's plugin scan does for every app: import each module not named with a `_`.
    code = (
        "import importlib, pkgutil, sys\n"
        "import hydra_plugins.gdexp_plugins as package\n"
        "names = [m.name for m in pkgutil.iter_modules(package.__path__)]\n"
        "public = [n for n in names if not n.startswith('_')]\n"
        "for name in public: importlib.import_module(f'{package.__name__}.{name}')\n"
        f"print(sorted(public), sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = run(sys.executable, "-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    public, heavy = done.stdout.strip().split("] [")
    assert "gdexp_sweeper" in public and "batched_launcher" in public, public
    assert heavy == "]", f"plugin modules loaded {heavy}"


def test_an_unrelated_apps_multirun_loads_nothing_heavy_and_creates_no_store(tmp_path):
    done = run(sys.executable, str(APP), "-m", "x=1,2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "x=1 heavy modules loaded: none" in done.stdout
    assert "x=2 heavy modules loaded: none" in done.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert "gdexp" not in done.stdout + done.stderr


def test_an_unrelated_apps_help_config_and_completion_show_nothing_of_gdexp(tmp_path):
    shown = run(sys.executable, str(APP), "--help", cwd=tmp_path).stdout
    assert "x: 0" in shown
    for word in ("method", "sweeps", "conf/", "tutorial", "slurm"):
        assert word not in shown, f"{word!r} in the unrelated app's --help"
    composed = run(sys.executable, str(APP), "--cfg", "job", cwd=tmp_path)
    assert yaml.safe_load(composed.stdout) == {"x": 0}
    offered = run(
        sys.executable, str(APP), "-sc", "query=bash", cwd=tmp_path, COMP_LINE="python app.py +"
    ).stdout.split()
    assert offered == ["+hydra"], offered


def test_gdexps_completion_offers_its_keys_not_its_checkout(tmp_path):
    script = str(Path(sys.executable).with_name("gdexp"))
    offered = run(script, "-sc", "query=bash", cwd=tmp_path, COMP_LINE="gdexp ").stdout.split()
    assert {"method=", "step_size=", "seed="} <= set(offered), offered
    assert not {".git/", "tests", "docs", "tests/", "docs/", "conf", "conf/"} & set(offered)
    appended = run(script, "-sc", "query=bash", cwd=tmp_path, COMP_LINE="gdexp +").stdout.split()
    assert "+sweeps=" in appended, appended
    sweeps = run(
        script, "-sc", "query=bash", cwd=tmp_path, COMP_LINE="gdexp +sweeps="
    ).stdout.split()
    assert {"+sweeps=tutorial", "+sweeps=step_sizes", "+sweeps=best_step_size"} <= set(sweeps)


def test_gdexps_plugins_refuse_other_apps_in_one_line(tmp_path):
    for plugin in ("hydra/sweeper=gdexp", "hydra/launcher=batched"):
        done = run(sys.executable, str(APP), "-m", plugin, "x=1,2", cwd=tmp_path)
        assert done.returncode != 0
        assert "Traceback" not in done.stderr
        [line] = [line for line in done.stderr.splitlines() if "gdexp" in line]
        assert line.startswith(f"{plugin} runs gdexp's configs only"), done.stderr
        assert "x=1 heavy" not in done.stdout  # no job ran
    assert not (tmp_path / "mlflow.db").exists()
