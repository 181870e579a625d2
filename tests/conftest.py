"""Shared test fixtures: the bundled model is loaded once per session, offline."""

import os

import pytest

# The tests never reach the Hugging Face Hub, whatever the machine's network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def bundled():
    """(model, tokenizer) of the bundled course-gpt2."""
    from course_lib.models import load_model, load_tokenizer

    return load_model("course-gpt2"), load_tokenizer("course-gpt2")
