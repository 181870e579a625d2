"""course_lib.exercises.nb03, notebook 03's exercises: the reference solutions are right (against the compiler),
wrong answers get hints."""

import numpy as np
import pytest
from circuits import never_run
from conftest import assert_worked_solutions

from course_lib.attention import HeadWeights, QuantizedHead
from course_lib.exercises import nb03 as ex
from course_lib.exercises.nb03 import (
    EX3_LEARNERS,
    EX3_TOKENS,
    feedback_any_wrong_run,
    feedback_ciphertext_bytes,
    feedback_pbs_count,
    solution_any_wrong_run,
    solution_ciphertext_bytes,
    solution_pbs_count,
)
from course_lib.fhe import HeadCircuit


def compiled(tokens, head_dim, seed=0):
    rng = np.random.default_rng(seed)
    head = QuantizedHead(HeadWeights.random(8, head_dim, seed=seed), 4, lookup_bits=5)
    inputs = [rng.normal(size=(int(rng.integers(1, 7)), 8)) for _ in range(8)]
    head.calibrate(inputs)
    return HeadCircuit(head, inputs, tokens, never_run())


@pytest.fixture(scope="module")
def circuits():
    return {(t, d): compiled(t, d) for t, d in ((2, 4), (3, 4), (4, 8))}


def test_pbs_formula_is_the_compilers_count(circuits):
    for (tokens, head_dim), circuit in circuits.items():
        assert solution_pbs_count(tokens, head_dim) == circuit.summary().pbs_count
    counts = {case: c.summary().pbs_count for case, c in circuits.items()}
    assert feedback_pbs_count(solution_pbs_count, counts).correct


def test_pbs_count_feedback_for_usual_slips():
    assert feedback_pbs_count(None).status == "not attempted"
    assert "function" in feedback_pbs_count(12).message

    def one_pbs_per_product(t, d):
        return solution_pbs_count(t, d) - (2 * t * t * d + t * t)

    assert "two lookups" in feedback_pbs_count(one_pbs_per_product).message
    assert "max chain" in feedback_pbs_count(lambda t, d: solution_pbs_count(t, d) - t * (t - 1)).message
    assert "raised ZeroDivisionError" in feedback_pbs_count(lambda t, d: 1 / 0).message
    assert "whole number" in feedback_pbs_count(lambda t, d: 1.5).message
    assert not feedback_pbs_count(lambda t, d: 4 * t * t * d).correct


def test_ciphertext_bytes(circuits):
    circuit = circuits[3, 4]
    summary = circuit.summary()
    expected = solution_ciphertext_bytes(summary, 4)
    assert expected == summary.input_bytes / (3 * 3 * 4)
    assert feedback_ciphertext_bytes(expected * 1.005, summary, 4).correct
    assert feedback_ciphertext_bytes(None, summary, 4).status == "not attempted"
    assert "three inputs" in feedback_ciphertext_bytes(expected * 3, summary, 4).message
    assert "whole input" in feedback_ciphertext_bytes(float(summary.input_bytes), summary, 4).message
    assert "number of bytes" in feedback_ciphertext_bytes("10 kB", summary, 4).message
    assert not feedback_ciphertext_bytes(expected / 2, summary, 4).correct


def test_any_wrong_run_is_one_minus_all_right_and_hints_the_slips():
    p, runs = 1e-5, EX3_LEARNERS * EX3_TOKENS
    expected = solution_any_wrong_run(p, runs)
    assert expected == pytest.approx(1 - (1 - p) ** runs, rel=1e-9)
    assert solution_any_wrong_run(0.5, 2) == pytest.approx(0.75)
    assert feedback_any_wrong_run(expected, p, runs).correct
    assert feedback_any_wrong_run(runs * p, p, runs).correct  # the union bound, within 1 % while n p is small
    assert feedback_any_wrong_run(None, p, runs).status == "not attempted"
    assert "one run" in feedback_any_wrong_run(p, p, runs).message
    assert "one learner" in feedback_any_wrong_run(solution_any_wrong_run(p, EX3_TOKENS), p, runs).message
    assert "went right" in feedback_any_wrong_run((1 - p) ** runs, p, runs).message
    assert "not a probability" in feedback_any_wrong_run(1.5, p, runs).message
    assert "a probability" in feedback_any_wrong_run("0.006", p, runs).message
    assert not feedback_any_wrong_run(expected * 2, p, runs).correct
    assert not feedback_any_wrong_run(0.01, 0.5, 2).correct


def test_each_worked_solution_shows_its_reasoning_code_and_passing_check(circuits, capsys):
    summary = circuits[3, 4].summary()
    counts = {(t, d): circuit.summary().pbs_count for (t, d), circuit in circuits.items()}
    assert_worked_solutions(ex, {1: (counts,), 2: (summary, 4), 3: (1e-5,), 4: ()}, capsys)


@pytest.mark.fhe
def test_fast_pbs_formula_is_the_compilers_count():
    from course_lib.exercises.nb03 import feedback_fast_pbs_count, solution_fast_pbs_count
    from course_lib.fast_attention import FastHead

    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(int(rng.integers(1, 7)), 8)) for _ in range(8)]
    counts = {}
    for tokens, head_dim in ((2, 4), (3, 4), (4, 8)):
        head = FastHead(HeadWeights.random(8, head_dim, seed=1), 4, lookup_bits=6)
        head.calibrate(inputs)
        counts[tokens, head_dim] = HeadCircuit(head, inputs, tokens, never_run()).summary().pbs_count
        assert solution_fast_pbs_count(tokens, head_dim) == counts[tokens, head_dim]
    assert feedback_fast_pbs_count(solution_fast_pbs_count, counts).correct
    assert feedback_fast_pbs_count(None).status == "not attempted"
    assert "fast_pbs(2, 4) raised" in feedback_fast_pbs_count(lambda t, d: 1 / 0).message

    def all_pairs(t, d):
        return solution_fast_pbs_count(t, d) + 2 * (t * t - t * (t + 1) // 2) * d

    assert "masked pairs" in feedback_fast_pbs_count(all_pairs).message

    def no_squares(t, d):
        return solution_fast_pbs_count(t, d) - 2 * t * d - t * (t + 1) // 2

    assert "squares" in feedback_fast_pbs_count(no_squares).message
    assert not feedback_fast_pbs_count(lambda t, d: 4 * t * t * d).correct
