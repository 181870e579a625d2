"""course_lib.corpus: the train/held-out split of the bundled model's corpus is decided by a hash alone, the
held-out file is exactly its held-out side, and no evaluation text overlaps the training text."""

import json
import os

import pytest

from course_lib import corpus
from course_lib.data import CALIBRATION_FILE, HELDOUT_FILE, load_evaluation_passages


def test_split_is_decided_by_hash_alone():
    shipped = [json.loads(line) for line in HELDOUT_FILE.read_text().splitlines()]
    assert all(corpus.is_held_out(r["source"], r["headword"]) for r in shipped)
    calibration = [json.loads(line) for line in CALIBRATION_FILE.read_text().splitlines()]
    assert not any(corpus.is_held_out(r["source"], r["headword"]) for r in calibration)


@pytest.fixture(scope="module")
def corpus_passages():
    missing = corpus.missing_sources()
    if missing:
        message = f"the training corpus is not installed (apt-get install {' '.join(missing)})"
        if os.environ.get("CI"):
            pytest.fail(message + ": .ci/run installs it, so CI must run this test")
        pytest.skip(message)
    return corpus.read_passages()


def test_heldout_file_is_exactly_the_heldout_split(corpus_passages):
    train, heldout = corpus.split_passages(corpus_passages)
    assert load_evaluation_passages() == [p.text for p in heldout]
    assert len(train) > 10 * len(heldout)


def test_evaluation_text_never_overlaps_training_text(corpus_passages):
    train, heldout = corpus.split_passages(corpus_passages)
    train_texts = {p.text for p in train}
    train_definitions = {p.definition for p in train}
    assert not {p.definition for p in heldout} & train_definitions
    assert not set(load_evaluation_passages()) & train_texts
    # nor is any evaluation passage a stretch of a training passage
    long_train = "\n".join(sorted(train_texts))
    assert not [t for t in load_evaluation_passages() if len(t) > 80 and t in long_train]
