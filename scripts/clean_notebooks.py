"""Bring the committed notebooks to their canonical form: generated headers, and nothing that changes at every run.

    .venv/bin/python scripts/clean_notebooks.py [--check] [NOTEBOOK ...]

- Headers: the badges (the line under the title of the first Markdown cell) and the first code
  cell (the Colab installer) are generated from ``course_lib.colab`` (``REPOSITORY``, ``BRANCH``),
  so that moving the repository is one edit there and one run of this script.
- Widget views: an output's ``application/vnd.jupyter.widget-view+json`` names a widget model by
  a random id, and ``metadata.widgets`` saves those models' state. Both go; the output's
  ``text/plain`` stays as the static fallback (``course_lib.plots.show_widget`` writes a useful
  one). A live kernel draws the widget again when the cell runs.
- Execution timestamps: nbclient writes each cell's start and end times into its metadata.
- Progress bars are not stripped here: ``make notebooks`` and nbval run with ``TQDM_DISABLE=1``
  (``course_lib.progress``), so none is drawn in the first place.

Every other output is left as it is. ``--check`` changes nothing and exits with 1 if a notebook
is not in that form (tests/test_notebook_hygiene.py runs the same check).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

from course_lib.colab import badges, first_cell_source

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
BADGE_PREFIX = "[![Open In Colab]"


def with_headers(notebook: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The notebook with its badge line and first code cell as course_lib.colab writes them."""
    markdown = next(cell for cell in notebook.cells if cell.cell_type == "markdown")
    title, *rest = markdown.source.split("\n")
    if len(rest) > 2 and rest[1].startswith(BADGE_PREFIX):  # an earlier badge line: replaced
        rest = rest[2:]
    markdown.source = "\n".join([title, "", badges(name), *rest])
    code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    code.source = first_cell_source()
    code.outputs = []  # the cell prints nothing outside Colab
    return notebook


def without_run_noise(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook without widget model ids, saved widget state or timestamps (every output as it was)."""
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)  # the run's timestamps, written by nbclient
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                del data[WIDGET_VIEW]
                data.setdefault("text/plain", "(a widget: run the notebook to use it)")
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report notebooks that need cleaning, change nothing")
    parser.add_argument("notebooks", nargs="*", type=Path, default=NOTEBOOKS)
    args = parser.parse_args(argv)
    changed = []
    for path in args.notebooks:
        before = nbformat.read(path, as_version=4)
        after = without_run_noise(with_headers(nbformat.read(path, as_version=4), path.name))
        if after != before:
            changed.append(path.name)
            if not args.check:
                nbformat.write(after, path)
    label = "not in canonical form" if args.check else "cleaned"
    print(f"{label}: {', '.join(changed)}" if changed else "every notebook is in canonical form")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
