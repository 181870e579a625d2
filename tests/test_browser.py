"""Cross-cutting (the notebooks, not a module): notebook 01 in a real browser: JupyterLab from the course's
environment, driven by Playwright in Chromium.

What a learner does after ``make lab``: open the notebook, Run > Run All Cells, look at the
outputs, move the n_bits slider. The test does the same through the page, in headless Debian
Chromium (``/usr/bin/chromium``; ``.ci/run`` installs it), on a scratch copy of the notebook so
that the committed one is never touched. It checks that every code cell ran without an error,
that the n_bits widget was drawn, and that setting it to another value redraws its figure. The
screenshots go to ``artifacts/browser/`` (ignored by git).

Outside CI, a machine without Chromium skips the test; under CI (``CI=true``) it fails instead.
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
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "artifacts" / "browser"
NOTEBOOK = "01_quantization.ipynb"
JUPYTER = Path(sys.executable).parent / "jupyter"
# Chromium as root in a container, offline: no sandbox, no GPU, and none of its calls home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
# JupyterLab settings for the run: no autosave (nothing is written behind the test's back), no news fetched,
# every cell in the page (JupyterLab 4 otherwise renders only the cells in view).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}

if not CHROMIUM.exists():
    reason = f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)"
    if os.environ.get("CI"):
        raise RuntimeError(f"the browser test must run in CI: {reason}")
    pytest.skip(reason, allow_module_level=True)

playwright_sync = pytest.importorskip("playwright.sync_api")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab of the course's venv, serving a scratch copy of notebook 01; yields its base URL and token."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    settings = root / ".settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), "course-browser-test"
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / ".workspaces"),
        "TQDM_DISABLE": "1",
    }
    command = [
        str(JUPYTER),
        "lab",
        "--no-browser",
        f"--port={port}",
        "--ServerApp.ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--allow-root",
    ]
    log = (root / "lab.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                os.killpg(server.pid, signal.SIGTERM)
                pytest.fail(f"JupyterLab did not start: {(root / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield base, token, root
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="module")
def page(lab):
    base, token, _ = lab
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
        yield page
        browser.close()


#: True once the notebook's kernel is connected and idle: the status bar then reads "<kernel name> | Idle". (The
#: toolbar's execution indicator says "idle" from the start, before any kernel is connected; Run All Cells clicked
#: then clears the prompts and runs nothing.)
KERNEL_READY = """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
    .some(item => / [|] Idle$/.test(item.textContent.trim()))"""


def status_bar(page) -> str:
    return " / ".join(t.strip() for t in page.locator(".jp-StatusBar-TextItem").all_inner_texts() if t.strip())


def test_notebook_01_runs_in_the_browser_and_its_slider_responds(lab, page):
    _, _, root = lab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
    try:
        page.wait_for_function(KERNEL_READY, timeout=120_000)
    except playwright_sync.TimeoutError:
        page.screenshot(path=str(SCREENSHOTS / "01_no_kernel.png"))
        pytest.fail(f"the notebook's kernel was not connected and idle in 2 minutes; status bar: {status_bar(page)}")

    # Every code cell of the file drawn in the page (a loaded machine renders a long notebook in several frames).
    n_code = sum(c.cell_type == "code" for c in nbformat.read(root / NOTEBOOK, as_version=4).cells)
    page.wait_for_function("(n) => document.querySelectorAll('.jp-CodeCell').length === n", arg=n_code, timeout=120_000)

    # Run > Run All Cells, as a learner would.
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=False).first.click()
    try:  # the first cell queued or run: "[*]:" or "[1]:"
        page.wait_for_function(
            "() => /\\[(\\*|\\d+)\\]/.test(document.querySelector('.jp-CodeCell .jp-InputPrompt')?.textContent)",
            timeout=60_000,
        )
    except playwright_sync.TimeoutError:
        page.screenshot(path=str(SCREENSHOTS / "01_not_started.png"))
        pytest.fail(f"Run All Cells started no cell within a minute; status bar: {status_bar(page)}")
    # Every input prompt shows an execution count ("[12]:"), none a star, and the kernel is idle again.
    try:
        page.wait_for_function(
            """(n) => {
                const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                return prompts.length === n && prompts.every(p => /\\[\\d+\\]/.test(p.textContent))
                    && document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status === 'idle'
                    && (KERNEL_READY)();
            }""".replace("KERNEL_READY", KERNEL_READY),
            arg=n_code,
            timeout=300_000,
        )
    except playwright_sync.TimeoutError:
        page.screenshot(path=str(SCREENSHOTS / "01_timeout.png"))
        prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
        pytest.fail(f"the cells did not all finish within 5 minutes; prompts: {prompts}")
    page.screenshot(path=str(SCREENSHOTS / "01_after_run_all.png"), full_page=False)

    # Save through the UI, then read what the browser's kernel produced: no error output anywhere.
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        saved = nbformat.read(root / NOTEBOOK, as_version=4)
        if all(c.execution_count for c in saved.cells if c.cell_type == "code"):
            break
        time.sleep(0.5)
    errors = [
        (i, o.get("ename"), o.get("evalue"))
        for i, c in enumerate(saved.cells)
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert errors == []
    assert all(c.execution_count for c in saved.cells if c.cell_type == "code")

    # The n_bits widget: drawn as a slider at 3, and a new value redraws its figure.
    slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text="n_bits"))
    slider.scroll_into_view_if_needed()
    readout = slider.locator(".widget-readout")
    assert readout.inner_text().strip() == "3"
    figure = page.locator(".widget-output img").last
    figure.wait_for(timeout=30_000)
    before = figure.get_attribute("src")
    slider.screenshot(path=str(SCREENSHOTS / "01_slider_before.png"))
    readout.click()
    page.keyboard.press("Control+a")
    page.keyboard.type("6")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "(before) => { const imgs = document.querySelectorAll('.widget-output img');"
        " return imgs.length && imgs[imgs.length - 1].src !== before; }",
        arg=before,
        timeout=30_000,
    )
    assert readout.inner_text().strip() == "6"
    page.locator(".widget-output").last.screenshot(path=str(SCREENSHOTS / "01_slider_after.png"))
