"""The work of a table sweep (`tracking.record=table`) under gdexp's sweeper: the grid read as
axes from the overrides (gdexp.grid: one composed config per set of config-group choices, never
one per config), one parent run (gdexp.sweep.TableSweep), the chunks trained in this process or
on a cluster (a launcher's `launch_table`), the table gathered, the edge table and the phase map
put beside it, and the closing lines."""

import contextlib
import itertools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.types import Override
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from gdexp import names
from gdexp.config import ConfigError, config_problems
from hydra_plugins.gdexp_plugins._common import refuse_missing_cuda
from hydra_plugins.gdexp_plugins._job_configs import JobConfigs

log = logging.getLogger(__name__)

# Launchers that run a table sweep's chunks in this process; others need `launch_table`.
IN_PROCESS_LAUNCHERS = ("BasicLauncher", "BatchedLauncher")


class TableSweepFailed(CompactHydraException):
    pass


def _launcher_name(config: DictConfig) -> str:
    return str(OmegaConf.select(config, "hydra.runtime.choices.hydra/launcher") or "?")


def table_grid(sweeper: Any, overrides: Sequence[Override]) -> Any:
    """The sweep's grid as axes: each set of config-group choices composed once, with the
    overrides of one value; the swept keys as typed axes. Checked whole before anything runs."""
    from gdexp.grid import TableGrid

    composer = JobConfigs(sweeper.hydra_context.config_loader, sweeper.config)
    by_key: dict[str, Override] = {}
    for override in overrides:  # a later value of a key replaces an earlier one, as Hydra's
        by_key[override.key_or_group] = override
    groups, fixed, swept = [], [], []
    for key, override in by_key.items():
        if override.is_delete():
            raise ConfigError(f"{override.input_line}: a table sweep cannot delete keys")
        if composer._is_group_choice(override):
            values = (
                list(override.sweep_string_iterator())
                if override.is_sweep_override()
                else [override.value()]
            )
            groups.append([f"{override.get_key_element()}={value}" for value in values])
        elif not override.is_sweep_override():
            fixed.append(override.input_line)
        else:
            if key.startswith("tracking."):
                raise ConfigError(
                    f"{override.input_line}: tracking.* cannot be swept; a sweep is one parent "
                    "run in one experiment, recorded one way."
                )
            swept.append((key, list(override.sweep_iterator()), override.input_line))
    bases = []
    for choice in itertools.product(*groups):
        cfg = composer.compose([*choice, *fixed])
        bases.append((" ".join(choice) or "defaults", cfg))
    grid = TableGrid.build(bases, swept)
    problems: dict[str, str] = {}
    for block, cfg in grid.iter_blocks():
        for problem in config_problems(cfg):
            problems.setdefault(problem, str(block))
    if problems:
        lines = "\n  ".join(problems)
        raise ConfigError(f"Invalid sweep, no run was started:\n  {lines}")
    return grid


def _refuse_launcher(sweeper: Any) -> bool:
    """Whether the chunks run in this process; refuses launchers that cannot run them."""
    launcher = sweeper.launcher
    if type(launcher).__name__ in IN_PROCESS_LAUNCHERS:
        return True
    if hasattr(launcher, "launch_table"):
        return False
    name = _launcher_name(sweeper.config)
    raise ConfigError(
        f"tracking.record=table trains the grid in chunks, in this process "
        f"(hydra/launcher=batched) or on a cluster (hydra/launcher=slurm_batched); "
        f"hydra/launcher={name} runs one config per job: choose one of those, or "
        "tracking.record=runs."
    )


def table_sweep(sweeper: Any, overrides: Sequence[Override]) -> list:
    config = sweeper.config
    in_process = _refuse_launcher(sweeper)
    grid = table_grid(sweeper, overrides)
    first = grid.bases[0][1]
    if not first.tracking.enabled:
        raise ConfigError(
            "tracking.record=table records the sweep's table on an MLflow run: it needs "
            "tracking.enabled=true."
        )

    from gdexp.store import preflight, resolve_tracking_uri, writable_folder

    launch_dir = Path(config.hydra.runtime.cwd)
    sweep_dir = launch_dir / config.hydra.sweep.dir
    writable_folder(sweep_dir, "the sweep's output folder (hydra.sweep.dir)")
    preflight(resolve_tracking_uri(first.tracking.uri, launch_dir))
    refuse_missing_cuda(cfg for _, cfg in grid.iter_blocks())

    from gdexp import stopping
    from gdexp.grid import DEFAULT_CHUNK
    from gdexp.store import open_tracker
    from gdexp.sweep import TableSweep

    tracker = open_tracker(
        first.tracking.uri, first.tracking.experiment, first.tracking.retry_seconds, launch_dir
    )
    chunks = grid.chunks(int(getattr(sweeper.launcher, "table_chunk", DEFAULT_CHUNK)))
    sweep = TableSweep.open_table(
        tracker,
        sweep_dir,
        grid_identity=grid.identity(),
        describe=grid.describe(),
        chunks=[(c.start, c.stop) for c in chunks],
        resume=first.tracking.resume,
        retry_seconds=first.tracking.retry_seconds,
    )
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    done = set(sweep.done_chunks())
    todo = [c for c in chunks if (c.start, c.stop) not in done]
    kept = sum(len(c) for c in chunks if (c.start, c.stop) in done)
    resumed = f"; resuming: {kept:,} configs already done" if kept else ""
    log.info(
        "Table sweep of %s configs in %d chunks%s; parent run %s in %s",
        f"{len(grid):,}", len(chunks), resumed, sweep.parent_run_id, tracker.uri,
    )  # fmt: skip
    progress = ChunkProgress(len(grid), kept)
    try:
        if in_process:
            from gdexp.run import run_table_chunks

            run_table_chunks(grid, todo, sweep_dir, sweep.parent_run_id, progress)
            failures: list[str] = []
        else:
            failures = sweeper.launcher.launch_table(
                grid, todo, sweep_dir, sweep.parent_run_id, progress
            )
        stopping.check()  # asked while the launcher waited for its tasks
    except Exception as error:
        if stopping.requested():
            sweep.close_interrupted()
            raise stopping.StopRequested(stopping.requested()) from error
        with contextlib.suppress(Exception):
            sweep.close()
            sweep.end("FAILED")
        raise TableSweepFailed(
            f"The launcher failed ({type(error).__name__}: {str(error).strip()[:300]}); the "
            "chunks done are kept. Run the same command again to resume."
        ) from error
    except BaseException:
        sweep.close_interrupted()
        raise
    tally = sweep.close()
    if failures or tally.rows < tally.configs:
        sweep.end("FAILED")
        lines = "\n  ".join(failures)
        raise TableSweepFailed(
            f"{tally.configs - tally.rows:,} of {tally.configs:,} configs were not trained "
            f"(the parent run {sweep.parent_run_id} is FAILED, with the rows that were):\n  "
            f"{lines}\nRun the same command again: the chunks done are kept."
        )
    try:
        edges = edge_text(annotate(sweep, tally))
    except Exception as error:  # the table is kept whatever becomes of what is drawn from it
        log.warning("The edge table and phase map could not be made: %s", error)
        edges = "  (none: see the warning above)"
    sweep.end("FINISHED")
    counts = ", ".join(f"{n:,} {o}" for o, n in tally.outcomes.items() if n)
    log.info(
        "Sweep done: %s configs (%s)\nStep-size edges (measured: the smallest step size at "
        "which at least half the seeds show the event; theory beside it):\n%s\n%s\n"
        "The sweep's run (its table %s, edges %s, phase map %s): %s",
        f"{tally.configs:,}", counts, edges, tracker.ui_hint(),
        names.TABLE_ARTIFACT, names.EDGES_ARTIFACT, names.PHASE_MAP_ARTIFACT,
        tracker.run_address(sweep.parent_run_id),
    )  # fmt: skip
    return []


class ChunkProgress:
    """A line per finished chunk: configs done / total, configs per second, time left."""

    def __init__(self, total: int, kept: int) -> None:
        self.total, self.done, self.kept = total, kept, kept
        self.start = time.perf_counter()

    def __call__(self, chunk: Any) -> None:
        from hydra_plugins.gdexp_plugins._progress import duration

        self.done += len(chunk)
        seconds = max(time.perf_counter() - self.start, 1e-9)
        rate = (self.done - self.kept) / seconds
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        log.info(
            "Progress: %s/%s configs (%.0f%%), %s configs/s, %s left",
            f"{self.done:,}", f"{self.total:,}", 100 * self.done / self.total,
            f"{rate:,.0f}", duration(left),
        )  # fmt: skip


def annotate(sweep: Any, tally: Any) -> Any:
    """The edge table (CSV) and the phase map (PNG) of a finished table sweep, on its parent and
    in its folder, as the report makes them (`gdexp.analysis.report.edge_report`); returns the
    edge table."""
    import pyarrow.parquet as pq

    from gdexp.analysis.edges import edge_table_csv
    from gdexp.analysis.figures import phase_map
    from gdexp.analysis.report import edge_report
    from gdexp.analysis.tables import DATA_COLUMNS

    columns = ["method", "batch_size", "shuffle", "step_size", "seed", "outcome", "final_loss",
               "optimal_loss", *DATA_COLUMNS]  # fmt: skip
    results = pq.read_table(tally.table_path, columns=columns).to_pandas()
    edges = edge_report(results).table
    csv = sweep.folder / names.EDGES_ARTIFACT
    csv.write_text(edge_table_csv(edges))
    figure = sweep.folder / names.PHASE_MAP_ARTIFACT
    phase_map(results, edges).savefig(figure, dpi=120, bbox_inches="tight")
    client = sweep.tracker.client
    client.log_artifact(sweep.parent_run_id, str(csv))
    client.log_artifact(sweep.parent_run_id, str(figure))
    return edges


def edge_text(edges: Any) -> str:
    """The edge table as aligned text: a row per batch size, order and event."""

    def step(value: float) -> str:
        return "-" if value != value else "none" if value == float("inf") else f"{value:.3g}"

    header = ["batch", "order", "event", "measured", "interval", "theory", "kind"]
    rows = []
    for row in edges.itertuples(index=False):
        theory = getattr(row, "theory_step_size", float("nan"))
        low, high = getattr(row, "measured_lower", float("nan")), row.measured_upper
        rows.append([
            str(row.batch_size), row.order, row.event, step(row.measured_step_size),
            f"({step(low)}, {step(high)}]" if high != float("inf") else f"> {step(low)}",
            step(theory),
            str(getattr(row, "theory_kind", "-")),
        ])  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )
