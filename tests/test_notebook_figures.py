"""Cross-cutting (the notebooks, not a module): every figure the notebooks' prose quotes is printed by an output of
the same notebook, set by one of its code cells, or cited with its source in ``CITED`` below.

A *figure* is a number of the Markdown text (outside formulas, code spans and links) that reads as a measurement
or a size: one with decimals, a thousands separator, a percent sign or a unit (``124M``, ``4.7 GB``), or any
number from 100 on. Small integers (bits, tokens, heads, section numbers) are the course's vocabulary and are not
checked. A figure is backed when a number printed by an output, or written in a code cell, rounds to it at the
figure's own precision (``5.3`` is backed by ``5.25``; ``94.9%`` by ``94.88%`` or by the share ``0.9488``).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

#: Figures the prose takes from elsewhere, by notebook: figure as written -> its source (said in the prose too).
CITED: dict[str, dict[str, str]] = {
    "01_quantization.ipynb": {
        "2023": "the blog post's date, August 2023 (https://huggingface.co/blog/encrypted-llm)",
        "1,334,016": "the bundled model's card, course_lib/assets/course-gpt2/README.md",
        "124M": "GPT-2 small's size (Radford et al., 2019; the model card of Hugging Face's gpt2)",
        "768": "GPT-2 small's width, transformers.GPT2Config().n_embd",
        "3072": "GPT-2 small's MLP width, 4 x GPT2Config().n_embd",
    },
    "02_single_head.ipynb": {
        "124M": "GPT-2 small's size (Radford et al., 2019; the model card of Hugging Face's gpt2)",
        "768": "GPT-2 small's width, transformers.GPT2Config().n_embd",
        "1,024": "GPT-2 small's context, transformers.GPT2Config().n_positions",
        "0.9586": "concrete-ml use_case_examples/llm/QGPT2Evaluate.ipynb: SingleHeadQGPT2Model, n_bits 4, "
        "average top-1 accuracy",
        "94.3%": "benchmarks/results/single_head_topk.json (all 571 held-out passages, 4 bits)",
        "88.0%": "benchmarks/results/single_head_topk.json (all 571 held-out passages, 2 bits)",
    },
    "03_compile_fhe.ipynb": {
        "2023": "the blog post's date, August 2023 (https://huggingface.co/blog/encrypted-llm)",
        "4.7 GB": "benchmarks/results/notebook_memory.json: 03_compile_fhe.ipynb, peak_mb 4,653",
        "136": "P = T(T+1)/2 at T = 16, the formula of the same sentence",
        "42%": "1 - 1,310 / 2,272: the PBS of the ladder table's second and third rows",
        "93.18%": "benchmarks/results/attention_fhe.json: the fast head's top1 on all 571 held-out passages",
        "94.29%": "benchmarks/results/single_head_topk.json: the exact published head at 4 bits, all 571 passages",
        "41%": "4.10e+11 / 2.91e+11 - 1: the complexities of the projection table's last and first rows",
        "11,622": "the blog post's PBS of one GPT-2 head at 6 tokens (https://huggingface.co/blog/encrypted-llm), "
        "course_lib.published",
    },
    "04_full_mha.ipynb": {
        "13.5 GB": "benchmarks/results/notebook_memory.json: 04_full_mha.ipynb, peak_mb 13,525",
        "2.5 GB": "benchmarks/results/notebook_memory.json: 04_full_mha.ipynb, the kernel's 2,482 MB at the peak",
        "11.0 GB": "benchmarks/results/notebook_memory.json: 04_full_mha.ipynb, the server's 11,044 MB at the peak",
        "2023": "the blog post's date, August 2023 (https://huggingface.co/blog/encrypted-llm)",
        "196": "the published machine's cores, the blog post's \"run on a 196-core machine\" "
        "(https://huggingface.co/blog/encrypted-llm)",
        "770": "benchmarks/results/attention_fhe.json: layer[0].pbs_per_step, step 1",
        "1,440": "benchmarks/results/attention_fhe.json: layer[0].pbs_per_step, step 2",
        "1,712": "benchmarks/results/attention_fhe.json: layer[0].pbs_per_step, step 3",
        "2.7": "(2,434 + 4,000 + 4,272) / (770 + 1,440 + 1,712): section 3's printed PBS over attention_fhe.json's",
        "3.2": "the section 4 table's 16-token row: published over fast (attention_cost_model.json)",
        "11,622": "the published PBS of one GPT-2 head at 6 tokens, attention_cost_model.json published_gpt2_pbs_at_6",
    },
}

_FIGURE = re.compile(r"(?<![\w.$^_{])(\d+(?:\.\d+)?e[+-]?\d+|\d{1,3}(?:,\d{3})+|\d+\.\d+|\d+)(\s?%|\s?[kMG]B\b|M\b)?")
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:_\d{3})+|\d+(?:\.\d+)?(?:e[+-]?\d+)?")
_NOT_PROSE = [
    re.compile(r"\$\$.*?\$\$", re.S),  # display formulas
    re.compile(r"\$[^$\n]*\$"),  # inline formulas
    re.compile(r"`[^`]*`"),  # code spans
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"https?://\S+"),
]


def prose_figures(markdown: str) -> list[tuple[str, str, str]]:
    """The figures of ``markdown``: (as written, the number, its unit or '%')."""
    for pattern in _NOT_PROSE:
        markdown = pattern.sub(" ", markdown)
    figures = []
    for match in _FIGURE.finditer(markdown):
        number, unit = match.group(1), (match.group(2) or "").strip()
        if unit or any(c in number for c in ".,e") or float(number) >= 100:
            figures.append((match.group(0).strip(), number, unit))
    return figures


def numbers_in(text: str) -> set[float]:
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))  # HTML tables: their cells' text
    return {float(n.replace(",", "").replace("_", "")) for n in _NUMBER.findall(text)}


def shown_numbers(notebook) -> set[float]:
    """Every number printed by an output of ``notebook`` or written in one of its code cells."""
    numbers: set[float] = set()
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        numbers |= numbers_in(cell.source)
        for output in cell.get("outputs", []):
            texts = [output.get("text", "")] + [
                value if isinstance(value, str) else "".join(value)
                for kind, value in output.get("data", {}).items()
                if kind in ("text/plain", "text/html", "text/markdown")
            ]
            for text in texts:
                numbers |= numbers_in(text)
    return numbers


def is_backed(number: str, unit: str, shown: set[float]) -> bool:
    mantissa, _, exponent = number.replace(",", "").partition("e")  # 1.85e12: two decimals of 10**12
    value = float(mantissa) * 10 ** int(exponent or 0)
    tolerance = 0.5 * 10 ** (int(exponent or 0) - (len(mantissa.split(".")[1]) if "." in mantissa else 0)) + 1e-9
    candidates = [(value, tolerance)] + ([(value / 100, tolerance / 100)] if unit == "%" else [])
    return any(abs(y - x) <= t for y in shown for x, t in candidates)


def unbacked_figures(path: Path) -> list[tuple[int, str]]:
    """(cell index, figure) of every figure of ``path``'s prose that nothing backs."""
    notebook = nbformat.read(path, as_version=4)
    shown, cited = shown_numbers(notebook), CITED.get(path.name, {})
    return [
        (index, figure)
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "markdown"
        for figure, number, unit in prose_figures(cell.source)
        if figure not in cited and not is_backed(number, unit, shown)
    ]


def test_the_course_notebooks_are_found():
    assert len(NOTEBOOKS) == 4 and set(CITED) <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_in_the_prose_is_printed_set_or_cited(path):
    assert unbacked_figures(path) == []


def test_every_citation_is_still_quoted():
    """A cited figure that the prose no longer quotes is a stale entry."""
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        quoted = {
            f for cell in notebook.cells if cell.cell_type == "markdown" for f, _, _ in prose_figures(cell.source)
        }
        assert set(CITED.get(path.name, {})) <= quoted, path.name


def test_the_checker_finds_what_it_should():
    assert [f for f, _, _ in prose_figures("a 4-bit head: 94.88% of 8,099 predictions, 4.7 GB, 124M, 5 heads")] == [
        "94.88%",
        "8,099",
        "4.7 GB",
        "124M",
    ]
    assert prose_figures("$2^{10} = 1024$ and `size=5000` and [a](https://x.org/2023)") == []
    shown = numbers_in("top-1 0.9488, 5.25 and <td>1,064</td>")
    assert is_backed("94.9", "%", shown) and is_backed("5.3", "", shown) and is_backed("1,064", "", shown)
    assert not is_backed("5.2", "", {5.26}) and not is_backed("96", "%", shown)
    assert [f for f, _, _ in prose_figures("a complexity of 1.85e12, 2e+9")] == ["1.85e12", "2e+9"]
    assert is_backed("1.85e12", "", numbers_in("complexity 1.85e+12")) and not is_backed("1.85e12", "", {1.86e12})


def test_a_planted_wrong_figure_is_caught(tmp_path):
    """Notebook 01 with one figure of its prose changed: 5.25, printed by its matrix-product table, becomes 5.75."""
    source = NOTEBOOKS[0]
    notebook = nbformat.read(source, as_version=4)
    (cell,) = [c for c in notebook.cells if c.cell_type == "markdown" and "5.25 at" in c.source]
    cell.source = cell.source.replace("5.25 at", "5.75 at")
    planted = tmp_path / source.name
    nbformat.write(notebook, planted)
    assert unbacked_figures(source) == []
    assert [figure for _, figure in unbacked_figures(planted)] == ["5.75"]
