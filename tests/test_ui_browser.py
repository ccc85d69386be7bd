"""The MLflow UI opens where the runs are (issue 16), seen in a real browser.

Two runs are logged into a project's SQLite store with the project's own logging, the real
``universal-neurons ui`` serves it over HTTP on a free port, and headless Chromium opens the
address that ``ui`` prints: the runs table must show both runs with their % universal in the
headline columns, and the compare page the changed parameter side by side, in the classic-ML
view also when reached with the UI's own Compare button, its plot on the headline metric. A
screenshot of the runs table is written to the test's temporary folder for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import git
from headless_chromium import Chromium
from mlflow.tracking import MlflowClient
from synthetic_results import write_results

from universal_neurons.outputs import mlflow_app
from universal_neurons.outputs.tracking import default_tracking_uri, log_run
from universal_neurons.outputs.tracking_ui import (
    column_id,
    compare_runs_url,
    runs_table_url,
    server_experiment_url,
)
from universal_neurons.pipeline.layout import Layout
from universal_neurons.pipeline.tools.log import run_inputs

pytestmark = [pytest.mark.slow, pytest.mark.browser]

STARTUP_LIMIT_S = 180  # how long the server may take to answer (a wait, not a speed check)
RENDER_LIMIT_S = 180  # how long the single-page app may take to show the table
MEAN = "mean.percent_universal"
SEED1 = "seed1.percent_universal"
PRINTED = re.compile(r"^MLflow UI: (\S+)", re.MULTILINE)


def _git(cwd: Path, *args: str) -> str:
    return git(cwd, *args)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _log(work: Path, uri: str, threshold: float, mean_percent: float | None = None):
    """Log the workspace with the parameter ``universality.threshold`` (and the headline mean
    % universal, ``metrics/universality.json``) set."""
    if mean_percent is not None:
        metrics = work / "metrics" / "universality.json"
        headline = json.loads(metrics.read_text())
        headline["mean_percent_universal"] = mean_percent
        metrics.write_text(json.dumps(headline))
    raw = {"universality": {"threshold": threshold}, "train": {"seeds": [1, 2]}}
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    return log_run(run_inputs(Layout.at(work), [1, 2]), raw, uri=uri)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project root whose store holds two runs: ``repro-<commit>`` (synthetic results,
    τ = 0.5) and the experiment ``tau-0.15`` (τ = 0.15, 12.5 % universal)."""
    root = tmp_path_factory.mktemp("project")
    work = root / "work"
    documents = write_results(work)
    outs = [{"path": "metrics/universality.json", "md5": "aa"}]
    (work / "dvc.lock").write_text(yaml.safe_dump({"stages": {"u": {"cmd": "x", "outs": outs}}}))
    _git(work, "init", "-q")
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "results")
    uri = default_tracking_uri(root)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("DVC_EXP_NAME", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
            patch.delenv(name, raising=False)
        first = _log(work, uri, threshold=0.5)
        patch.setenv("DVC_EXP_NAME", "tau-0.15")
        second = _log(work, uri, threshold=0.15, mean_percent=12.5)
    commit = _git(work, "rev-parse", "HEAD")
    assert first.run_name == f"repro-{commit[:7]}"
    expected_mean = float(f"{documents['universality']['mean_percent_universal']:.3g}")
    seed1 = float(f"{documents['universality']['models']['seed1']['percent_universal']:.3g}")
    return {"root": root, "runs": (first, second), "means": (expected_mean, 12.5), "seed1": seed1}


def _wait_for_server(base: str, process: subprocess.Popen, log: Path) -> None:
    """Poll ``base``/health until it answers; fail with the log if ``ui`` exits or never does."""
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"universal-neurons ui exited with {process.returncode}:\n{log.read_text()}"
            )
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)  # poll interval of a readiness check (a condition, not a fixed wait)
    pytest.fail(f"{base} did not answer within {STARTUP_LIMIT_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def ui(project):
    """``universal-neurons ui --port <free>`` on the project; yields the address it printed."""
    port = _free_port()
    log = project["root"] / "ui.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["DVC_ROOT"] = str(project["root"])
    with log.open("w") as handle:
        process = subprocess.Popen(
            ["universal-neurons", "ui", "--port", str(port)],
            cwd=project["root"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_server(f"http://127.0.0.1:{port}", process, log)
        printed = PRINTED.search(log.read_text())
        assert printed, f"ui printed no address:\n{log.read_text()}"
        yield {"base": f"http://127.0.0.1:{port}", "printed": printed.group(1)}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium (fresh profile) for the module's pages."""
    with Chromium() as chromium:
        yield chromium


def _cell(run_id: str, column: str) -> str:
    """JavaScript: the text of the runs table's cell of run ``run_id`` in ``column`` (or null)."""
    selector = json.dumps(f'[row-id="{run_id}"] [col-id="{column}"]')
    return f"(document.querySelector({selector}) || {{}}).innerText"


def test_ui_prints_the_runs_table(project, ui):
    """``ui`` prints the experiment's runs table with the headline view, not the server root."""
    experiment_id = project["runs"][0].experiment_id
    assert ui["printed"] == runs_table_url(ui["base"], experiment_id)
    assert ui["printed"] == (
        f"{ui['base']}/#/experiments/{experiment_id}/runs"
        "?workflowType=machine_learning&viewStateShareKey=headline"
    )
    # what `ui` prints for MLFLOW_TRACKING_URI=<this server>: the same table, found over REST
    assert server_experiment_url(ui["base"], "universal-neurons") == ui["printed"]


def test_runs_table_in_a_browser(project, ui, browser, tmp_path):
    """Chromium at the printed address: both rows, their names and % universal as columns."""
    first, second = project["runs"]
    mean_column = column_id("metrics", MEAN)
    browser.goto(ui["printed"])
    browser.wait_for(
        f"{_cell(first.run_id, mean_column)} && {_cell(second.run_id, mean_column)}",
        timeout_s=RENDER_LIMIT_S,
    )
    shot = browser.screenshot(tmp_path / "runs_table.png")
    rows = {
        run.run_id: {
            "name": browser.evaluate(_cell(run.run_id, "attributes.`Run Name`")),
            "mean": browser.evaluate(_cell(run.run_id, mean_column)),
            "seed1": browser.evaluate(_cell(run.run_id, column_id("metrics", SEED1))),
        }
        for run in (first, second)
    }
    headers = browser.evaluate(
        "Array.from(document.querySelectorAll('.ag-header-cell[col-id]'), c => c.getAttribute('col-id'))"
    )
    route = browser.evaluate("window.location.hash")
    print(f"screenshot: {shot}")
    assert route.startswith(f"#/experiments/{first.experiment_id}/runs?")
    assert mean_column in headers
    for run, mean in zip((first, second), project["means"], strict=True):
        assert rows[run.run_id]["name"].splitlines()[-1] == run.run_name
        assert rows[run.run_id]["mean"] == repr(mean)  # JS prints numbers as Python's repr
        assert rows[run.run_id]["seed1"] == repr(project["seed1"])  # 4 of 39 live: "10.3"
    assert project["means"][0] == 7.76 and project["seed1"] == 10.3  # read as percentages
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


# Per header cell of the metric columns: its id, the text it shows, and whether that text is cut
# (an element inside it narrower than its content).
_HEADERS_JS = """
Array.from(document.querySelectorAll('.ag-header-cell[col-id]'), cell => ({
  id: cell.getAttribute('col-id'),
  left: cell.getBoundingClientRect().left,
  text: cell.innerText.trim(),
  cut: Array.from(cell.querySelectorAll('*')).some(e => e.scrollWidth > e.clientWidth + 1
                                                     && e.innerText.trim() !== ''),
}))
"""


def test_headline_headers_show_their_whole_names_first(project, ui, browser):
    """In the rendered runs table every headline metric's header shows its whole name (the
    model in ``seed1.percent_universal`` is not cut off) and the headline columns come first
    among the metric columns, in the shared view's order."""
    first, second = project["runs"]
    browser.goto(ui["printed"])
    browser.wait_for(_cell(first.run_id, column_id("metrics", SEED1)), timeout_s=RENDER_LIMIT_S)
    headers = sorted(browser.evaluate(_HEADERS_JS), key=lambda header: header["left"])
    metrics = [h for h in headers if h["id"].startswith("metrics.")]
    expected = [MEAN, SEED1, "seed2.percent_universal"]
    assert [h["id"] for h in metrics][:3] == [column_id("metrics", key) for key in expected]
    for header, key in zip(metrics, expected, strict=False):
        assert header["text"] == key and not header["cut"], header


def test_compare_page_in_a_browser(project, ui, browser):
    """The compare address shows the changed parameter of the two runs side by side."""
    first, second = project["runs"]
    url = compare_runs_url(ui["base"], first.experiment_id, [first.run_id, second.run_id])
    row = (
        "Array.from(document.querySelectorAll('tr'))"
        ".map(r => r.innerText).find(t => t.startsWith('universality.threshold'))"
    )
    browser.goto(url)
    browser.wait_for(row, timeout_s=RENDER_LIMIT_S)
    cells = browser.evaluate(row).split("\t")
    names = browser.text()
    assert [cell.strip() for cell in cells] == ["universality.threshold", "0.5", "0.15"]
    assert first.run_name in names and second.run_name in names


# The UI's workflow choice (genai / machine_learning) as MLflow 3.17's UI stores it, and the
# left sidebar's entries: the classic-ML sidebar has "Runs", the GenAI one "Overview".
WORKFLOW_KEY = "mlflow.workflowType_v1"
_SIDEBAR_JS = "Array.from(document.querySelectorAll('nav a, aside a'), a => a.innerText.trim())"
_COMPARE_BUTTON_JS = (
    "Array.from(document.querySelectorAll('button')).find(b => b.innerText.trim() === 'Compare')"
)
_THRESHOLD_ROW_JS = "Array.from(document.querySelectorAll('tr')).find(r => r.innerText.startsWith('universality.threshold'))"


def _fresh_page(browser, address: str, stored: str | None) -> None:
    """Load ``address`` anew with the browser's stored workflow ``stored`` (None: unset, as in
    a browser that never opened MLflow)."""
    browser.goto(address)
    if stored is None:
        browser.evaluate(f"localStorage.removeItem({json.dumps(WORKFLOW_KEY)})")
    else:
        browser.evaluate(f"localStorage.setItem({json.dumps(WORKFLOW_KEY)}, {json.dumps(stored)})")
    browser.goto("about:blank")  # the next address loads a new document (runs the page's scripts)
    browser.goto(address)


def _compare_with_the_button(project, ui, browser) -> list[str]:
    """Select both runs in the printed runs table, press the UI's Compare button; the sidebar
    entries of the compare page it opens."""
    first, second = project["runs"]
    browser.wait_for(_cell(second.run_id, column_id("metrics", MEAN)), timeout_s=RENDER_LIMIT_S)
    for run in (first, second):
        box = json.dumps(f'[row-id="{run.run_id}"] .ag-checkbox-input')
        browser.evaluate(f"document.querySelector({box}).click()")
    browser.wait_for(_COMPARE_BUTTON_JS)
    browser.evaluate(f"{_COMPARE_BUTTON_JS}.click()")
    browser.wait_for("location.hash.startsWith('#/compare-runs?')")
    browser.wait_for(_THRESHOLD_ROW_JS, timeout_s=RENDER_LIMIT_S)
    assert "workflowType" not in browser.evaluate("location.hash")  # the button's own link
    return browser.evaluate(_SIDEBAR_JS)


def test_compare_button_keeps_the_classic_ml_view(project, ui, browser):
    """A fresh browser (no workflow stored) opens the printed runs table, selects both runs
    and presses Compare: the compare page keeps the classic-ML sidebar ("Runs", no GenAI
    "Overview"), because the page ``ui`` serves stores classic ML as the default. The same
    clicks with GenAI stored (what MLflow's own page leaves a fresh browser with) show the
    GenAI sidebar, so the sidebar text tells the two apart; a choice already stored stays."""
    assert mlflow_app.app_installed(), "the mlflow.app entry point is missing: pip install -e ."
    _fresh_page(browser, ui["printed"], stored=None)
    assert browser.evaluate(f"localStorage.getItem({json.dumps(WORKFLOW_KEY)})") == json.dumps(
        "machine_learning"
    )
    sidebar = _compare_with_the_button(project, ui, browser)
    assert "Runs" in sidebar and "Overview" not in sidebar, sidebar

    _fresh_page(browser, ui["printed"], stored=json.dumps("genai"))
    sidebar = _compare_with_the_button(project, ui, browser)
    assert "Overview" in sidebar and "Runs" not in sidebar, sidebar
    assert browser.evaluate(f"localStorage.getItem({json.dumps(WORKFLOW_KEY)})") == '"genai"'


def test_compare_plot_shows_the_headline_metric(project, ui, browser):
    """The compare page's default plot (parallel coordinates) shows the first metric the runs
    share; the runs are logged headline first, so that is the mean % universal, not the
    alphabetically first key (a ``detail.``-like one)."""
    first, second = project["runs"]
    keys = sorted(
        MlflowClient(default_tracking_uri(project["root"])).get_run(first.run_id).data.metrics
    )
    assert keys[0] != MEAN  # sorted order would plot another metric
    browser.goto(compare_runs_url(ui["base"], first.experiment_id, [first.run_id, second.run_id]))
    browser.wait_for(_THRESHOLD_ROW_JS, timeout_s=RENDER_LIMIT_S)
    text = browser.text()
    chosen = text[text.index("Metrics:") :].splitlines()[1:3]
    assert chosen == [MEAN, "Clear All"], chosen
