"""course_lib.published: the published figures and sources the course cites, and where the course cites them.

The figures are quoted, never re-measured: these tests check that the notebooks and the README that quote them
quote the same values, and link the same sources, as this module.
"""

import json
import re
from pathlib import Path

from course_lib.published import BLOG_POST, PUBLISHED_GPT2_PBS_AT_6, USE_CASE_CODE

ROOT = Path(__file__).resolve().parents[1]


def notebook_text(name: str) -> str:
    cells = json.loads((ROOT / "notebooks" / name).read_text())["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells)


def test_the_sources_are_links_the_notebooks_of_the_published_split_give():
    assert re.fullmatch(r"https://huggingface\.co/blog/[\w-]+", BLOG_POST)
    assert re.fullmatch(r"https://github\.com/zama-ai/concrete-ml/tree/main/use_case_examples/llm", USE_CASE_CODE)
    for name in ("03_compile_fhe.ipynb", "04_full_mha.ipynb"):
        text = notebook_text(name)
        assert BLOG_POST in text and USE_CASE_CODE in text, name


def test_the_published_pbs_count_is_quoted_as_it_is_here():
    quoted = f"{PUBLISHED_GPT2_PBS_AT_6:,}"
    assert quoted in (ROOT / "README.md").read_text()
    assert quoted in notebook_text("03_compile_fhe.ipynb")
    for text in ((ROOT / "README.md").read_text(), notebook_text("03_compile_fhe.ipynb")):
        # a near miss (a typo of the figure) is not quoted anywhere
        near = {m for m in re.findall(r"\b11,6\d\d\b", text) if m != quoted}
        assert not near, near
