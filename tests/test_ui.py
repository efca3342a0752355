"""The MLflow UI as gdexp's front end, checked in a real browser.

A real sweep (a Hydra subprocess) logs to a temp SQLite store; a real `mlflow server` serves that
store on a free port; headless Chromium (Debian's `chromium` and `chromium-driver`, driven by
Selenium, nothing downloaded) opens the two addresses the sweep printed at its end and looks for
what a user should see:

- the runs table: the Model training view (not the GenAI overview), the sweep's parent run, its
  children once expanded, their descriptions and outcomes, and a working `tags.outcome` search;
- the loss curves: MLflow's metric page with the `loss` chart of the sweep's runs against the
  step (the epoch) on a log scale, one point per epoch;
- a run's own page: its `loss` chart spread over the steps, and over the time axis too (each
  history point carries its own timestamp, so the curve no longer collapses onto one instant).

One sweep and one server serve the module's tests; each test gets a fresh browser.

Set GDEXP_UPDATE_DOCS=1 to also write the screenshots of the runs table and of the loss curves
to docs/ui-runs.png and docs/ui-loss-chart.png (they are always written to the test's temp
folder).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from conftest import Store, clean_env
from selenium import webdriver
from selenium.common.exceptions import (
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from servers import MlflowServer, running_mlflow_server

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
RUNS_SCREENSHOT = REPO / "docs" / "ui-runs.png"
CHART_SCREENSHOT = REPO / "docs" / "ui-loss-chart.png"
PAGE_TIMEOUT = 45
WIDTH, HEIGHT = 1600, 1000

EPOCHS = 20
SWEEP_ARGS = (
    *("-m", "method=bgd,sgd", "step_size=0.1", "seed=0,1", f"epochs={EPOCHS}"),
    "tracking.log_step_loss=false",
)
# With step size 0.1 batch GD converges and per-point SGD blows up to a loss around 1e14 (where it
# oscillates, or keeps growing), for both seeds.
BGD = {"bgd lr=0.1 seed=0", "bgd lr=0.1 seed=1"}
SGD = {"sgd lr=0.1 seed=0", "sgd lr=0.1 seed=1"}
OUTCOMES = ("converged", "converging", "stalled", "oscillating", "diverged")  # best to worst
BLOWN_UP = {"oscillating", "diverged"}
NOT_CONVERGED_FILTER = "tags.outcome != 'converged'"
METRIC = "loss"
# The run whose own page is checked.
ONE_RUN = "bgd lr=0.1 seed=0"

# The run names in the runs table: each row's name cell links to the run's page.
RUN_LINKS = ".ag-root a[href*='/runs/']"
RUN_NAME_HEADER = ".ag-header-cell[col-id='attributes.`Run Name`']"
# A chart on a run's page; its first line of text is its title (the metric).
CHART_CARD = "[data-testid='experiment-view-compare-runs-card']"
CHARTS_SETTINGS = "button[data-component-id='mlflow.charts.controls.global_chart_setup_dropdown']"
ASSISTANT_CLOSE = "button[data-component-id='mlflow.assistant.chat_panel.close']"

# What a plotly graph div draws: its traces and axes, read from plotly's own state.
PLOT_JS = """
const plot = arguments[0];
if (!plot || !plot.data || !plot._fullLayout || !plot._fullLayout.xaxis) return null;
const axis = a => ({type: a.type, title: (a.title && a.title.text) || ''});
return {
    traces: plot.data.map(t => ({
        name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || []),
    })),
    x: axis(plot._fullLayout.xaxis),
    y: axis(plot._fullLayout.yaxis),
    width: plot.getBoundingClientRect().width,
};
"""


@dataclass
class Point:
    step: int
    timestamp: int  # ms
    value: float


@dataclass
class Sweep:
    address: str  # the runs table's address gdexp printed
    loss_curves: str  # the loss curves' address gdexp printed
    experiment_id: str
    parent_id: str
    parent_name: str
    children: dict[str, str]  # run name -> run id
    notes: dict[str, str]  # run name -> its description (mlflow.note.content)
    outcomes: dict[str, str]  # run name -> its outcome tag
    history: dict[str, list[Point]]  # run name -> its `loss` history, by step


def printed_addresses(stdout: str) -> tuple[str, str, list[str]]:
    """What a sweep's output ends with: the runs table's address, then the loss curves' address;
    and before them the closing table of outcomes (its lines after "Sweep done:")."""
    lines = [line.rstrip() for line in stdout.splitlines() if line.strip()]
    ends = f"the sweep's output does not end as it should:\n{stdout[-3000:]}"
    assert len(lines) >= 3, ends
    runs = re.fullmatch(r"MLflow UI.*?: (http\S+)", lines[-2])
    curves = re.fullmatch(r"Loss curves of its runs: (http\S+)", lines[-1])
    done = [i for i, line in enumerate(lines) if line.endswith("Sweep done:")]
    assert runs and curves and done, ends
    return runs[1], curves[1], lines[done[-1] + 1 : -2]


def outcome_cell(outcomes: list[str]) -> str:
    """A cell of the closing table: '2 converged', '1 oscillating, 1 diverged'..."""
    counts = Counter(outcomes)
    return ", ".join(f"{counts[w]} {w}" for w in sorted(counts, key=OUTCOMES.index))


def on_server(address: str, server: MlflowServer) -> str:
    """`address` with only its host:port replaced by the test server's."""
    return urlunsplit(urlsplit(address)._replace(netloc=urlsplit(server.url).netloc))


@pytest.fixture(scope="module")
def ui_store(tmp_path_factory) -> Store:
    folder = tmp_path_factory.mktemp("ui-sweep")
    return Store(folder, f"sqlite:///{folder}/mlflow.db")


@pytest.fixture(scope="module")
def sweep(ui_store: Store) -> Sweep:
    """The sweep, run as a user runs it (`python -m gdexp -m ...` in a fresh folder), and what it
    logged, checked in the store: the scenario the browser checks rely on."""
    result = subprocess.run(
        [sys.executable, "-m", "gdexp", *SWEEP_ARGS],
        cwd=ui_store.folder,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    address, loss_curves, closing_table = printed_addresses(result.stdout)

    experiment = ui_store.client.get_experiment_by_name("gdexp")
    assert experiment is not None, output
    runs = ui_store.runs()
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    children = {r.info.run_name: r.info.run_id for r in runs if r is not parent}
    assert set(children) == BGD | SGD
    outcomes = {r.info.run_name: r.data.tags.get("outcome") for r in runs if r is not parent}
    assert all(outcomes[name] == "converged" for name in BGD), outcomes
    assert all(outcomes[name] in BLOWN_UP for name in SGD), outcomes
    notes = {r.info.run_name: r.data.tags.get("mlflow.note.content", "") for r in runs}
    assert all(notes.values()), notes

    # The closing table: one row per step size, one column per method, outcomes counted.
    table = [re.split(r"\s{2,}", line.strip()) for line in closing_table]
    assert table == [
        ["step size", "BGD", "SGD"],
        ["0.1", outcome_cell([outcomes[n] for n in BGD]), outcome_cell([outcomes[n] for n in SGD])],
    ], "\n".join(closing_table)

    # One loss point per epoch, stamped across the time training took: never an earlier time
    # for a later step, and all within the run's lifetime (a fast run's epochs share a ms).
    history = {}
    for name, run_id in children.items():
        logged = ui_store.client.get_metric_history(run_id, METRIC)
        points = sorted((Point(m.step, m.timestamp, m.value) for m in logged), key=lambda p: p.step)
        assert [p.step for p in points] == list(range(EPOCHS)), (name, points)
        stamps = [p.timestamp for p in points]
        assert all(a <= b for a, b in itertools.pairwise(stamps)), (name, stamps)
        info = ui_store.client.get_run(run_id).info
        assert info.start_time <= stamps[0] and stamps[-1] <= info.end_time, (name, stamps)
        history[name] = points
    return Sweep(
        address,
        loss_curves,
        experiment.experiment_id,
        parent.info.run_id,
        parent.info.run_name,
        children,
        notes,
        outcomes,
        history,
    )


@pytest.fixture(scope="module")
def mlflow_server(ui_store: Store, sweep: Sweep) -> Iterator[MlflowServer]:
    """`mlflow server` over the sweep's store on a free port, stopped with its workers after."""
    try:
        with running_mlflow_server(ui_store.uri, ui_store.folder / "server", workers=1) as server:
            yield server
    except RuntimeError as error:
        pytest.fail(str(error))


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


@contextlib.contextmanager
def explained(driver: webdriver.Chrome, tmp_path: Path) -> Iterator[None]:
    """A failure in the browser comes with the page's address, a screenshot and its text."""
    try:
        yield
    except (AssertionError, WebDriverException) as error:
        driver.save_screenshot(str(tmp_path / "failure.png"))
        raise AssertionError(
            f"{error}\nat {driver.current_url}; screenshot {tmp_path / 'failure.png'}; page:\n"
            f"{page_text(driver)[:3000]}"
        ) from error


def page_text(driver: webdriver.Chrome) -> str:
    return driver.execute_script("return document.body.innerText")


def screenshot(driver: webdriver.Chrome, tmp_path: Path, docs_copy: Path) -> None:
    driver.execute_script("document.activeElement.blur()")  # no focus ring in the picture
    driver.save_screenshot(str(tmp_path / docs_copy.name))
    if os.environ.get("GDEXP_UPDATE_DOCS"):
        docs_copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / docs_copy.name, docs_copy)


def close_assistant(driver: webdriver.Chrome) -> None:
    """The assistant side panel hides a third of the page."""
    for close in driver.find_elements(By.CSS_SELECTOR, ASSISTANT_CLOSE):
        close.click()


# --- the runs table -----------------------------------------------------------------------------


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


def check_runs_page(
    driver: webdriver.Chrome, sweep: Sweep, server: MlflowServer, tmp_path: Path
) -> None:
    driver.get(on_server(sweep.address, server))

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
    wait_for_runs(driver, {sweep.parent_name} | BGD | SGD)
    for name, run_id in sweep.children.items():
        link = driver.find_element(By.CSS_SELECTOR, f"{RUN_LINKS}[href$='/runs/{run_id}']")
        assert link.text.strip() == name

    close_assistant(driver)

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
    for name in BGD | SGD:
        assert cell(rows[name], "outcome") == sweep.outcomes[name], (name, rows[name])
        assert cell(rows[name], "final_loss") not in {"", "-"}, (name, rows[name])
    assert cell(rows[sweep.parent_name], "outcome") == "-", rows[sweep.parent_name]

    # Whole run names in the picture: the Run Name column autosized (a double click on its edge).
    name_header = driver.find_element(By.CSS_SELECTOR, RUN_NAME_HEADER)
    ActionChains(driver).double_click(
        name_header.find_element(By.CSS_SELECTOR, ".ag-header-cell-resize")
    ).perform()
    settled(driver, "arguments[0].getBoundingClientRect().width", name_header)
    screenshot(driver, tmp_path, RUNS_SCREENSHOT)

    # Searching the outcome tag keeps the SGD runs that blew up (under their parent), drops BGD's.
    search = driver.find_element(By.CSS_SELECTOR, "[data-testid='search-box']")
    search.click()
    search.send_keys(NOT_CONVERGED_FILTER, Keys.ENTER)
    wait(driver).until(
        lambda d: "searchFilter=tags.outcome" in d.current_url, message="search not applied"
    )
    wait_for_runs(driver, {sweep.parent_name} | SGD)


# --- charts -------------------------------------------------------------------------------------


def plot(driver: webdriver.Chrome, graph: WebElement) -> dict | None:
    """What a plotly graph draws: {traces: [{name, x, y}], x: {type, title}, y: {...}, width}."""
    return driver.execute_script(PLOT_JS, graph)


def curves(chart: dict) -> dict[str, list[tuple[list, list]]]:
    """Trace name -> the (x, y) of each of its traces (MLflow draws a line twice, one under the
    other, for smoothing)."""
    found: dict[str, list[tuple[list, list]]] = {}
    for trace in chart["traces"]:
        found.setdefault(trace["name"], []).append((trace["x"], trace["y"]))
    return found


def assert_curves(chart: dict, history: dict[str, list[Point]], x_of) -> None:
    """Each run's curve is its logged history, point by point, at x = `x_of(point)`, in order
    along x and spread over more than one x position (on the time axis, the epochs of a fast
    run may share a millisecond: their stamps are when training ran, inside the run)."""
    drawn = curves(chart)
    assert set(drawn) == set(history), sorted(drawn)
    for name, points in history.items():
        for x, y in drawn[name]:
            assert x == [x_of(p) for p in points], (name, chart["x"], x)
            assert x == sorted(x) and len(set(x)) > 1 and len(points) > 1, (name, x)
            assert y == pytest.approx([p.value for p in points], rel=1e-6), (name, y)


def chart_with(driver: webdriver.Chrome, graphs: str | None, card: str | None, ready) -> dict:
    """Waits for the plotly chart (the only one matching CSS `graphs`, or the one in the chart
    card titled `card`) to satisfy `ready(chart)`; returns what it draws."""
    seen: list[dict | None] = []

    def drawn(d: webdriver.Chrome) -> dict | bool:
        if "Error while loading" in page_text(d):
            raise AssertionError("MLflow could not load the page")
        if card is None:
            found = d.find_elements(By.CSS_SELECTOR, graphs)
            graph = found[0] if len(found) == 1 else None
        else:
            graph = d.execute_script(
                """
                for (const card of document.querySelectorAll(arguments[0])) {
                    if (card.innerText.split('\\n')[0].trim() !== arguments[1]) continue;
                    card.scrollIntoView({block: 'center'});
                    return card.querySelector('.js-plotly-plot');
                }
                return null;
                """,
                CHART_CARD,
                card,
            )
        seen.append(plot(d, graph) if graph is not None else None)
        return seen[-1] if seen[-1] is not None and ready(seen[-1]) else False

    try:
        return wait(driver).until(drawn)
    except TimeoutException:
        last = seen[-1] if seen else None
        summary = last and {k: last[k] for k in ("x", "y")} | {"traces": curves(last)}
        raise AssertionError(f"no such chart; last seen: {summary}") from None


def settled(driver: webdriver.Chrome, size: str, *args: object) -> None:
    """Waits until the JS expression `size` (of arguments[0], ...) keeps its value for a second:
    a chart or column has stopped resizing."""
    sizes: list[float] = []

    def still(d: webdriver.Chrome) -> bool:
        sizes.append(d.execute_script(f"return {size};", *args))
        return len(sizes) >= 6 and len(set(sizes[-6:])) == 1

    wait(driver).until(still, message=f"{size} keeps changing")


def check_loss_curves(
    driver: webdriver.Chrome, sweep: Sweep, server: MlflowServer, tmp_path: Path
) -> None:
    driver.get(on_server(sweep.loss_curves, server))
    runs = len(sweep.children)
    chart = chart_with(
        driver,
        ".js-plotly-plot",
        None,
        lambda c: (
            set(curves(c)) == set(sweep.children)
            and all(len(t["x"]) == EPOCHS for t in c["traces"])
        ),
    )
    # The sweep's runs, and only them, each drawn over the epochs, on a log scale.
    assert f"Comparing {runs} Runs from 1 Experiment" in page_text(driver)
    assert chart["x"] == {"type": "linear", "title": "Step"}, chart["x"]
    assert chart["y"]["type"] == "log", chart["y"]
    assert_curves(chart, sweep.history, lambda p: p.step)
    # The controls say so too: Step chosen, log scale on, the plotted metric `loss`.
    step = driver.find_element(By.CSS_SELECTOR, "input[data-testid='x-axis-radio'][value='step']")
    assert step.is_selected(), "the x-axis control is not on Step"
    log_switch = driver.find_element(
        By.XPATH,
        "//*[contains(@class, 'inline-control')][.//*[normalize-space()='Y-axis Log Scale:']]"
        "//button[@role='switch']",
    )
    assert log_switch.get_attribute("aria-checked") == "true", "the log-scale switch is off"
    assert driver.find_element(By.TAG_NAME, "h2").text.strip() == METRIC

    close_assistant(driver)
    graph = driver.find_element(By.CSS_SELECTOR, ".js-plotly-plot")
    settled(driver, "arguments[0].getBoundingClientRect().width", graph)
    screenshot(driver, tmp_path, CHART_SCREENSHOT)


def check_run_page(driver: webdriver.Chrome, sweep: Sweep, server: MlflowServer, name: str) -> None:
    run_id = sweep.children[name]
    driver.get(f"{server.url}/#/experiments/{sweep.experiment_id}/runs/{run_id}")
    tab = wait(driver).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "[role='tab'][id$='-trigger-model-metrics']")
    )
    assert tab.text.strip() == "Model metrics", tab.text
    tab.click()
    history = {name: sweep.history[name]}

    def loss_against(title: str):
        return lambda c: c["x"]["title"] == title and set(curves(c)) == {name}

    # Against the step: one point per epoch.
    chart = chart_with(driver, None, METRIC, loss_against("Step"))
    assert chart["x"]["type"] == "linear", chart["x"]
    assert_curves(chart, history, lambda p: p.step)

    # Against the wall-clock time (the charts' settings menu): each point at its own timestamp.
    driver.find_element(By.CSS_SELECTOR, CHARTS_SETTINGS).click()

    def wall_time_item(d: webdriver.Chrome) -> WebElement | bool:
        items = d.find_elements(By.CSS_SELECTOR, "[role='menuitemcheckbox']")
        found = [item for item in items if item.text.strip() == "Time (wall)"]
        return found[0] if found else False

    wait(driver).until(wall_time_item, message="no 'Time (wall)' in the charts' settings").click()
    chart = chart_with(driver, None, METRIC, loss_against("Time"))
    assert chart["x"]["type"] == "date", chart["x"]
    assert_curves(chart, history, lambda p: p.timestamp)


# --- tests --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_printed_address_opens_the_sweep_in_the_runs_table(
    sweep: Sweep, mlflow_server: MlflowServer, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    # gdexp's address, on the port the test server listens on; the rest exactly as printed.
    printed = urlsplit(sweep.address)
    assert printed.scheme == "http" and printed.hostname in {"127.0.0.1", "localhost"}
    assert printed.fragment.startswith(f"/experiments/{sweep.experiment_id}/"), sweep.address
    with explained(browser, tmp_path):
        check_runs_page(browser, sweep, mlflow_server, tmp_path)


@pytest.mark.slow
def test_printed_loss_curves_address_opens_the_loss_chart_against_the_epoch(
    sweep: Sweep, mlflow_server: MlflowServer, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    printed = urlsplit(sweep.loss_curves)
    assert printed.scheme == "http" and printed.hostname in {"127.0.0.1", "localhost"}
    assert printed.fragment.startswith(f"/metric/{METRIC}?"), sweep.loss_curves
    with explained(browser, tmp_path):
        check_loss_curves(browser, sweep, mlflow_server, tmp_path)


@pytest.mark.slow
def test_a_runs_loss_chart_spreads_over_the_steps_and_over_time(
    sweep: Sweep, mlflow_server: MlflowServer, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    with explained(browser, tmp_path):
        check_run_page(browser, sweep, mlflow_server, ONE_RUN)
