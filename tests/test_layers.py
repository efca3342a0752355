"""The imports follow the data path: config → data → train → outcome → tracking → run/sweep →
plugins, analysis. No module imports one that stands above it, lazily or not."""

from __future__ import annotations

import ast

from conftest import REPO

# Rank of each module: a module may import only modules of a lower or equal rank.
RANKS = {
    "gdexp.names": 0,
    "gdexp.stopping": 0,  # signals and safe points: the standard library only
    "gdexp.config": 0,
    "gdexp.seeding": 1,
    "gdexp.data": 2,
    "gdexp.train": 3,
    "gdexp.outcome": 4,
    "gdexp.theory": 4,  # computing from data alone, never from runs
    "gdexp.store": 5,
    "gdexp.record": 5,
    "gdexp.table": 5,
    "gdexp.grid": 5,  # a table sweep's grid as axes: configs, never MLflow
    "gdexp.run": 6,
    "gdexp.sweep": 7,
    "gdexp.__main__": 8,
    "gdexp.analysis": 8,
    "hydra_plugins": 8,
}


def rank(module: str) -> int:
    for prefix in sorted(RANKS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return RANKS[prefix]
    raise AssertionError(f"{module} has no rank: add it to RANKS")


def imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from gdexp import record` imports gdexp.record
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return {name for name in found if name.startswith(("gdexp.", "hydra_plugins."))}


def module_name(path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def test_no_module_imports_one_above_it():
    files = [*(REPO / "gdexp").rglob("*.py"), *(REPO / "hydra_plugins").rglob("*.py")]
    known = {module_name(f) for f in files}
    upward = []
    for path in files:
        me = module_name(path)
        for other in imports(path):
            if other not in known:  # `from gdexp.names import X` names X, not a module
                continue
            if other != me and rank(other) > rank(me):
                upward.append(f"{me} imports {other}")
    assert upward == []


def test_theory_never_imports_the_run_orchestrator():
    used = imports(REPO / "gdexp" / "theory.py")
    assert not {m for m in used if m.startswith(("gdexp.run", "gdexp.sweep", "gdexp.store"))}


def test_the_check_sees_an_upward_import(tmp_path):
    # The checker itself: a module that imports one above it is caught.
    fake = tmp_path / "data.py"
    fake.write_text("def f():\n    from gdexp.run import run_experiment\n")
    assert "gdexp.run" in imports(fake) and rank("gdexp.run") > rank("gdexp.data")
