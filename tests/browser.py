"""JupyterLab driven through Chromium, shared by the browser tests (not a test file).

What a learner does after ``make lab``, done through the page: open a notebook, Run > Run All
Cells, wait, save. :func:`lab_server` starts JupyterLab from the course's environment on a
scratch copy of the course (:func:`scratch_course`: the notebooks copied, the folders they read
linked), so the committed notebooks are never touched; :func:`run_all_cells` runs one notebook
and returns it as the browser's kernel left it. Screenshots go to ``artifacts/browser/``
(ignored by git). Debian's ``/usr/bin/chromium`` is needed (``.ci/run`` installs it): outside CI
a machine without it skips the tests, under CI (``CI=true``) they fail instead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "artifacts" / "browser"
JUPYTER = Path(sys.executable).parent / "jupyter"
TOKEN = "course-browser-test"
#: The lighter settings a Binder session gets (course_lib.environment reads the cap): 2 GB.
LIGHTER = {"COURSE_MEMORY_LIMIT": "2G"}
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
#: True once the notebook's kernel is connected and idle: the status bar then reads "<kernel name> | Idle". (The
#: toolbar's execution indicator says "idle" from the start, before any kernel is connected; Run All Cells clicked
#: then clears the prompts and runs nothing.)
KERNEL_READY = """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
    .some(item => / [|] Idle$/.test(item.textContent.trim()))"""


def require_chromium():
    """Playwright's sync API, once Chromium is known to be there (skip, or fail under CI, otherwise)."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)"
        if os.environ.get("CI"):
            raise RuntimeError(f"the browser tests must run in CI: {reason}")
        pytest.skip(reason, allow_module_level=True)
    return pytest.importorskip("playwright.sync_api")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scratch_course(root: Path, notebooks: list[str]) -> Path:
    """``root/notebooks`` holding copies of ``notebooks`` without their outputs (so that a saved copy shows what
    the browser's kernel ran), beside links to the folders they read (``benchmarks``, ``docs``); returns ``root``."""
    (root / "notebooks").mkdir(parents=True)
    for name in notebooks:
        notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(notebook, root / "notebooks" / name)
    for folder in ("benchmarks", "docs"):
        (root / folder).symlink_to(ROOT / folder, target_is_directory=True)
    return root


@contextmanager
def lab_server(root: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """JupyterLab of the course's venv serving ``root``, its kernels started with ``env`` added; yields its base
    URL (the token is :data:`TOKEN`)."""
    settings = root / ".settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port = free_port()
    lab_env = {
        **os.environ,
        **(env or {}),
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
        f"--IdentityProvider.token={TOKEN}",
        f"--ServerApp.root_dir={root}",
        "--allow-root",
    ]
    log_path = root / "lab.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(command, env=lab_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    os.killpg(server.pid, signal.SIGTERM)
                    pytest.fail(f"JupyterLab did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.5)
        try:
            yield base
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


def status_bar(page) -> str:
    return " / ".join(t.strip() for t in page.locator(".jp-StatusBar-TextItem").all_inner_texts() if t.strip())


def run_all_cells(page, base: str, root: Path, path: str, timeout_seconds: int) -> nbformat.NotebookNode:
    """Open ``path`` (relative to ``root``) in the page, wait for its kernel, Run > Run All Cells, wait until every
    code cell has run (at most ``timeout_seconds``), save through the UI and return the saved notebook."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = Path(path).stem[:2]
    page.goto(f"{base}/lab/tree/{path}?token={TOKEN}")
    page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
    try:
        page.wait_for_function(KERNEL_READY, timeout=120_000)
    except PlaywrightTimeout:
        page.screenshot(path=str(SCREENSHOTS / f"{shot}_no_kernel.png"))
        pytest.fail(f"{path}: the kernel was not connected and idle in 2 minutes; status bar: {status_bar(page)}")

    # Every code cell of the file drawn in the page (a loaded machine renders a long notebook in several frames).
    n_code = sum(c.cell_type == "code" for c in nbformat.read(root / path, as_version=4).cells)
    try:
        page.wait_for_function(
            "(n) => document.querySelectorAll('.jp-CodeCell').length === n", arg=n_code, timeout=120_000
        )
    except PlaywrightTimeout:
        page.screenshot(path=str(SCREENSHOTS / f"{shot}_not_drawn.png"))
        drawn = page.locator(".jp-CodeCell").count()
        pytest.fail(f"{path}: {drawn} of its {n_code} code cells were drawn in 2 minutes")

    # Run > Run All Cells, as a learner would.
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=False).first.click()
    try:  # the first cell queued or run: "[*]:" or "[1]:"
        page.wait_for_function(
            "() => /\\[(\\*|\\d+)\\]/.test(document.querySelector('.jp-CodeCell .jp-InputPrompt')?.textContent)",
            timeout=60_000,
        )
    except PlaywrightTimeout:
        page.screenshot(path=str(SCREENSHOTS / f"{shot}_not_started.png"))
        pytest.fail(f"{path}: Run All Cells started no cell within a minute; status bar: {status_bar(page)}")
    # Every input prompt shows an execution count ("[12]:"), none a star, and the kernel is idle again; or a cell
    # failed (an error output), after which JupyterLab runs no further cell.
    try:
        page.wait_for_function(
            """(n) => {
                const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                const idle = document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status === 'idle'
                    && (KERNEL_READY)();
                const stderr = '[data-mime-type="application/vnd.jupyter.stderr"]';  // errors render as stderr
                const failed = [...document.querySelectorAll(stderr)].some(o => /Traceback|Error/.test(o.textContent));
                return idle && (failed
                    || (prompts.length === n && prompts.every(p => /\\[\\d+\\]/.test(p.textContent))));
            }""".replace("KERNEL_READY", KERNEL_READY),
            arg=n_code,
            timeout=timeout_seconds * 1000,
        )
    except PlaywrightTimeout:
        page.screenshot(path=str(SCREENSHOTS / f"{shot}_timeout.png"))
        prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
        pytest.fail(f"{path}: the cells did not all finish within {timeout_seconds} s; prompts: {prompts}")
    page.screenshot(path=str(SCREENSHOTS / f"{shot}_after_run_all.png"), full_page=False)

    # Save through the UI, then read what the browser's kernel produced (the copy had no outputs).
    before = (root / path).stat().st_mtime_ns
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 30
    while (root / path).stat().st_mtime_ns == before:
        if time.monotonic() > deadline:
            pytest.fail(f"{path}: the notebook was not saved within 30 s")
        time.sleep(0.5)
    time.sleep(1)  # the file is written in one go, but give the write a moment to end
    return nbformat.read(root / path, as_version=4)


def error_outputs(notebook: nbformat.NotebookNode) -> list[tuple[int, str, str]]:
    """(cell index, exception name, message) of every error output, and of every output on stderr that reports a
    traceback or an error."""
    found = []
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        for output in cell.outputs:
            if output.output_type == "error":
                found.append((i, output.get("ename", ""), output.get("evalue", "")))
            elif output.output_type == "stream" and output.get("name") == "stderr":
                text = output.get("text", "")
                if "Traceback" in text or "Error" in text:
                    found.append((i, "stderr", text[-500:]))
    return found
