"""The MLflow UI as gdexp's front end, checked in a real browser.

A real sweep (a Hydra subprocess) logs to a temp SQLite store; a real `mlflow server` serves that
store on a free port; headless Chromium (Debian's `chromium` and `chromium-driver`, driven by
Selenium, nothing downloaded) opens the address gdexp printed and looks for what a user should
see: the runs table of the Model training view (not the GenAI overview), the sweep's parent run,
its children once expanded, their descriptions and outcomes, and a working `tags.outcome` search.

Set GDEXP_UPDATE_DOCS=1 to also write the screenshot of the runs page to docs/ui-runs.png (it is
always written to the test's temp folder).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from servers import stop_process_group

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = REPO / "docs" / "ui-runs.png"
SERVER_START_TIMEOUT = 60
PAGE_TIMEOUT = 45
WIDTH, HEIGHT = 1600, 1000

SWEEP_ARGS = ("-m", "method=bgd,sgd", "step_size=0.1", "seed=0,1", "tracking.log_step_loss=false")
# With step size 0.1 batch GD converges and per-point SGD blows up, for both seeds.
CONVERGED = {"bgd lr=0.1 seed=0", "bgd lr=0.1 seed=1"}
DIVERGED = {"sgd lr=0.1 seed=0", "sgd lr=0.1 seed=1"}
DIVERGED_FILTER = "tags.outcome = 'diverged'"

# The run names in the runs table: each row's name cell links to the run's page.
RUN_LINKS = ".ag-root a[href*='/runs/']"


@dataclass
class Sweep:
    address: str  # the MLflow UI address gdexp printed
    experiment_id: str
    parent_id: str
    parent_name: str
    children: dict[str, str]  # run name -> run id
    notes: dict[str, str]  # run name -> its description (mlflow.note.content)


@dataclass
class Server:
    base: str  # http://127.0.0.1:<port>
    port: int


def server_env() -> dict[str, str]:
    """This environment without a developer's tracking settings, and no background jobs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GDEXP_"))}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def printed_ui_address(output: str) -> str:
    found = re.findall(r"MLflow UI.*?: (http\S+)", output)
    assert found, f"gdexp printed no 'MLflow UI: <address>' line:\n{output}"
    return found[-1]


def on_server(address: str, server: Server) -> str:
    """`address` with only its host:port replaced by the test server's."""
    return urlunsplit(urlsplit(address)._replace(netloc=urlsplit(server.base).netloc))


@pytest.fixture
def sweep(store, gdexp_cli) -> Sweep:
    result = gdexp_cli(*SWEEP_ARGS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    address = printed_ui_address(output)

    experiment = store.client.get_experiment_by_name("gdexp")
    assert experiment is not None, output
    runs = store.runs()
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    children = {r.info.run_name: r.info.run_id for r in runs if r is not parent}
    # The scenario the browser checks rely on, as logged in the store.
    assert set(children) == CONVERGED | DIVERGED
    diverged = {r.info.run_name for r in runs if r.data.tags.get("outcome") == "diverged"}
    assert diverged == DIVERGED
    notes = {r.info.run_name: r.data.tags.get("mlflow.note.content", "") for r in runs}
    assert all(notes.values()), notes
    return Sweep(
        address, experiment.experiment_id, parent.info.run_id, parent.info.run_name, children, notes
    )


@pytest.fixture
def mlflow_server(store, sweep: Sweep) -> Iterator[Server]:
    """`mlflow server` over the sweep's store on a free port, stopped with its workers after."""
    port = free_port()
    log_path = store.folder / "mlflow-server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "server"),
                *("--backend-store-uri", store.uri),
                *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            ],
            cwd=store.folder,
            env=server_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the uvicorn workers go with it
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield Server(base, port)
    finally:
        stop_process_group(process)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    # No skip: a missing browser is a broken test environment, CI installs it.
    for program in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(program), f"{program} missing: apt-get install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    # An explicit driver path: Selenium Manager then has nothing to look up or download.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        # The page itself WIDTH x HEIGHT, whatever room the headless window keeps for itself.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        )
        yield driver
    finally:
        driver.quit()


def wait(driver: webdriver.Chrome, timeout: float = PAGE_TIMEOUT) -> WebDriverWait:
    return WebDriverWait(
        driver, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
    )


def run_names(driver: webdriver.Chrome) -> set[str]:
    """The names of the runs in the table (rows the grid has rendered)."""
    return set(
        driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]))"
            ".map(a => a.innerText.trim()).filter(t => t)",
            RUN_LINKS,
        )
    )


def wait_for_runs(driver: webdriver.Chrome, expected: set[str]) -> None:
    """Waits until the table shows exactly the runs named `expected`."""
    seen: list[set[str]] = []

    def shown(d: webdriver.Chrome) -> bool:
        seen.append(run_names(d))
        return seen[-1] == expected

    try:
        wait(driver).until(shown)
    except TimeoutException:
        raise AssertionError(
            f"runs table shows {sorted(seen[-1]) if seen else '?'}, expected {sorted(expected)}"
        ) from None


def cell(row: dict[str, str], column: str) -> str:
    """The text of the column whose id names `column` (ids look like tags.`outcome`)."""
    found = [text for key, text in row.items() if f"`{column}`" in key]
    return found[0] if len(found) == 1 else ""


def page_text(driver: webdriver.Chrome) -> str:
    return driver.execute_script("return document.body.innerText")


def choose_columns(driver: webdriver.Chrome, shown: dict[str, bool]) -> None:
    """Ticks or unticks columns (by title) in the runs table's column selector."""
    driver.find_element(By.CSS_SELECTOR, "[data-testid='column-selection-dropdown']").click()
    search = wait(driver).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "input[placeholder='Search columns']")
    )
    for title, show in shown.items():
        search.send_keys(Keys.CONTROL, "a")
        search.send_keys(Keys.BACKSPACE, title)
        # While searching, the matching part of a title is highlighted: match the node's text.
        node = (
            "//*[@data-testid='column-selector-tree']"
            f"//div[contains(@class, 'treenode')][normalize-space(.)='{title}']"
        )

        def ticked(d: webdriver.Chrome, node: str = node) -> bool:
            return "checkbox-checked" in d.find_element(By.XPATH, node).get_attribute("class")

        wait(driver).until(lambda d, node=node: d.find_element(By.XPATH, node))
        if ticked(driver) != show:
            driver.find_element(By.XPATH, f"{node}//span[contains(@class, 'checkbox')]").click()
            wait(driver).until(lambda d, show=show, ticked=ticked: ticked(d) == show)
    search.send_keys(Keys.ESCAPE)
    wait(driver).until_not(
        lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='column-selector-tree']")
    )


def table(driver: webdriver.Chrome) -> dict[str, dict[str, str]]:
    """The rendered rows of the runs table: run name -> {column id: cell text}."""
    return driver.execute_script(
        """
        const rows = {}, names = {};
        for (const cell of document.querySelectorAll('.ag-root [row-index] [col-id]')) {
            const index = cell.closest('[row-index]').getAttribute('row-index');
            (rows[index] = rows[index] || {})[cell.getAttribute('col-id')] = cell.innerText.trim();
            const link = cell.querySelector("a[href*='/runs/']");
            if (link) names[index] = link.innerText.trim();
        }
        const named = {};
        for (const [index, name] of Object.entries(names)) named[name] = rows[index];
        return named;
        """
    )


def check_runs_page(driver: webdriver.Chrome, sweep: Sweep, server: Server, tmp_path: Path) -> None:
    address = on_server(sweep.address, server)
    driver.get(address)

    # The Model training view's runs table, with the sweep's parent run and its children folded.
    parent_link = f"{RUN_LINKS}[href$='/runs/{sweep.parent_id}']"
    wait(driver).until(
        lambda d: d.find_element(By.CSS_SELECTOR, parent_link).text.strip(),
        message=f"no link to the sweep's parent run {sweep.parent_name!r} in a runs table",
    )
    view = urlsplit(driver.current_url).fragment
    assert view.startswith(f"/experiments/{sweep.experiment_id}/runs?"), driver.current_url
    assert "workflowType=machine_learning" in view, driver.current_url
    assert driver.title.startswith("Runs"), driver.title  # not the GenAI "Overview"
    assert driver.find_elements(By.CSS_SELECTOR, "[data-testid='sort-header-Run Name']")
    wait_for_runs(driver, {sweep.parent_name})
    assert sweep.parent_name.startswith("sweep ") and sweep.parent_name.endswith("(4 runs)")

    # Unfolded: the four jobs under it.
    driver.find_element(
        By.XPATH,
        f"//a[contains(@href, '/runs/{sweep.parent_id}')]/ancestor::div[@role='gridcell']//button",
    ).click()
    wait_for_runs(driver, {sweep.parent_name} | CONVERGED | DIVERGED)
    for name, run_id in sweep.children.items():
        link = driver.find_element(By.CSS_SELECTOR, f"{RUN_LINKS}[href$='/runs/{run_id}']")
        assert link.text.strip() == name

    # The assistant side panel hides half the table.
    for close in driver.find_elements(
        By.CSS_SELECTOR, "button[data-component-id='mlflow.assistant.chat_panel.close']"
    ):
        close.click()

    # What each run is and how it ended, as columns: its description, outcome tag and final loss.
    choose_columns(
        driver,
        {"Dataset": False, "Source": False, "Models": False}
        | {"Description": True, "outcome": True, "final_loss": True},
    )
    columns = ("Description", "outcome", "final_loss")
    wait(driver).until(
        lambda d: (
            all(cell(row, c) for row in table(d).values() for c in columns) and len(table(d)) == 5
        )
    )
    rows = table(driver)
    for name, row in rows.items():
        # The table cuts descriptions to their first 50 characters or so, then "...".
        shown = cell(row, "Description").removesuffix("...")
        assert len(shown) >= 40 and sweep.notes[name].startswith(shown), (name, row)
    for name in CONVERGED | DIVERGED:
        outcome = "diverged" if name in DIVERGED else "converged"
        assert cell(rows[name], "outcome") == outcome, (name, rows[name])
        assert cell(rows[name], "final_loss") not in {"", "-"}, (name, rows[name])
    assert cell(rows[sweep.parent_name], "outcome") == "-", rows[sweep.parent_name]

    driver.execute_script("document.activeElement.blur()")  # no focus ring in the picture
    driver.save_screenshot(str(tmp_path / "ui-runs.png"))
    if os.environ.get("GDEXP_UPDATE_DOCS"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "ui-runs.png", SCREENSHOT)

    # Searching the outcome tag keeps the diverged SGD runs (under their parent), drops BGD's.
    search = driver.find_element(By.CSS_SELECTOR, "[data-testid='search-box']")
    search.click()
    search.send_keys(DIVERGED_FILTER, Keys.ENTER)
    wait(driver).until(
        lambda d: "searchFilter=tags.outcome" in d.current_url, message="search not applied"
    )
    wait_for_runs(driver, {sweep.parent_name} | DIVERGED)


@pytest.mark.slow
def test_printed_address_opens_the_sweep_in_the_runs_table(
    sweep: Sweep, mlflow_server: Server, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    # gdexp's address, on the port the test server listens on; the rest exactly as printed.
    printed = urlsplit(sweep.address)
    assert printed.scheme == "http" and printed.hostname in {"127.0.0.1", "localhost"}
    assert printed.fragment.startswith(f"/experiments/{sweep.experiment_id}/"), sweep.address
    try:
        check_runs_page(browser, sweep, mlflow_server, tmp_path)
    except (AssertionError, WebDriverException) as error:
        browser.save_screenshot(str(tmp_path / "failure.png"))
        raise AssertionError(
            f"{error}\nat {browser.current_url}; screenshot {tmp_path / 'failure.png'}; page:\n"
            f"{page_text(browser)[:3000]}"
        ) from error
