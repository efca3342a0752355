"""The work of `hydra/launcher=batched`: compose the jobs, train them as one tensor computation,
log each as its own run under the sweep's parent (read from the sweep's manifest).

Its JobReturns carry what Hydra's own launchers put in them (`hydra.core.utils.run_job`): the
job's overrides, config, `hydra_cfg` (its `hydra` node: number, overrides, output folder) and
`working_dir`. `hydra_cfg` is made when first read: made for every job up front it costs 7-9 ms
a job, up to a fifth of a dense sweep's time, and gdexp's sweeper never reads it. Per-job
folders with `.hydra/` (config.yaml, hydra.yaml, overrides.yaml, as `run_job` writes them) are
written with `hydra.launcher.job_folders=true` only: 13-15 ms of CPU a job, a third more for a
dense sweep (benchmarks/job_folders.py)."""

import copy
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobRuntime, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from gdexp.config import ConfigError, config_problems
from hydra_plugins.gdexp_plugins._common import require_gdexp_app
from hydra_plugins.gdexp_plugins._job_configs import JobConfigs
from hydra_plugins.gdexp_plugins._progress import Progress

log = logging.getLogger(__name__)


def launch(
    launcher: Any,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    configs: Sequence[DictConfig] | None = None,
) -> Sequence[JobReturn]:
    """`configs`: the jobs' configs, when gdexp's sweeper has composed them already."""
    config = launcher.config
    require_gdexp_app(config, "hydra/launcher=batched")
    if configs is None:
        configs = compose_jobs(launcher, job_overrides)

    from gdexp.run import objective_value, run_grid  # torch: only once this launcher runs

    returns = job_returns(launcher, job_overrides, configs, initial_job_idx)
    manifest = job_manifest(config, configs[0]) if configs else None
    destination = manifest.destination() if manifest is not None else None
    log.info("Training %d runs batched in one process", len(configs))
    results = run_grid(
        configs, job_overrides, destination, Progress(len(configs), launcher.progress_seconds)
    )
    results = [r if isinstance(r, Exception) else objective_value(r, c.objective)
               for r, c in zip(results, configs, strict=True)]  # fmt: skip
    return finished(returns, results)


def compose_jobs(launcher: Any, job_overrides: Sequence[Sequence[str]]) -> list[DictConfig]:
    """Each job's config, composed once per set of group choices and validated."""
    composer = JobConfigs(launcher.hydra_context.config_loader, launcher.config)
    configs = []
    for overrides in job_overrides:
        cfg = composer.compose(overrides)
        problems = config_problems(cfg)
        if problems:
            raise ConfigError(f"Invalid config ({' '.join(overrides)}): {'; '.join(problems)}")
        configs.append(cfg)
    return configs


def job_manifest(config: DictConfig, first: DictConfig) -> Any:
    """Where the jobs log: the sweep's manifest; without one (tracking on, no sweep opened),
    top-level runs in the configured store; None without tracking."""
    if not first.tracking.enabled:
        return None
    from gdexp.store import SweepManifest, resolve_tracking_uri

    launch_dir = Path(config.hydra.runtime.cwd)
    manifest = SweepManifest.read(launch_dir / config.hydra.sweep.dir)
    if manifest is not None:
        return manifest
    tracking = first.tracking
    return SweepManifest(
        resolve_tracking_uri(tracking.uri, launch_dir),
        tracking.experiment,
        None,
        tracking.retry_seconds,
    )


class JobHydraConfigs(JobConfigs):
    """Each job's `hydra_cfg` as Hydra's launchers return it: the `hydra` node Hydra composes for
    the job (`load_sweep_config`, here once per set of config-group choices), with the job's own
    overrides, `override_dirname`, number and output folder, as `load_configuration` and
    `run_job` set them. tests/test_hydra_contract.py compares it with the basic launcher's."""

    def _base(self, group_choices: tuple[str, ...]) -> DictConfig:
        if group_choices not in self._bases:
            # The same parsing and split of overrides as the task configs; the hydra node kept.
            composed = self._loader.load_sweep_config(self._master, list(group_choices))
            self._bases[group_choices] = OmegaConf.masked_copy(composed, "hydra")
        return self._bases[group_choices]

    def make(self, overrides: Sequence[str], num: int) -> DictConfig:
        parsed = [self._parse(line) for line in overrides]
        groups = tuple(o.input_line for o in parsed if self._is_group_choice(o))
        cfg = copy.deepcopy(self._base(groups))
        # The sweep's resolved values (${now:...} in hydra.sweep.dir), as load_sweep_config.
        OmegaConf.copy_cache(from_config=self._master, to_config=cfg)
        hydra = cfg.hydra
        dirname = hydra.job.config.override_dirname
        with read_write(hydra), open_dict(hydra):
            hydra.overrides.task = list(overrides)
            hydra.job.override_dirname = overrides_dirname(
                parsed, list(dirname.exclude_keys), dirname.item_sep, dirname.kv_sep
            )
            hydra.job.id = num
            hydra.job.num = num
        # run_job: the output folder is hydra.sweep.dir/hydra.sweep.subdir, resolved in the
        # job's config, made absolute; with the job's config as HydraConfig where they read it
        # (${hydra:...}): that costs a copy of the node, about a third of this function's time.
        sweep = OmegaConf.to_container(hydra.sweep)  # unresolved
        previous = HydraConfig.instance().cfg
        try:
            if any("${hydra:" in str(value) for value in sweep.values()):
                HydraConfig.instance().set_config(cfg)
            folder = os.path.join(
                str(OmegaConf.select(cfg, "hydra.sweep.dir")),
                str(OmegaConf.select(cfg, "hydra.sweep.subdir")),
            )
        finally:
            HydraConfig.instance().cfg = previous
        hydra.runtime.output_dir = os.path.abspath(folder)
        OmegaConf.set_readonly(hydra, True)  # as run_job's (HydraConfig.set_config)
        return cfg


def overrides_dirname(
    overrides: Sequence[Override], exclude_keys: list[str], item_sep: str, kv_sep: str
) -> str:
    """hydra.job.override_dirname, as Hydra's config loader makes it."""
    lines = sorted(o.input_line for o in overrides if o.key_or_group not in exclude_keys)
    return re.sub(pattern="[=]", repl=kv_sep, string=item_sep.join(lines))


class BatchedJobReturn(JobReturn):
    """A JobReturn whose `hydra_cfg` is made on first read (or given)."""

    def __init__(self, make_hydra_cfg: Callable[[], DictConfig] | None, **fields: Any) -> None:
        self._make_hydra_cfg = make_hydra_cfg
        super().__init__(**fields)

    @property  # type: ignore[override]
    def hydra_cfg(self) -> DictConfig | None:
        if self._hydra_cfg is None and self._make_hydra_cfg is not None:
            self._hydra_cfg = self._make_hydra_cfg()
            self._make_hydra_cfg = None
        return self._hydra_cfg

    @hydra_cfg.setter
    def hydra_cfg(self, value: DictConfig | None) -> None:
        self._hydra_cfg = value

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_hydra_cfg"], state["_make_hydra_cfg"] = self.hydra_cfg, None
        return state


def job_returns(
    launcher: Any,
    job_overrides: Sequence[Sequence[str]],
    configs: Sequence[DictConfig],
    initial_job_idx: int,
) -> list[BatchedJobReturn]:
    """The jobs' JobReturns before they run: overrides, config, hydra_cfg, working_dir. With
    `hydra.launcher.job_folders=true` each job's folder and `.hydra/` are written now, as
    Hydra's `run_job` writes them before its job runs."""
    config = launcher.config
    hydra_configs = JobHydraConfigs(launcher.hydra_context.config_loader, config)
    write_folders = bool(getattr(launcher, "job_folders", False))
    chdir = bool(config.hydra.job.chdir)
    launch_cwd = os.getcwd()
    # run_job's task name: Hydra's, from the calling module (`__main__` for `python -m gdexp`),
    # not hydra.job.name.
    task_name = JobRuntime.instance().get("name")
    returns = []
    for index, (overrides, cfg) in enumerate(zip(job_overrides, configs, strict=True)):
        num = initial_job_idx + index

        def make(overrides: Sequence[str] = overrides, num: int = num) -> DictConfig:
            return hydra_configs.make(overrides, num)

        ret = BatchedJobReturn(
            make,
            overrides=list(overrides),
            cfg=cfg,
            working_dir=launch_cwd,
            task_name=task_name,
        )
        if write_folders:
            output_dir = write_job_folder(cfg, ret.hydra_cfg)
            if chdir:  # run_job's working_dir: the job's folder when Hydra changes into it
                ret.working_dir = output_dir
        returns.append(ret)
    return returns


def write_job_folder(cfg: DictConfig, hydra_cfg: DictConfig) -> str:
    """The job's output folder and, unless hydra.output_subdir is null, the three files
    Hydra's `run_job` writes in it, with the same text (OmegaConf.to_yaml, unresolved)."""
    hydra = hydra_cfg.hydra
    output_dir = str(hydra.runtime.output_dir)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    if hydra.output_subdir is not None:
        folder = Path(output_dir) / str(hydra.output_subdir)
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, folder / "config.yaml")
        OmegaConf.save(hydra_cfg, folder / "hydra.yaml")
        OmegaConf.save(hydra.overrides.task, folder / "overrides.yaml")
    return output_dir


def finished(returns: Sequence[JobReturn], results: Sequence[Any]) -> list[JobReturn]:
    """The JobReturns with each run's objective, or the exception that failed it."""
    for ret, result in zip(returns, results, strict=True):
        ret.status = JobStatus.FAILED if isinstance(result, Exception) else JobStatus.COMPLETED
        ret.return_value = result
    return list(returns)
