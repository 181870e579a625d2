"""Shared test fixtures (the bundled model is loaded once per session, offline; scripts load as modules) and the
markers of the tests that cost time.

Markers (registered in ``pyproject.toml``; ``make test-quick`` runs the tests that carry none of them):

- ``fhe``: compiles an FHE circuit;
- ``keys``: generates evaluation keys or runs on ciphertexts (every ``keys`` test is an ``fhe`` test too);
- ``dask``: starts a Dask cluster; ``browser``: drives JupyterLab in Chromium;
- ``slow``: a long computation of another kind (the bundled model over every held-out passage);
- ``registry``: asks the package registry (PyPI) over the network; skipped when it cannot be reached.

A test carries ``fhe`` or ``keys`` through a decorator when its own body compiles or generates keys, and through
:func:`pytest_collection_modifyitems` when one of its fixtures does (pytest cannot mark a fixture).
"""

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The tests never reach the Hugging Face Hub, whatever the machine's network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: Fixtures whose set-up compiles a circuit (in this file or in a test module), and those whose set-up also
#: generates its keys. A test that uses one, directly or through another fixture, carries the marker.
COMPILING_FIXTURES = frozenset({"circuit", "circuits", "two_heads", "two_narrow_heads", "exact_circuit"})
KEYED_FIXTURES = frozenset({"keyed", "keyed_circuits", "tiny_swap"})


def pytest_collection_modifyitems(items):
    """Mark each test by what its fixtures cost (see the module's docstring); ``keys`` implies ``fhe``."""
    for item in items:
        used = set(item.fixturenames)
        if used & KEYED_FIXTURES:
            item.add_marker(pytest.mark.keys)
        if used & COMPILING_FIXTURES or item.get_closest_marker("keys"):
            item.add_marker(pytest.mark.fhe)


@pytest.fixture(scope="session")
def bundled():
    """(model, tokenizer) of the bundled course-gpt2."""
    from course_lib.models import load_model, load_tokenizer

    return load_model("course-gpt2"), load_tokenizer("course-gpt2")


#: The tiny GPT-2's encrypted layer is compiled for sequences of up to this many tokens.
TINY_MAX_TOKENS = 3
#: The tiny GPT-2's width and heads: two heads of 4. Compiling its layer (and its simulation) takes about a third
#: of the time four heads of 4 took, and every code path of a layer (several heads, c_proj, the cache) is there.
TINY_N_EMBD, TINY_N_HEAD = 8, 2
TINY_HEAD_DIM = TINY_N_EMBD // TINY_N_HEAD


@pytest.fixture(scope="session")
def tiny_gpt2():
    """(model, tokenizer): a tiny random GPT-2 (width 8, two heads of 4, two layers) with the bundled tokenizer.

    Its weights are drawn wider than GPT-2's initialisation (``initializer_range`` 0.2) so that its
    attention is not uniform. Small enough that compiling a whole attention layer and generating its keys
    stay affordable in a test."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from course_lib.models import load_tokenizer

    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=16,
        n_embd=TINY_N_EMBD,
        n_layer=2,
        n_head=TINY_N_HEAD,
        initializer_range=0.2,
    )
    return GPT2LMHeadModel(config).eval(), tokenizer


@pytest.fixture(scope="session")
def tiny_swap(tiny_gpt2, tmp_path_factory):
    """Layer 0 of :func:`tiny_gpt2` swapped for the quantized layer (3 bits, lookups rounded to 4, the
    projection rounded exactly), calibrated on 24 prompts, compiled for ``TINY_MAX_TOKENS`` tokens, with
    keys. One compiled module for ``test_layer`` and ``test_swapped_layer``; tests that change its mode or
    weights put them back."""
    from course_lib.data import load_calibration_prompts
    from course_lib.swapped_layer import SwappedLayer

    model, tokenizer = tiny_gpt2
    swap = SwappedLayer(model, 0, n_bits=3, lookup_bits=4, exact_projection_rounding=True)
    swap.calibrate(tokenizer, load_calibration_prompts(limit=24))
    swap.compile(TINY_MAX_TOKENS)
    swap.ensure_keys(tmp_path_factory.mktemp("keys"), progress=False)
    yield swap
    swap.remove()


@pytest.fixture(scope="session")
def keyed(tmp_path_factory):
    """A narrow head circuit (``circuits.narrow_circuit``) with its keys, in a temporary cache: the tests of
    execution, keys and the client share it (``test_server`` keys a shorter one of its own)."""
    from circuits import narrow_circuit

    from course_lib.keys import ensure_keys

    circuit = narrow_circuit()
    ensure_keys(circuit.circuit, tmp_path_factory.mktemp("keys"), progress=False)
    return circuit


@pytest.fixture(scope="session")
def load_script():
    """A function that loads a script of the repository as a module, e.g. ``load_script("benchmarks/attention_fhe.py")``
    (scripts/ and benchmarks/ are folders of scripts, not packages). As when the script is run: its folder is on
    the import path (a benchmark may import another), and it is registered under its name while it executes (which
    dataclasses need)."""

    def load(relative_path: str):
        path = ROOT / relative_path
        if str(path.parent) not in sys.path:
            sys.path.append(str(path.parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module

    return load


def pytest_sessionfinish(session, exitstatus):
    """A failing session keeps its exit status: without this, concrete's exit handler turns it into 0 (see
    :func:`course_lib.fhe.keep_exit_status`) as soon as one test has run a circuit, and CI would pass."""
    if exitstatus != 0:
        from course_lib.fhe import keep_exit_status

        keep_exit_status(int(exitstatus))


def assert_worked_solutions(exercises, data: dict[int, tuple], capsys) -> None:
    """Each exercise of ``exercises`` (a ``course_lib.exercises`` module) shown with ``data[number]`` prints its
    explanation, its reference code and its check passing; the next number is refused with the list of exercises."""
    for number, args in data.items():
        exercises.solution(number, *args)
        shown = capsys.readouterr().out
        assert f"**Exercise {number}.**" in shown
        assert f"def {exercises.SOLUTIONS[number].reference.__name__}(" in shown
        assert "Correct!" in shown and "Not quite" not in shown
    numbers = sorted(exercises.SOLUTIONS)
    with pytest.raises(ValueError, match=re.escape(f"the exercises are {numbers}")):
        exercises.solution(max(numbers) + 1)
