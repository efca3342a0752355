"""A sweep's life in MLflow: one parent run whose children are exactly the sweep's runs.

`Sweep.open` opens the store, creates the parent run (or reopens the parent of an earlier attempt
at the same grid made by the same code) and writes the sweep's manifest into the sweep folder;
each job reads the manifest (`gdexp.store.SweepManifest`) to log its run under that parent, on any
launcher that shares the folder. `Sweep.close` tallies the children from the store itself, so
the tally is the same whichever sweeper or launcher ran them, marks what an interruption cut
short, records the best run and closes the parent.

gdexp's grid sweeper opens a sweep after validating the whole grid and skips the configs an
earlier attempt finished; any other sweeper (basic, Optuna) gets a tracked sweep through the
callback in `hydra_plugins.gdexp_plugins.multirun_callback`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hydra.errors import CompactHydraException
from mlflow.entities import Run

from gdexp import names, record, stopping
from gdexp.outcome import OUTCOMES
from gdexp.store import SweepManifest, Tracker, first_line

log = logging.getLogger(__name__)

# Sweeps opened in this process and not closed yet: what an interrupt must close
# (`close_open_sweeps`), whichever sweeper opened them.
_open_sweeps: list[Sweep] = []


class CodeChanged(CompactHydraException):
    """An interrupted sweep would be resumed with other code than it started with."""


class FolderBusy(CompactHydraException):
    """Another sweep is running in this sweep's output folder."""


def claim_folder(folder: Path) -> int:
    """Hold the sweep folder for this process (released when it closes the sweep or exits,
    however it exits): two sweeps in one folder would share its manifest and mix their runs.
    Hydra names sweep folders by the second, so two sweeps started in the same second collide."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / names.SWEEP_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderBusy(
            f"Another sweep is running in {folder}; give this one its own folder with "
            "hydra.sweep.dir=... (Hydra's default names folders by the second)."
        ) from None
    return fd


def earlier_attempt(tracker: Tracker, identity: str, code: str) -> Run | None:
    """The latest sweep of this identity (its grid) in the experiment, to resume; refused if
    other code made it (its numbers would not be comparable)."""
    earlier = tracker.search(f"tags.`{names.SWEEP_HASH_TAG}` = '{identity}'")
    if not earlier:
        return None
    latest = max(earlier, key=lambda run: run.info.start_time)
    old_code = latest.data.tags.get(names.CODE_TAG, "unknown")
    if old_code != code:
        raise CodeChanged(
            f"This sweep was started ({latest.info.run_id}) with code {old_code}; the code is "
            f"now {code}, so its results would not be comparable. Start it afresh with "
            "tracking.resume=false."
        )
    return latest


def grid_hash(config_hashes: Sequence[str]) -> str:
    """A sweep's identity: the set of its configs (each a config hash)."""
    return hashlib.sha256(" ".join(sorted(set(config_hashes))).encode()).hexdigest()[:32]


@dataclass
class Tally:
    """A closed sweep, counted from its children in the store: each config once."""

    runs: list[Run]  # the latest attempt of each config
    outcomes: Counter = field(default_factory=Counter)  # of the FINISHED runs
    failed: int = 0
    killed: int = 0  # runs whose latest attempt was cut short
    killed_in_flight: int = 0  # runs of this attempt that an interruption cut short
    superseded: int = 0  # earlier attempts that a later one re-ran
    best: Run | None = None  # the FINISHED run with the lowest objective
    best_value: float = math.inf

    @property
    def finished(self) -> int:
        return sum(self.outcomes.values())


def describe_sweep(command: str, grid: Mapping[str, str], n_runs: int, tally: Tally) -> str:
    axes = ", ".join(f"{key} ∈ {{{values}}}" for key, values in grid.items()) or "no swept keys"
    counts = ", ".join(f"{tally.outcomes.get(o, 0)} {o}" for o in OUTCOMES)
    ended = f"{tally.failed} failed, {tally.killed} killed"
    # The tally first: the MLflow runs table shows only the first ~50 characters.
    return f"{n_runs} runs: {counts}; {ended}. `{command}` over {axes}."


class Sweep:
    """One sweep's parent run in one experiment of one store."""

    def __init__(
        self,
        tracker: Tracker,
        parent_run_id: str,
        folder: Path,
        grid: Mapping[str, str],
        n_runs: int | None,
        done: Mapping[str, Run],
        retry_seconds: float,
        folder_claim: int | None = None,
    ) -> None:
        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self.folder = folder
        self.grid = dict(grid)
        self.n_runs = n_runs  # None: the sweeper decides as it goes (an optimiser)
        self.done = dict(done)  # FINISHED runs of an earlier attempt, by config hash
        self.manifest = SweepManifest(
            tracker.uri, tracker.experiment, parent_run_id, retry_seconds, str(folder.resolve())
        )
        self.closed = False
        self.folder_claim = folder_claim
        self.opened_at = int(time.time() * 1000)  # ms, as MLflow's run start times

    @classmethod
    def open(
        cls,
        tracker: Tracker,
        folder: Path,
        *,
        grid: Mapping[str, str],
        sweeper: str,
        config_hashes: Sequence[str] | None = None,
        resume: bool = True,
        retry_seconds: float = 60.0,
    ) -> Sweep:
        """Create the sweep's parent run, or reopen the one of an earlier attempt at the same
        grid of configs (`config_hashes`; None for a sweeper that picks configs as it goes)."""
        claim = claim_folder(folder)
        try:
            return cls._open(tracker, folder, claim, grid, sweeper, config_hashes, resume,
                             retry_seconds)  # fmt: skip
        except BaseException:
            os.close(claim)
            raise

    @classmethod
    def _open(
        cls,
        tracker: Tracker,
        folder: Path,
        claim: int,
        grid: Mapping[str, str],
        sweeper: str,
        config_hashes: Sequence[str] | None,
        resume: bool,
        retry_seconds: float,
    ) -> Sweep:
        close_abandoned_sweeps(tracker)
        code = record.code_fingerprint()
        identity = grid_hash(config_hashes) if config_hashes is not None else None
        parent, done = None, {}
        latest = earlier_attempt(tracker, identity, code) if identity and resume else None
        if latest is not None:  # the earlier attempt's parent, reopened
            parent = latest.info.run_id
            done = {
                run.data.tags[names.CONFIG_HASH_TAG]: run
                for run in tracker.children(parent, "FINISHED")
                if names.CONFIG_HASH_TAG in run.data.tags
            }
            tracker.client.update_run(parent, status="RUNNING")
        n_runs = len(set(config_hashes)) if config_hashes is not None else None
        if parent is None:
            tags = {
                **record.provenance_tags(),
                names.KIND_TAG: names.SWEEP_KIND,
                names.SWEEPER_TAG: sweeper,
                names.SWEEP_DIR_TAG: str(folder.resolve()),
                **{f"{names.GRID_TAG_PREFIX}{key}": values for key, values in grid.items()},
            }
            if identity is not None:
                tags[names.SWEEP_HASH_TAG] = identity
                tags[names.N_RUNS_TAG] = str(n_runs)
            size = f" ({n_runs} runs)" if n_runs is not None else ""
            parent = tracker.start_run(f"sweep {folder.name}{size}", tags=tags)
        sweep = cls(tracker, parent, folder, grid, n_runs, done, retry_seconds, claim)
        sweep.manifest.write(folder)
        _open_sweeps.append(sweep)
        stopping.announce(folder)  # a stop asked of this process reaches jobs elsewhere
        return sweep

    def todo(self, config_hashes: Sequence[str]) -> list[int]:
        """Indices of the configs still to run: those an earlier attempt did not finish."""
        return [i for i, h in enumerate(config_hashes) if h not in self.done]

    def close(self, interrupted: bool = False, objective: str = "final_loss") -> Tally:
        """Count the children, mark what an interruption cut short, record the tally and the
        best run on the parent, and close it: KILLED if interrupted, FAILED if a run failed or
        was killed, else FINISHED."""
        try:
            return self._close(interrupted, objective)
        finally:
            self.release_folder()

    def release_folder(self) -> None:
        stopping.forget(self.folder)
        if self.folder_claim is not None:
            os.close(self.folder_claim)  # closing the descriptor releases its flock
            self.folder_claim = None

    def _close(self, interrupted: bool, objective: str) -> Tally:
        tracker = self.tracker
        children = tracker.children(self.parent_run_id)
        # A child still RUNNING when its sweep has stopped will not finish.
        cut_short = {r.info.run_id for r in children if r.info.status in ("RUNNING", "SCHEDULED")}
        for run_id in cut_short:
            tracker.end_run(run_id, "KILLED")
        tally = self._tally(children, cut_short, objective)
        # Cut short in this attempt: marked KILLED here, or by the run itself as it was stopped.
        tally.killed_in_flight = sum(
            1
            for run in children
            if run.info.start_time >= self.opened_at
            and (run.info.run_id in cut_short or run.info.status == "KILLED")
        )
        status = (
            "KILLED" if interrupted else "FAILED" if tally.failed or tally.killed else "FINISHED"
        )
        tracker.log(self.parent_run_id, tags=self._summary_tags(tally, objective))
        tracker.client.log_dict(
            self.parent_run_id,
            {"run_ids": sorted(run.info.run_id for run in tally.runs)},
            names.SWEEP_RUNS_ARTIFACT,
        )
        self._record_table(tally.runs, cut_short)
        tracker.end_run(self.parent_run_id, status)
        self.closed = True
        if self in _open_sweeps:
            _open_sweeps.remove(self)
        return tally

    def _record_table(self, runs: Sequence[Run], cut_short: set[str]) -> None:
        """The sweep's table (gdexp.table) on its parent: a row per config, its latest attempt.
        Rows come from the parts its runs left in the sweep folder, then from an earlier
        attempt's table; a run that left none (its process died first) is read back through
        MLflow's API."""
        import tempfile

        from gdexp import table

        tracker = self.tracker
        sources = [table.read_parts([self.folder])]
        with tempfile.TemporaryDirectory() as scratch:
            if self.done:  # resumed: the runs it reused have their rows in its last table
                with contextlib.suppress(Exception):
                    path = tracker.client.download_artifacts(
                        self.parent_run_id, names.TABLE_ARTIFACT, scratch
                    )
                    sources.append(table.read_table(Path(path)))
            ids = [run.info.run_id for run in runs]
            rows, missing = table.sweep_table(ids, sources)
            by_id = {run.info.run_id: run for run in runs}
            for run_id in missing:
                rows.append(self._row_from_store(by_id[run_id], run_id in cut_short))
            order = {run_id: i for i, run_id in enumerate(ids)}
            rows.sort(key=lambda row: order[row["run_id"]])
            for row in rows:  # what MLflow knows of each run: the same in every source
                info = by_id[row["run_id"]].info
                row.update(run_name=info.run_name, parent_run_id=self.parent_run_id,
                           start_time=info.start_time)  # fmt: skip
            path = Path(scratch) / names.TABLE_ARTIFACT
            table.write_table(rows, path)
            tracker.client.log_artifact(self.parent_run_id, str(path))

    def _row_from_store(self, run: Run, cut_short: bool) -> dict:
        from gdexp import table

        status = "KILLED" if cut_short else run.info.status
        histories = {}
        if status == "FINISHED":
            for key in table.HISTORY_COLUMNS:
                points = self.tracker.client.get_metric_history(run.info.run_id, key)
                histories[key] = [p.value for p in sorted(points, key=lambda p: p.step)]
        return table.record_row(
            run.info.run_id, status, run.data.params, run.data.metrics,
            run.data.tags.get(names.OUTCOME_TAG), histories,
        )  # fmt: skip

    def _tally(self, children: Sequence[Run], cut_short: set[str], objective: str) -> Tally:
        by_config: dict[str, list[Run]] = {}
        for run in children:
            # A grid sweep counts each config once; an optimiser's trials are each their own.
            key = run.data.tags.get(names.CONFIG_HASH_TAG) if self.n_runs is not None else None
            by_config.setdefault(key or run.info.run_id, []).append(run)
        tally = Tally(runs=[])
        rank = {"FINISHED": 2, "FAILED": 1, "KILLED": 0}

        def status(run: Run) -> str:
            return "KILLED" if run.info.run_id in cut_short else run.info.status

        for attempts in by_config.values():
            attempts.sort(key=lambda r: (rank.get(status(r), 0), r.info.start_time))
            latest = attempts[-1]
            tally.runs.append(latest)
            for earlier in attempts[:-1]:
                tally.superseded += 1
                if earlier.data.tags.get(names.SUPERSEDED_BY_TAG) != latest.info.run_id:
                    self.tracker.client.set_tag(
                        earlier.info.run_id, names.SUPERSEDED_BY_TAG, latest.info.run_id
                    )
            if status(latest) == "FINISHED":
                tally.outcomes[latest.data.tags.get(names.OUTCOME_TAG, "unknown")] += 1
            elif status(latest) == "KILLED":
                tally.killed += 1
            else:
                tally.failed += 1
        tally.best = min(
            (r for r in tally.runs if status(r) == "FINISHED"),
            key=lambda r: _objective(r, objective),
            default=None,
        )
        if tally.best is not None:
            tally.best_value = _objective(tally.best, objective)
        return tally

    def _summary_tags(self, tally: Tally, objective: str) -> dict[str, str]:
        command = record.command_line()
        n_runs = self.n_runs if self.n_runs is not None else len(tally.runs)
        tags = {
            names.NOTE_TAG: describe_sweep(command, self.grid, n_runs, tally),
            names.COMMAND_TAG: command,
            names.N_RUNS_TAG: str(n_runs),
            names.FAILED_RUNS_TAG: str(tally.failed),
            names.KILLED_RUNS_TAG: str(tally.killed),
            names.REUSED_RUNS_TAG: str(len(self.done)),
            **{f"{names.RUNS_TAG_PREFIX}{o}": str(tally.outcomes.get(o, 0)) for o in OUTCOMES},
        }
        best = tally.best
        if best is not None:
            tags[names.BEST_RUN_TAG] = best.info.run_id
            tags[f"{names.BEST_PARAM_TAG_PREFIX}{objective}"] = f"{tally.best_value:.6g}"
            for key, value in swept_values(best, self.grid).items():
                tags[f"{names.BEST_PARAM_TAG_PREFIX}{key}"] = value
        return tags

    def close_interrupted(self) -> None:
        """After a stop was asked for (Ctrl-C, SIGTERM): mark the runs in flight and the parent
        KILLED, and say so in one line (never more runs than there were)."""
        global _interruption_reported
        if self.closed:
            return
        why = stopping.requested() or "SIGINT"
        _interruption_reported = True
        try:
            tally = self.close(interrupted=True)
        except Exception as error:
            log.error(
                "Sweep interrupted (%s); its end could not be recorded (%s). Run the same "
                "command again to resume.", why, first_line(error),
            )  # fmt: skip
            return
        log.error(
            "Sweep interrupted (%s): %s Parent run %s is KILLED. Run the same command again to "
            "resume.", why, self._what_was_kept(tally), self.parent_run_id,
        )  # fmt: skip

    def _what_was_kept(self, tally: Tally) -> str:
        in_flight = (
            f"{tally.killed_in_flight} run(s) in flight marked KILLED"
            if tally.killed_in_flight
            else "no run in flight"
        )
        return f"{in_flight}; {tally.finished} finished."


# Whether an interrupted sweep of this process has said so (the command then says no more).
_interruption_reported = False


def interruption_reported() -> bool:
    return _interruption_reported


def close_abandoned_sweeps(tracker: Tracker) -> list[str]:
    """Close KILLED the sweeps of this experiment left RUNNING by a process that is gone (a
    second Ctrl-C, SIGKILL, a crash), with their runs still RUNNING: a sweep's process holds
    its folder (`claim_folder`) for as long as it lives, so a folder no one holds has no sweep
    running in it. Sweeps whose folder is not on this machine are left alone. Returns the
    parent runs closed."""
    abandoned = tracker.search(
        f"tags.`{names.KIND_TAG}` = '{names.SWEEP_KIND}' and attributes.status = 'RUNNING'"
    )
    closed = []
    for parent in abandoned:
        folder = Path(parent.data.tags.get(names.SWEEP_DIR_TAG, ""))
        if not (folder / names.SWEEP_LOCK).is_file():
            continue
        try:
            claim = claim_folder(folder)
        except (FolderBusy, OSError):
            continue  # its sweep is still running (or the folder cannot be held)
        try:
            for run in tracker.children(parent.info.run_id, "RUNNING"):
                tracker.end_run(run.info.run_id, "KILLED")
            tracker.client.set_tag(
                parent.info.run_id, names.NOTE_TAG, "Abandoned: its process stopped without "
                "closing it; the runs it left RUNNING are marked KILLED.",
            )  # fmt: skip
            tracker.end_run(parent.info.run_id, "KILLED")
            closed.append(parent.info.run_id)
        finally:
            os.close(claim)
    if closed:
        log.info("Closed %d abandoned sweep(s) KILLED: %s", len(closed), ", ".join(closed))
    return closed


def close_open_sweeps() -> None:
    """Mark every sweep still open in this process interrupted (after Ctrl-C or SIGTERM)."""
    for sweep in list(_open_sweeps):
        sweep.close_interrupted()


def swept_values(run: Run, grid: Mapping[str, str]) -> dict[str, str]:
    """The run's value of each swept key. A config group (`method`) is recorded as its
    `name` field (`method.name`)."""
    params = run.data.params
    values = {}
    for key in grid:
        for param in (key, f"{key}.name"):
            if param in params:
                values[key] = params[param]
                break
    return values


# More runs than this on one chart are a tangle (and an address of kilobytes).
MAX_CURVES = 24


def best_runs(tally: Tally, objective: str, n: int = MAX_CURVES) -> list[Run]:
    """The `n` FINISHED runs with the lowest objective, best first."""
    finished = [run for run in tally.runs if run.info.status == "FINISHED"]
    return sorted(finished, key=lambda run: _objective(run, objective))[:n]


def _objective(run: Run, objective: str) -> float:
    metrics = run.data.metrics
    final = metrics.get("final_loss", math.inf)
    value = final - metrics.get("optimal_loss", 0.0) if objective == "excess_loss" else final
    return value if math.isfinite(value) else math.inf


def outcome_table(tally: Tally) -> str:
    """The sweep's outcomes per step size (rows) and method (columns), as plain text."""
    cells: dict[tuple[float, str], Counter] = {}
    for run in tally.runs:
        params = run.data.params
        try:
            key = (float(params.get("step_size", "nan")), params.get("method.name", "?"))
        except ValueError:
            continue
        status = run.info.status
        word = run.data.tags.get(names.OUTCOME_TAG, "?") if status == "FINISHED" else status
        cells.setdefault(key, Counter())[word.lower()] += 1
    if not cells:
        return "(no runs)"
    order = {m: i for i, m in enumerate(names.METHOD_ORDER)}
    methods = sorted({m for _, m in cells}, key=lambda m: (order.get(m, 99), m))
    steps = sorted({s for s, _ in cells})
    rank = {o: i for i, o in enumerate(OUTCOMES)}

    def cell(counter: Counter | None) -> str:
        if not counter:
            return "-"
        words = sorted(counter, key=lambda w: rank.get(w, 99))
        return ", ".join(f"{counter[w]} {w}" for w in words)

    header = ["step size", *(names.method_short(m) for m in methods)]
    rows = [[f"{s:g}", *(cell(cells.get((s, m))) for m in methods)] for s in steps]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


# --- table sweeps (tracking.record=table): one parent run, the grid's rows in its table -------


@dataclass
class TableTally:
    """A closed table sweep, counted from its table."""

    configs: int  # in the grid
    rows: int  # finished (in the table)
    outcomes: dict[str, int]
    reused: int  # configs an earlier attempt had finished
    table_path: Path | None = None  # the gathered table, in the sweep folder

    @property
    def finished(self) -> int:
        return self.rows


def describe_table_sweep(command: str, grid: Mapping[str, str], tally: TableTally) -> str:
    axes = "; ".join(f"{key}: {values}" for key, values in grid.items()) or "no swept keys"
    counts = ", ".join(f"{tally.outcomes.get(o, 0):,} {o}" for o in OUTCOMES)
    left = tally.configs - tally.rows
    unfinished = f"; {left:,} not run (interrupted)" if left else ""
    return f"{tally.configs:,} configs: {counts}{unfinished}. `{command}` over {axes}."


class TableSweep(Sweep):
    """A table sweep's parent run: no child runs; its grid (gdexp.grid.TableGrid) trained in
    chunks, each kept as a part in the sweep folder when done (gdexp.table), gathered into the
    parent's table when the sweep closes, interrupted or not. An earlier attempt at the same
    grid by the same code is resumed: its finished chunks are kept."""

    def __init__(self, *args, chunks: Sequence[tuple[int, int]], describe: Mapping[str, str],
                 **kwargs) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.chunks = list(chunks)
        self.axes = dict(describe)
        self.reused_chunks: set[tuple[int, int]] = set()

    @classmethod
    def open_table(
        cls,
        tracker: Tracker,
        folder: Path,
        *,
        grid_identity: str,
        describe: Mapping[str, str],
        chunks: Sequence[tuple[int, int]],
        resume: bool = True,
        retry_seconds: float = 60.0,
    ) -> TableSweep:
        claim = claim_folder(folder)
        try:
            return cls._open_table(tracker, folder, claim, grid_identity, describe, chunks,
                                   resume, retry_seconds)  # fmt: skip
        except BaseException:
            os.close(claim)
            raise

    @classmethod
    def _open_table(
        cls,
        tracker: Tracker,
        folder: Path,
        claim: int,
        grid_identity: str,
        describe: Mapping[str, str],
        chunks: Sequence[tuple[int, int]],
        resume: bool,
        retry_seconds: float,
    ) -> TableSweep:
        from gdexp import table

        close_abandoned_sweeps(tracker)
        code = record.code_fingerprint()
        identity = f"table-{grid_identity}"
        n_configs = sum(stop - start for start, stop in chunks)
        parent = None
        latest = earlier_attempt(tracker, identity, code) if resume else None
        if latest is not None:  # the earlier attempt's parent, reopened with its kept chunks
            parent = latest.info.run_id
            old_folder = Path(latest.data.tags.get(names.SWEEP_DIR_TAG, ""))
            if old_folder != folder.resolve() and old_folder.is_dir():
                table.adopt_chunks(folder, old_folder)
            tracker.client.set_tag(parent, names.SWEEP_DIR_TAG, str(folder.resolve()))
            tracker.client.update_run(parent, status="RUNNING")
        if parent is None:
            tags = {
                **record.provenance_tags(),
                names.KIND_TAG: names.SWEEP_KIND,
                names.RECORD_TAG: names.RECORD_TABLE,
                names.SWEEPER_TAG: "gdexp",
                names.SWEEP_DIR_TAG: str(folder.resolve()),
                names.SWEEP_HASH_TAG: identity,
                names.N_RUNS_TAG: "0",
            }
            parent = tracker.start_run(f"sweep {folder.name} ({n_configs:,} configs)", tags=tags)
            tracker.log(parent, params={f"{names.AXIS_PARAM_PREFIX}{k}": v
                                        for k, v in describe.items()})  # fmt: skip
        sweep = cls(tracker, parent, folder, {}, 0, {}, retry_seconds, claim, chunks=chunks,
                    describe=describe)  # fmt: skip
        sweep.reused_chunks = set(sweep.done_chunks())
        sweep.manifest.write(folder)
        _open_sweeps.append(sweep)
        stopping.announce(folder)
        return sweep

    @property
    def n_configs(self) -> int:
        return sum(stop - start for start, stop in self.chunks)

    def done_chunks(self) -> list[tuple[int, int]]:
        """The chunks whose rows are kept in the sweep folder."""
        from gdexp import table

        return [c for c in self.chunks if table.chunk_part(self.folder, *c).is_file()]

    def _close(self, interrupted: bool, objective: str) -> TableTally:
        from gdexp import table

        path = self.folder / names.TABLE_ARTIFACT
        outcomes, rows = table.gather_chunks(self.folder, self.chunks, path)
        reused = sum(stop - start for start, stop in self.reused_chunks)
        tally = TableTally(self.n_configs, rows, outcomes, reused, path)
        command = record.command_line()
        from mlflow.entities import Metric

        counts = {o: outcomes.get(o, 0) for o in OUTCOMES}
        counts |= {"total": tally.configs, "finished": rows}
        now = record.now_ms()
        metrics = [
            Metric(f"{names.CONFIGS_METRIC_PREFIX}{key}", float(n), now, 0)
            for key, n in counts.items()
        ]
        tags = {
            names.NOTE_TAG: describe_table_sweep(command, self.axes, tally),
            names.COMMAND_TAG: command,
            names.REUSED_RUNS_TAG: str(reused),
        }
        self.tracker.log(self.parent_run_id, metrics=metrics, tags=tags)
        self.tracker.client.log_artifact(self.parent_run_id, str(path))
        if interrupted or rows < tally.configs:
            self.end("KILLED" if interrupted else "FAILED")
        return tally  # type: ignore[return-value]

    def end(self, status: str = "FINISHED") -> None:
        """Close the parent (after anything else the sweep logs to it)."""
        if not self.closed:
            self.tracker.end_run(self.parent_run_id, status)
            self.closed = True
        if self in _open_sweeps:
            _open_sweeps.remove(self)

    def _what_was_kept(self, tally: TableTally) -> str:  # type: ignore[override]
        return (
            f"{tally.rows:,} of {tally.configs:,} configs finished, kept in the parent's partial "
            "table (the chunk in flight is dropped)."
        )
