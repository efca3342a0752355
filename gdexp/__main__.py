"""`python -m gdexp [key=value ...]`: one run; add `-m` and comma-separated values for a sweep.

`cli` answers `--help` and refuses command lines with mistakes (a misspelled key, a value of the
wrong type or out of range, a method or sweep that does not exist) before Hydra composes
anything; Hydra's own checks and `validate` stay as the backstop. Neither loads torch or MLflow:
`main` imports them once a run is certain.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import MISSING as NO_DEFAULT
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gdexp import stopping
from gdexp.config import (
    HELP_RESOLVER,
    config_problems,
    register_configs,
    schema_keys,
    schema_nodes,
    show_value,
    type_name,
    unknown_key_problem,
    validate,
    value_problems,
)

# Absolute, so that `python -m gdexp`, the `gdexp` script and wrappers that import `main` all
# find the same configs.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")

log = logging.getLogger("gdexp.run")

# Config groups of gdexp's own (conf/<group>/*.yaml), as a command line chooses them.
GROUPS = {"method": "method", "sweeps": "+sweeps"}
# Largest number of values of one swept key checked before the sweep starts (range(0,10**6)...).
MAX_CHECKED_VALUES = 10_000

LAUNCHERS = {
    "basic": "the default: one job after another, in this process",
    "batched": "the whole grid in this process as one tensor computation; fastest for short runs",
    "joblib": "jobs in parallel worker processes, one per core (hydra.launcher.n_jobs=2)",
    "submitit_local": "each job in a process of its own, as on a cluster",
    "slurm": "one SLURM array task per run (hydra.launcher.partition=NAME)",
    "slurm_batched": "SLURM array tasks of hydra.launcher.runs_per_task runs, each batched",
}
SWEEPERS = {
    "gdexp": "the default: every combination of the listed values, checked whole, resumable",
    "basic": "Hydra's own sweeper: every combination, one after another",
    "optuna": "searches ranges, interval(...), with Optuna (+sweeps=best_step_size)",
}
# Hydra's plugin groups that gdexp documents, as a command line chooses them.
PLUGIN_GROUPS = {"hydra/launcher": LAUNCHERS, "hydra/sweeper": SWEEPERS}
EXAMPLES = (
    ("python -m gdexp method=sgd step_size=0.01 seed=3", "one run"),
    ("python -m gdexp -m method=bgd,sgd step_size=0.01,0.05,0.1 seed=0,1,2", "an 18-run sweep"),
    ("python -m gdexp -m +sweeps=step_sizes hydra/launcher=batched", "195 runs, batched"),
)


# --- help ---------------------------------------------------------------------------------------


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def described(path: Path) -> str:
    """The first sentence of a config file's header: its comment lines after the command."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text.startswith(("@package", "python -m gdexp")):
            words.append(text)
    return re.split(r"(?<=\.)\s", " ".join(words), maxsplit=1)[0]


def sweep_command(path: Path) -> str:
    """The command in a sweep file's header (`# python -m gdexp -m ... +sweeps=NAME`)."""
    for line in path.read_text().splitlines():
        text = line.lstrip("#").strip()
        if text.startswith("python -m gdexp"):
            return text
    return f"python -m gdexp -m +sweeps={path.stem}"


def _table(rows: Sequence[Sequence[str]], width: int = 100) -> list[str]:
    """Columns, the last one wrapped under itself."""
    widths = [max(len(row[i]) for row in rows) + 2 for i in range(len(rows[0]) - 1)]
    left = 2 + sum(widths)
    lines = []
    for *first, last in rows:
        wrapped = textwrap.wrap(last, max(width - left, 30)) or [""]
        cells = "".join(f"{cell:<{w}}" for cell, w in zip(first, widths, strict=True))
        lines.append(f"  {cells}{wrapped[0]}".rstrip())
        lines += [" " * left + more for more in wrapped[1:]]
    return lines


def _default(key: str, default: Any) -> str:
    if key.startswith("method."):
        return "per method"
    return "-" if default is NO_DEFAULT else show_value(default).strip("'")


def help_text() -> str:
    """`gdexp --help`: what gdexp is, its keys (from the schema), methods, sweeps and launchers
    (from conf/), and examples."""
    keys = [("KEY", "TYPE", "DEFAULT", "MEANING")] + [
        (k.key, type_name(k.type), _default(k.key, k.default), k.help) for k in schema_keys()
    ]
    methods = [(name, described(Path(CONFIG_DIR, "method", f"{name}.yaml"))) for name in
               group_options("method")]  # fmt: skip
    sweeps = []
    for name in group_options("sweeps"):
        path = Path(CONFIG_DIR, "sweeps", f"{name}.yaml")
        sweeps += [(name, sweep_command(path)), ("", described(path))]
    lines = [
        "gdexp: gradient descent on y = w·x + b, each run tracked in MLflow (config by Hydra).",
        "",
        "  python -m gdexp [KEY=VALUE ...]        one run (default: bgd, step_size 0.1, 20 epochs)",
        "  python -m gdexp -m KEY=V1,V2 ...       a sweep over every combination: one MLflow",
        "                                         parent run, a child run per combination",
        "",
        "Methods (method=NAME; default bgd):",
        *_table(methods),
        "",
        "Keys (KEY=VALUE):",
        *_table(keys),
        "",
        "Predefined sweeps (-m +sweeps=NAME; files in sweeps/), each with its command:",
        *_table(sweeps),
        "",
        "Launchers, for sweeps (-m hydra/launcher=NAME):",
        *_table(list(LAUNCHERS.items())),
        "",
        "Sweepers (-m hydra/sweeper=NAME):",
        *_table(list(SWEEPERS.items())),
        "",
        "Examples:",
        *_table(EXAMPLES),
        "",
        "More: --cfg job prints the composed config; --hydra-help shows Hydra's own flags;",
        "README.md has the rest.",
    ]
    return "\n".join(lines) + "\n"


def register_help() -> None:
    """gdexp's help as Hydra's help template too (hydra/help=gdexp), for `--help` on the paths
    `cli` leaves to Hydra: -cn, -cp, -cd, or `main` called from a wrapper."""
    OmegaConf.register_new_resolver(
        HELP_RESOLVER,
        lambda: help_text().rstrip("\n").replace("$", "$$"),  # Hydra fills in $CONFIG etc.
        replace=True,
    )


register_configs()
register_help()


# --- mistakes on the command line -------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A parsed override element as a Python value (quoted strings as str)."""
    from hydra.core.override_parser.types import QuotedString

    if isinstance(value, QuotedString):
        return value.text
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def _sweep_hint(line: str) -> str:
    return f"{line} lists several values: add -m to sweep over them (python -m gdexp -m {line})"


def _group_problems(
    override: Any, multirun: bool, running: bool, parsed: Sequence[Any]
) -> list[str]:
    line, group = override.input_line, override.key_or_group
    from hydra.core.override_parser.types import ValueType

    if override.is_delete() or override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        return []
    as_typed = GROUPS[group]  # method, +sweeps
    if override.is_sweep_override():
        if not multirun:
            return [_sweep_hint(line)]
        values = [str(v) for v in override.sweep_string_iterator()]
    else:
        values = [str(override.value())]
    options = group_options(group)
    noun = {"method": "method", "sweeps": "predefined sweep"}[group]
    problems = []
    for value in values:
        if value not in options:
            close = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
            hint = f"did you mean {as_typed}={close[0]}? " if close else ""
            problems.append(
                f"{line}: gdexp has no {noun} '{value}'; {hint}the {noun}s are {', '.join(options)}"
            )
    adds = override.is_add() or override.is_force_add()
    if group == "method" and adds:
        problems.append(f"{line}: a method is chosen without a plus: {line.lstrip('+')}")
    elif group == "sweeps" and not adds:
        problems.append(f"{line}: a predefined sweep is added with a plus: +{line}")
    elif group == "sweeps" and not problems:
        if not multirun and running:
            problems.append(f"{line} is a sweep: add -m (python -m gdexp -m {line})")
        elif multirun and not _optimising_sweeper(parsed):
            for value in values:
                text = Path(CONFIG_DIR, "sweeps", f"{value}.yaml").read_text()
                if "interval(" in text:
                    problems.append(
                        f"{line} searches a range: add hydra/sweeper=optuna "
                        f"({sweep_command(Path(CONFIG_DIR, 'sweeps', f'{value}.yaml'))})"
                    )
    return problems


def _plugin_problems(override: Any) -> list[str]:
    """A launcher or sweeper that neither gdexp documents nor any installed plugin provides."""
    group, line = override.key_or_group, override.input_line
    if override.is_delete() or override.is_sweep_override():
        return []
    value, documented = str(override.value()), PLUGIN_GROUPS[group]
    if value in documented:
        return []
    installed = _installed_choices(group)
    if value in installed:  # another plugin's, or one gdexp does not list: Hydra's business
        return []
    noun = group.split("/")[1]
    close = difflib.get_close_matches(value, [*documented, *installed], n=1, cutoff=0.6)
    hint = f"did you mean {group}={close[0]}? " if close else ""
    return [
        f"{line}: gdexp has no {noun} '{value}'; {hint}the {noun}s are "
        f"{', '.join(documented)} (python -m gdexp --help)"
    ]


def _installed_choices(group: str) -> list[str]:
    """Hydra's options for a plugin group: what installed plugins register, and gdexp's conf/.
    Looked up only for a name gdexp does not document (it imports every Hydra plugin)."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # plugins register their configs as they are imported
    stored = (
        ConfigStore.instance().list(group) if group in ("hydra/launcher", "hydra/sweeper") else []
    )
    ours = Path(CONFIG_DIR, group).glob("*.yaml")
    return sorted({name.removesuffix(".yaml") for name in stored} | {p.stem for p in ours})


def _optimising_sweeper(parsed: Sequence[Any]) -> bool:
    """Whether the command line chooses another sweeper than gdexp's grid sweeper (a sweep
    file cannot: conf/config.yaml's choice outranks it)."""
    return any(o.key_or_group == "hydra/sweeper" and str(o.value()) != "gdexp" for o in parsed)


def command_line_problems(
    overrides: Sequence[str], multirun: bool = False, running: bool = True
) -> list[str]:
    """What is wrong with the command line's overrides, one line each, against gdexp's schema
    and config groups; Hydra's own keys (hydra.*, hydra/*) are left to Hydra. `running`: the
    command would run (not --cfg, --help, --info)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser, parsed, problems = OverridesParser.create(), [], []
    for line in overrides:
        try:
            parsed += parser.parse_overrides([line])
        except OverrideParseException as error:
            if "=" not in line and not line.startswith("~"):
                problems.append(f"{line}: a setting is KEY=VALUE (python -m gdexp --help)")
                continue
            reasons = [
                text for text in str(error).strip().splitlines()
                if not text.startswith(("Error parsing override", "See https://"))
            ]  # fmt: skip
            problems.append(
                f"{line}: Hydra cannot read it ({'; '.join(reasons)}); the syntax is at "
                "https://hydra.cc/docs/advanced/override_grammar/basic/"
            )
    if problems:
        return problems
    multirun = multirun or any(
        o.key_or_group == "hydra.mode" and str(o.value()) == "MULTIRUN" for o in parsed
    )
    known = {k.key for k in schema_keys()} | schema_nodes()
    for override in parsed:
        key, line = override.key_or_group, override.input_line
        if key in PLUGIN_GROUPS:
            problems += _plugin_problems(override)
            continue
        if override.is_hydra_override() or key == "hydra" or override.package is not None:
            continue
        if key in GROUPS and not isinstance(override.value(), dict):
            problems += _group_problems(override, multirun, running, parsed)
        elif key not in known:
            problems.append(unknown_key_problem(line, key, also=GROUPS.values()))
        elif override.is_delete():
            continue
        elif override.is_add():
            problems.append(f"{line}: {key} is already a key; set it without the plus: {line[1:]}")
        elif override.is_sweep_override() and not multirun:
            problems.append(_sweep_hint(line))
        elif override.is_interval_sweep():
            if not _optimising_sweeper(parsed):
                problems.append(
                    f"{line} is a range to search, and the default sweeper runs listed values "
                    f"(step_size=0.01,0.1): add hydra/sweeper=optuna to search it"
                )
        elif override.is_sweep_override():
            values = itertools.islice(override.sweep_iterator(), MAX_CHECKED_VALUES)
            problems += value_problems(line, key, (_plain(v) for v in values))
        else:
            problems += value_problems(line, key, [override.value()])
    return problems


def _parsed_arguments(argv: Sequence[str]) -> Any:
    """The command line as Hydra's own parser reads it; None if it does not (Hydra says why)."""
    import argparse

    try:
        from hydra._internal.utils import get_args_parser  # Hydra's parser: no public API

        parser = get_args_parser()
        parser.exit_on_error = False
        arguments, _ = parser.parse_known_args(list(argv))
    except (ImportError, argparse.ArgumentError):
        return None
    return arguments


def refuse(problems: Sequence[str], code: int = 2) -> NoReturn:
    """One line a problem on stderr, then exit: no traceback, no run."""
    sys.stderr.write("".join(f"{problem}\n" for problem in problems))
    sys.exit(code)


# --- the command ------------------------------------------------------------------------------


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """One run. Returns its objective (`objective=`, lower is better) for any Hydra sweeper."""
    hydra_cfg = HydraConfig.get()
    job_of_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if job_of_sweep:
        validate(cfg)  # a job of a sweep fails (the sweep goes on and reports it)
        return _run(cfg, hydra_cfg, job_of_sweep)
    problems = config_problems(cfg)
    if problems:
        refuse(problems)
    try:
        return _run(cfg, hydra_cfg, job_of_sweep)
    except CompactHydraException as error:  # gdexp's one-line errors, without Hydra's footer
        refuse([str(error).strip()], code=1)


def _run(cfg: DictConfig, hydra_cfg: DictConfig, job_of_sweep: bool) -> float:
    # Paths are taken from the launch folder, wherever the job runs (hydra.job.chdir=true).
    launch_dir = Path(hydra_cfg.runtime.cwd)
    # Jobs in worker processes and cluster tasks never ran `cli`: their signals set the flag
    # too, and they stop when the sweep they work for is asked to.
    stopping.install()
    if job_of_sweep:
        stopping.follow(launch_dir / hydra_cfg.sweep.dir)
    try:
        stopping.check()  # between runs: a stopped sweep starts no new one
        return _tracked_run(cfg, hydra_cfg, job_of_sweep, launch_dir)
    except stopping.StopRequested:
        if not job_of_sweep or stopping.is_command():
            raise  # this process runs the command: it closes the sweep, and exits 130
        # A job in a worker or task: the launcher hands its failure back; the command stops.
        raise JobStopped("stopped: the sweep was asked to stop") from None


class JobStopped(Exception):
    """A job in a worker process that stopped because its sweep was asked to."""


def _tracked_run(
    cfg: DictConfig, hydra_cfg: DictConfig, job_of_sweep: bool, launch_dir: Path
) -> float:
    manifest = None
    if cfg.tracking.enabled:
        from gdexp.store import SweepManifest, preflight, resolve_tracking_uri

        manifest = SweepManifest.read(launch_dir / hydra_cfg.sweep.dir) if job_of_sweep else None
        if manifest is None:  # a store that cannot be used is refused before torch loads
            preflight(resolve_tracking_uri(cfg.tracking.uri, launch_dir))

    # Imported here: composing, validating, --help and refusals never load torch or MLflow.
    from gdexp.run import objective_value, run_experiment

    destination = None
    if cfg.tracking.enabled:
        from gdexp.store import Destination, open_tracker

        if manifest is not None:
            destination = manifest.destination()
        else:
            tracking = cfg.tracking
            destination = Destination(
                open_tracker(tracking.uri, tracking.experiment, tracking.retry_seconds, launch_dir)
            )
            # First, so that a single run ends with its result line.
            log.info(destination.tracker.ui_hint())
    summary = run_experiment(
        cfg,
        overrides=list(hydra_cfg.overrides.task),
        destination=destination,
        epoch_level=logging.DEBUG if job_of_sweep else logging.INFO,
    )
    return objective_value(summary, cfg.objective)


def _stopped() -> NoReturn:
    """After a stop was asked for: close what is still open, say so once, exit 130."""
    said = False
    if "gdexp.sweep" in sys.modules:  # a sweep another sweeper drove may still be open
        from gdexp.sweep import close_open_sweeps, interruption_reported

        close_open_sweeps()
        said = interruption_reported()
    if not said:
        sys.stderr.write(
            f"Interrupted ({stopping.requested() or 'SIGINT'}): stopped at a safe point; a run "
            "in flight is marked KILLED.\n"
        )
    sys.exit(stopping.INTERRUPTED_EXIT_CODE)


def cli() -> None:
    """The command: gdexp's help and command-line checks, then Hydra. SIGINT and SIGTERM ask
    for a stop, which gdexp makes at its next safe point: runs in flight end as KILLED."""
    stopping.install(command=True)
    arguments = _parsed_arguments(sys.argv[1:])
    # Another config (-cp, -cn, -cd) or Hydra's own business: Hydra alone.
    ours = arguments is not None and not (
        arguments.config_path or arguments.config_name or arguments.config_dir
        or arguments.hydra_help or arguments.shell_completion or arguments.experimental_rerun
    )  # fmt: skip
    if ours and arguments.help:
        sys.stdout.write(help_text())
        return
    modes = ("run", "multirun", "cfg", "info", "shell_completion")
    chosen = [mode for mode in modes if getattr(arguments, mode, None)] if arguments else []
    if len(chosen) > 1:
        flags = " and ".join("--" + mode.replace("_", "-") for mode in chosen)
        refuse([f"{flags}: choose one (--cfg job shows one config; -m runs a sweep)"])
    if ours and not arguments.info:
        problems = command_line_problems(
            arguments.overrides, multirun=arguments.multirun, running=arguments.cfg is None
        )
        if problems:
            refuse(problems)
    try:
        main()
    except KeyboardInterrupt:
        _stopped()
    if stopping.requested():  # asked after the last safe point: still a stop, not a success
        _stopped()


if __name__ == "__main__":
    cli()
