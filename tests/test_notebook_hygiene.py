"""Cross-cutting (the notebooks, not a module): the committed notebooks: nothing in their outputs that changes from
run to run, and a static fallback per widget."""

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PROGRESS_BAR = re.compile(r"\d+%\|.*\||\d+(\.\d+)?(it|s)/(s|it)\]|elapsed")


COURSE = ["01_quantization.ipynb", "02_single_head.ipynb", "03_compile_fhe.ipynb", "04_full_mha.ipynb"]


def test_the_course_notebooks_are_found():
    """The tests parametrized over ``NOTEBOOKS`` (here and in test_colab) would pass on an empty list."""
    assert [p.name for p in NOTEBOOKS] == COURSE


def outputs(notebook):
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            yield index, cell, output


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_widget_ids_no_widget_state_no_timestamps_no_progress_bars(path):
    notebook = nbformat.read(path, as_version=4)
    assert "widgets" not in notebook.metadata
    assert not [i for i, cell in enumerate(notebook.cells) if "execution" in cell.metadata]  # timestamps
    for index, _, output in outputs(notebook):
        assert "application/vnd.jupyter.widget-view+json" not in output.get("data", {}), f"cell {index}"
        text = output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        assert not PROGRESS_BAR.search(text), f"cell {index}: a progress bar in the output: {text[:200]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_widget_cell_keeps_a_readable_static_output(path):
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and "show_widget(" in cell.source:
            texts = [str(o.get("data", {}).get("text/plain", "")) for o in cell.outputs]
            assert any(t.startswith("(a live ") for t in texts), f"cell {index}: {texts}"
            assert not any(t.startswith("interactive(") for t in texts)


def test_the_clean_script_finds_nothing_to_change():
    """Headers from course_lib.colab; no widget ids, widget state or timestamps (scripts/clean_notebooks.py)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "clean_notebooks.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_notebooks_display_widgets_through_show_widget_only():
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and "widgets.interactive(" in cell.source:
                assert "show_widget(" in cell.source, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_first_cell_links_the_glossary(path):
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.cell_type == "markdown" and "](../docs/glossary.md)" in first.source
    assert (ROOT / "docs" / "glossary.md").is_file()


def test_the_images_the_notebooks_show_exist():
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown":
                for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", cell.source):
                    if not target.startswith(("http://", "https://", "attachment:")):
                        assert (path.parent / target).resolve().is_file(), (path.name, target)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_worked_solutions_are_hidden_until_asked_for(path):
    """No solution is written under its exercise: each exercise has a cell that shows the worked solution only
    once the learner sets its ``show_solution_N`` to True, and it is committed without output."""
    cells = nbformat.read(path, as_version=4).cells
    assert not [c for c in cells if c.cell_type == "markdown" and c.source.lstrip().startswith("#### Solution")]
    numbers = sorted(
        {int(n) for c in cells if c.cell_type == "markdown" for n in re.findall(r"### Exercise (\d+)", c.source)}
    )
    assert numbers, "no exercise found"
    for number in numbers:
        (cell,) = [c for c in cells if c.cell_type == "code" and f"show_solution_{number} = False" in c.source]
        assert f"if show_solution_{number}:" in cell.source and not cell.outputs
