"""Cross-cutting (the notebooks, not a module): notebook 01 in a real browser, JupyterLab from the course's
environment driven by Playwright in Chromium, with the lighter settings of a 2 GB Binder session.

What a learner does after ``make lab``: open the notebook, Run > Run All Cells, look at the
outputs, move the n_bits slider. The test does the same through the page (``tests/browser.py``),
on a scratch copy of the notebook. It checks that every code cell ran without an error, that the
n_bits widget was drawn, and that setting it to another value redraws its figure. Notebooks 02 to
04 run the same way in ``tests/test_browser_notebooks.py`` (``make test-browser``).
"""

from __future__ import annotations

import pytest
from browser import LIGHTER, SCREENSHOTS, error_outputs, lab_server, require_chromium, run_all_cells, scratch_course

pytestmark = pytest.mark.browser
playwright_sync = require_chromium()
NOTEBOOK = "01_quantization.ipynb"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a scratch copy of notebook 01, its kernels under the lighter settings: (base URL, root)."""
    root = scratch_course(tmp_path_factory.mktemp("lab"), [NOTEBOOK])
    with lab_server(root, LIGHTER) as base:
        yield base, root


@pytest.fixture(scope="module")
def page(lab):
    from browser import CHROMIUM, CHROMIUM_ARGS

    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1400, "height": 1000})
        browser.close()


def test_notebook_01_runs_in_the_browser_and_its_slider_responds(lab, page):
    base, root = lab
    saved = run_all_cells(page, base, root, f"notebooks/{NOTEBOOK}", timeout_seconds=300)
    assert error_outputs(saved) == []
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
