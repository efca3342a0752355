"""Hydra's own plugin test suites, run against gdexp's sweeper and batched launcher.

The suites drive Hydra's test apps, which are not gdexp: gdexp's plugins run gdexp's configs only,
by design, and must say so in one line. A suite test either passes, or is reported as xfail after
`refused_by_design` (tests/conftest.py) has checked that it failed with exactly that refusal.
The same suites' assertions on gdexp's own app, for each of gdexp's launchers, are in
tests/test_hydra_contract.py.
"""

from __future__ import annotations

import pytest
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, LauncherTestSuite

pytestmark = pytest.mark.refused_by_design


@pytest.mark.parametrize(("launcher_name", "overrides"), [("basic", ["hydra/sweeper=gdexp"])])
class TestGdexpSweeperOnTheBasicLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(("launcher_name", "overrides"), [("basic", ["hydra/sweeper=gdexp"])])
class TestGdexpSweeperBatches(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize(("launcher_name", "overrides"), [("batched", [])])
class TestBatchedLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(("launcher_name", "overrides"), [("batched", [])])
class TestBatchedLauncherBatches(BatchedSweeperTestSuite):
    pass
