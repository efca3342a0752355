"""gdexp's Hydra plugins: the tracked grid sweeper (`hydra/sweeper=gdexp`), the batched launcher
(`hydra/launcher=batched`) and the callback that makes any sweeper's multirun a tracked sweep.

Hydra imports every module here for every app in the environment, so these modules are thin:
they register configs and delegate to `_`-named modules (skipped by Hydra's scan) on first use.
Nothing here imports torch, MLflow, pandas or matplotlib at import time.
"""
