"""Cross-cutting (the notebooks, not a module): notebooks 02 to 04 in a real browser, as a Binder learner runs them.

JupyterLab from the course's environment, driven by Playwright in Chromium (``tests/browser.py``),
with the lighter settings of a 2 GB session (``COURSE_MEMORY_LIMIT=2G``: 3-bit circuits, one set of
parameters, notebook 04's layer simulated). Each notebook is opened in the page, run with Run >
Run All Cells and saved; the test fails on any error output. About 15 minutes in all on 2 cores,
so ``make test`` leaves these to ``make test-browser`` (``.ci/run`` runs both); notebook 01 runs in
``tests/test_browser.py``, within ``make test``.
"""

from __future__ import annotations

import pytest
from browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LIGHTER,
    error_outputs,
    lab_server,
    require_chromium,
    run_all_cells,
    scratch_course,
)

pytestmark = pytest.mark.browser
playwright_sync = require_chromium()
#: Each notebook, and the most its run may take (about twice its time under the lighter settings on 2 cores).
NOTEBOOKS = {"02_single_head.ipynb": 600, "03_compile_fhe.ipynb": 1200, "04_full_mha.ipynb": 1500}
#: The notebooks whose settings depend on the memory (they print ``describe_memory()``).
MEMORY_AWARE = {"03_compile_fhe.ipynb", "04_full_mha.ipynb"}


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.mark.parametrize("notebook", list(NOTEBOOKS))
def test_notebook_runs_in_the_browser_under_the_lighter_settings(tmp_path, browser, notebook):
    # A JupyterLab per notebook: a fresh workspace, in which no other notebook is open.
    root = scratch_course(tmp_path, [notebook])
    with lab_server(root, LIGHTER) as base:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            saved = run_all_cells(page, base, root, f"notebooks/{notebook}", timeout_seconds=NOTEBOOKS[notebook])
        finally:
            page.close()
    assert error_outputs(saved) == []
    assert all(c.execution_count for c in saved.cells if c.cell_type == "code")
    if notebook in MEMORY_AWARE:
        printed = "".join(o.get("text", "") for c in saved.cells if c.cell_type == "code" for o in c.outputs)
        assert "settings: the lighter ones" in printed  # the notebook saw the cap
