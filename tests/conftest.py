"""Shared test fixtures: the bundled model is loaded once per session, offline; scripts load as modules."""

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The tests never reach the Hugging Face Hub, whatever the machine's network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def bundled():
    """(model, tokenizer) of the bundled course-gpt2."""
    from course_lib.models import load_model, load_tokenizer

    return load_model("course-gpt2"), load_tokenizer("course-gpt2")


@pytest.fixture(scope="session")
def load_script():
    """A function that loads a script of the repository as a module, e.g. ``load_script("benchmarks/attention_fhe.py")``
    (scripts/ and benchmarks/ are folders of scripts, not packages)."""

    def load(relative_path: str):
        path = ROOT / relative_path
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def pytest_sessionfinish(session, exitstatus):
    """A failing session keeps its exit status: without this, concrete's exit handler turns it into 0 (see
    :func:`course_lib.fhe.keep_exit_status`) as soon as one test has run a circuit, and CI would pass."""
    if exitstatus != 0:
        from course_lib.fhe import keep_exit_status

        keep_exit_status(int(exitstatus))
