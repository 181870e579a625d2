"""Notebook 04's exercises: the reference solutions are right (against the compiler and generate), slips get hints."""

import numpy as np
import pytest

from course_lib.attention import HeadWeights
from course_lib.exercises.nb03 import solution_fast_pbs_count
from course_lib.exercises.nb04 import (
    feedback_cluster_seconds,
    feedback_full_attention_pbs,
    feedback_max_new_tokens,
    solution_cluster_seconds,
    solution_full_attention_pbs,
    solution_max_new_tokens,
)
from course_lib.fast_attention import FastHead
from course_lib.fhe import HeadCircuit


def test_full_attention_formula_is_the_compilers_count():
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(int(rng.integers(1, 7)), 8)) for _ in range(8)]
    heads = [FastHead(HeadWeights.random(8, 4, seed=h), 4, lookup_bits=6) for h in range(3)]
    for head in heads:
        head.calibrate(inputs)
    count = HeadCircuit(heads, inputs, length=3).summary().pbs_count
    assert solution_full_attention_pbs(3, 3, 4) == count
    assert feedback_full_attention_pbs(solution_full_attention_pbs, {(3, 3, 4): count}).correct


def test_full_attention_feedback_for_usual_slips():
    assert feedback_full_attention_pbs(None).status == "not attempted"
    assert "one head" in feedback_full_attention_pbs(lambda t, h, d: solution_fast_pbs_count(t, d)).message
    assert "do not mix" in feedback_full_attention_pbs(lambda t, h, d: solution_fast_pbs_count(t, h * d)).message
    assert "raised" in feedback_full_attention_pbs(lambda t, h, d: 1 / 0).message
    assert "whole number" in feedback_full_attention_pbs(lambda t, h, d: 0.5).message
    assert "function" in feedback_full_attention_pbs(3).message


def test_max_new_tokens_and_its_hints():
    assert solution_max_new_tokens(3, 6) == 4 and solution_max_new_tokens(7, 6) == 0
    assert feedback_max_new_tokens(solution_max_new_tokens).correct
    assert "one more fits" in feedback_max_new_tokens(lambda p, n: n - p).message
    assert feedback_max_new_tokens(None).status == "not attempted"
    assert not feedback_max_new_tokens(lambda p, n: n).correct


def test_cluster_seconds_and_its_hints():
    expected = solution_cluster_seconds(10_000, 0.01, 200)
    assert expected == pytest.approx(1.0)
    assert feedback_cluster_seconds(expected, 10_000, 0.01, 200).correct
    assert "2 cores" in feedback_cluster_seconds(100.0, 10_000, 0.01, 200).message
    assert "twice" in feedback_cluster_seconds(0.5, 10_000, 0.01, 200).message
    assert feedback_cluster_seconds(None, 10_000, 0.01, 200).status == "not attempted"
    assert "number" in feedback_cluster_seconds("1", 10_000, 0.01, 200).message
