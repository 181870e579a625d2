"""course_lib.data: the evaluation and calibration texts ship with the package (how they were split: test_corpus)."""

import pytest

from course_lib import corpus
from course_lib.data import (
    load_calibration_prompts,
    load_evaluation_passages,
)


def test_evaluation_and_calibration_texts_ship_with_the_package():
    passages = load_evaluation_passages()
    assert len(passages) >= 200 and all(isinstance(p, str) and len(p) >= corpus.MIN_DEFINITION_CHARS for p in passages)
    assert load_evaluation_passages(limit=5) == passages[:5]
    prompts = load_calibration_prompts()
    assert len(prompts) == 64
    assert not set(prompts) & set(passages)


@pytest.mark.parametrize("bad", [0, -1, 10**6, 2.5, True])
def test_limit_is_checked(bad):
    with pytest.raises(ValueError, match="limit must be an integer from 1 to"):
        load_evaluation_passages(limit=bad)
