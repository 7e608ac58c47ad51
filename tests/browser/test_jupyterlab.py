"""The example notebooks in a real JupyterLab, driven by headless Chromium (Debian's ``chromium``).

JupyterLab picks the highest-ranked MIME type of each output: a bundle with ``application/json``
showed every ``QueryResult`` as a collapsed JSON tree. This test runs the notebooks as a user
would (Run All in the browser) and reads the DOM: results are HTML tables with SQL types, charts
are drawn by Vega, no query echo fills the cells, and a failing cell is short.

Set ``ANALYSIS_SCREENSHOTS=DIR`` to keep a screenshot of each notebook.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.slow


def _need(available: bool, what: str) -> None:
    if not available:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} is missing in CI (see .ci/setup)")
        pytest.skip(f"{what} is not installed")


def _without_outputs(source: Path, target: Path) -> None:
    notebook = json.loads(source.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    target.write_text(json.dumps(notebook), encoding="utf-8")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A JupyterLab server over copies of the example notebooks (outputs cleared); its base URL."""
    _need(CHROMIUM.exists(), "chromium")
    _need(shutil.which("jupyter-lab", path=str(Path(sys.executable).parent)) is not None, "jupyterlab")
    work = tmp_path_factory.mktemp("lab")
    (work / "notebooks").mkdir()
    for name in ("quickstart.ipynb", "charts.ipynb"):
        _without_outputs(REPO / "notebooks" / name, work / "notebooks" / name)
    shutil.copytree(REPO / "examples", work / "examples")
    config = work / "config"
    (config / "labconfig").mkdir(parents=True)
    # No news pop-up (it fetches from the internet); start the notebook's kernel without asking.
    disabled = {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}
    (config / "labconfig" / "page_config.json").write_text(json.dumps(disabled))
    tracker = config / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"autoStartDefaultKernel": True}))
    token = "analysis-browser-test"
    runtime = work / "runtime"  # the server writes the port it bound into jpserver-<pid>.json here
    log = (work / "lab.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            "--port=0",  # the server picks a free port itself, instead of us picking one it may lose
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={work}",
            "--LabApp.expose_app_in_browser=True",
            f"--LabApp.user_settings_dir={config / 'settings'}",
            f"--LabApp.workspaces_dir={config / 'workspaces'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(config),
            "JUPYTER_RUNTIME_DIR": str(runtime),
            "ANALYSIS_ROOT": str(work / ".clients"),
        },
        start_new_session=True,  # the server and its kernels end together below
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (work / "lab.log").read_text()
            info = runtime / f"jpserver-{server.pid}.json"
            try:
                port = json.loads(info.read_text(encoding="utf-8"))["port"]
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except (OSError, ValueError, KeyError):  # not written yet, half written, or not listening yet
                assert time.monotonic() < deadline, "JupyterLab did not start within 60 s"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/lab/tree/notebooks/{{name}}?token={token}&reset"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from Debian, driven through Playwright (no browser download)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "playwright")
    _need(CHROMIUM.exists(), "chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


_RUN_ALL = """async path => {
  const app = window.jupyterapp;
  let panel = null;
  while (panel === null) {  // the notebook's panel, once JupyterLab has opened it
    panel = [...app.shell.widgets('main')].find(w => w.context?.path === path) ?? null;
    if (panel === null) await new Promise(resolve => setTimeout(resolve, 100));
  }
  app.shell.activateById(panel.id);
  await panel.context.ready;
  await panel.sessionContext.ready;
  while (panel.sessionContext.session?.kernel?.status !== 'idle') {
    await new Promise(resolve => setTimeout(resolve, 100));
  }
  // Run All stops at a cell that raises (JupyterLab ignores the raises-exception tag): go on below it.
  const cells = panel.content.widgets;
  for (let guard = 0; guard < cells.length; guard++) {
    const next = cells.findIndex(c => c.model.type === 'code' && c.model.executionCount === null);
    if (next < 0) break;
    panel.content.activeCellIndex = next;
    await app.commands.execute('notebook:run-all-below');
  }
  return '#' + panel.id;
}"""
_ALL_RAN = """notebook => {
  const prompts = [...document.querySelectorAll(notebook + ' .jp-CodeCell .jp-InputArea-prompt')];
  return prompts.length > 0 && prompts.every(p => /^\\[\\d+\\]:$/.test(p.textContent.trim()));
}"""


def _run_notebook(browser: Any, lab: str, name: str) -> tuple[Any, str]:
    """Open notebook ``name``, Run All, wait for every cell; the page and the notebook's selector."""
    page = browser.new_page(viewport={"width": 1280, "height": 4000})
    page.goto(lab.format(name=name))
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
    notebook: str = page.evaluate(_RUN_ALL, f"notebooks/{name}")
    page.wait_for_function(_ALL_RAN, arg=notebook, timeout=60_000)
    page.wait_for_timeout(500)  # let the last outputs render
    shots = os.environ.get("ANALYSIS_SCREENSHOTS")
    if shots:
        page.screenshot(path=str(Path(shots) / f"{Path(name).stem}.png"), full_page=True)
    return page, notebook


def _texts(page: Any, selector: str) -> list[str]:
    texts: list[str] = page.eval_on_selector_all(selector, "els => els.map(e => e.innerText)")
    return texts


def test_quickstart_shows_tables_short_errors_and_no_query_echo(browser: Any, lab: str) -> None:
    page, notebook = _run_notebook(browser, lab, "quickstart.ipynb")
    try:
        assert page.locator(f"{notebook} .jp-OutputArea-output.jp-RenderedJSON").count() == 0
        tables = page.locator(
            f"{notebook} .jp-OutputArea-output[data-mime-type='text/html'] table.analysis-result"
        )
        assert tables.count() >= 4  # three queries and the %%analysis result's rows
        types = _texts(page, f"{notebook} table.analysis-result th small")
        assert types and all(t == t.upper() for t in types), types  # SQL names, not int64/string
        first = tables.first.inner_text()
        assert "category" in first and "VARCHAR" in first and "BIGINT" in first
        outputs = "\n".join(_texts(page, f"{notebook} .jp-OutputArea-output"))
        assert "1,500 rows loaded into table orders" in outputs
        assert "[query:" not in outputs and "[load_data]" not in outputs
        errors = _texts(
            page, f"{notebook} .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        )
        error = next(e for e in errors if "timeout" in e)
        assert "timeout: The analysis ran past the 1 s deadline and was stopped." in error
        assert "duck.py" not in error and len(error.splitlines()) <= 6
    finally:
        page.close()


def test_charts_are_drawn_by_vega(browser: Any, lab: str) -> None:
    page, notebook = _run_notebook(browser, lab, "charts.ipynb")
    try:
        page.wait_for_function(
            f"document.querySelectorAll('{notebook} .vega-embed').length >= 4", timeout=30_000
        )
        sizes = page.eval_on_selector_all(
            f"{notebook} .vega-embed",
            "els => els.map(e => { const g = e.querySelector('canvas, svg'); "
            "const r = g ? g.getBoundingClientRect() : {width: 0, height: 0}; return [r.width, r.height]; })",
        )
        assert len(sizes) == 4 and all(w > 300 and h > 200 for w, h in sizes), sizes
        assert page.locator(f"{notebook} table.analysis-result").count() == 1  # the sales result
        assert page.locator(f"{notebook} .jp-RenderedImage, {notebook} .jp-RenderedSVG").count() == 0
    finally:
        page.close()
