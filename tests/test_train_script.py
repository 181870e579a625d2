"""Cross-cutting (scripts/, not a module): the training script: it refuses bad settings before it reads the corpus,
and weights its training windows."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from course_lib.corpus import Passage
from course_lib.models import load_tokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_course_model.py"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--show-every", "-1"], "argument --show-every: must be at least 0, got -1"),
        (["--steps", "0"], "argument --steps: must be at least 1, got 0"),
        (["--batch-size", "many"], "argument --batch-size: expected a whole number, got 'many'"),
        (["--threads", "0"], "argument --threads: must be at least 1, got 0"),
        (["--cryptography-weight", "0"], "argument --cryptography-weight: must be at least 1, got 0"),
    ],
)
def test_bad_settings_are_refused_with_what_is_allowed(arguments, message, tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *arguments, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert not any(tmp_path.iterdir())  # nothing was trained or written


def test_windows_start_more_often_in_passages_about_cryptography(load_script):
    script = load_script("scripts/train_course_model.py")
    tokenizer = load_tokenizer()
    passages = [
        Passage("foldoc", "mouse", "A pointing device.", "Mouse is a pointing device with buttons."),
        Passage("foldoc", "ciphertext", "Text which has been encrypted.", "ciphertext: Text which has been encrypted."),
        Passage("devil", "bath", "A kind of mystic ceremony.", "BATH, n. A kind of mystic ceremony."),
    ]
    assert [p.about_cryptography for p in passages] == [False, True, False]
    ids = script.token_stream(tokenizer, [p.text for p in passages])
    block = 4
    in_cryptography = script.cryptography_positions(tokenizer, passages)
    assert len(in_cryptography) == len(ids)  # one flag per position of the token stream
    weights = script.window_start_weights(in_cryptography, cryptography_weight=8, block=block)

    assert len(weights) == len(ids) - block  # as many starts as the uniform draw allows
    assert weights.sum() == pytest.approx(1.0)
    lengths = [len(tokenizer(p.text)["input_ids"]) + 1 for p in passages]  # + 1: the <|endoftext|> before each
    crypto = slice(lengths[0], lengths[0] + lengths[1])
    assert ids[crypto.start] == tokenizer.eos_token_id  # the slice starts at the passage's own <|endoftext|>
    assert np.all(weights[crypto] == 8 * weights[0])
    assert np.all(weights[: crypto.start] == weights[0])
    assert np.all(weights[crypto.stop :] == weights[0])
