"""The work of `hydra/launcher=slurm`: hydra-submitit-launcher's per-job submission, with
gdexp's waiting (`_submitit.collect`). Each task runs hydra-submitit-launcher's own job code.

hydra-submitit-launcher's launch() submits and then collects in one method, and stops waiting
at the first task without a result (the rest of the array runs on behind a closed sweep). Its
submission is repeated here: the executor is built from the launcher's settings as it builds
it (tests/test_slurm.py runs this against a live cluster, so a change there fails them).
"""

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

from hydra_plugins.gdexp_plugins._submitit import array_id, collect

log = logging.getLogger(__name__)


def launch(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> Sequence[JobReturn]:
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    config = launcher.config
    # Hydra-submitit's launcher is what each task runs (its __call__ composes and runs the job).
    submitter = SlurmLauncher(**launcher.params)
    submitter.setup(
        hydra_context=launcher.hydra_context,
        task_function=launcher.task_function,
        config=config,
    )
    params = dict(submitter.params)
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init["slurm_max_num_timeout"] = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(cluster="slurm", **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{key if key in shared else f"slurm_{key}": value for key, value in params.items()}
    )
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    arguments = [
        (list(overrides), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{i}",
         Singleton.get_state())
        for i, overrides in enumerate(job_overrides)
    ]  # fmt: skip
    jobs = executor.map_array(submitter, *zip(*arguments, strict=True))
    log.info("Submitted %d runs as array job %s", len(jobs), array_id(jobs))
    for index, overrides in enumerate(job_overrides):
        log.info("\t#%d : %s", initial_job_idx + index, " ".join(filter_overrides(overrides)))

    returns: list[Any] = [None] * len(jobs)

    def handed_back(index: int, result: Any) -> None:
        returns[index] = result  # a task runs one job: its JobReturn

    def failed(index: int, error: Exception) -> None:
        # What Hydra's own launchers give a job that never reported: no config or hydra node
        # came back from the task; where it was launched from did.
        ret = JobReturn(
            overrides=list(job_overrides[index]),
            task_name=config.hydra.job.name,
            working_dir=os.getcwd(),
        )
        ret.status, ret.return_value = JobStatus.FAILED, error
        returns[index] = ret

    collect(jobs, handed_back, failed)
    return returns
